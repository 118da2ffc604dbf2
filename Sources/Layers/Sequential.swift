import Kernels

/// Layers applied one after another.
public final class Sequential: Layer {
    public let layers: [any Layer]
    public var inputWidth: Int { layers.first!.inputWidth }
    public var outputWidth: Int { layers.last!.outputWidth }

    public init(_ layers: [any Layer]) {
        precondition(!layers.isEmpty)
        for (a, b) in zip(layers, layers.dropFirst()) {
            precondition(a.outputWidth == b.inputWidth, "width \(a.outputWidth) feeds \(b.inputWidth)")
        }
        self.layers = layers
    }

    /// With the parameters in shards (`Model.gathering`): called around each layer that is a
    /// gathering unit, `units[k]` its number.
    var gathering: (any ParameterGathering)?
    var units: [Int?] = []

    public func forward(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float> {
        var h = x
        for k in layers.indices { h = forward(k, h, rows: rows, context: context) }
        return h
    }

    public func backward(_ dy: UnsafePointer<Float>, rows: Int) -> UnsafePointer<Float>? {
        var g: UnsafePointer<Float>? = dy
        for k in layers.indices.reversed() {
            guard let gi = g else { preconditionFailure("a layer before the first returned no input gradient") }
            g = backward(k, gi, rows: rows)
        }
        return g
    }

    /// Layer `k`'s forward, between the gathering's calls when it is a unit.
    func forward(_ k: Int, _ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float> {
        guard let gathering, let unit = units[k] else { return layers[k].forward(x, rows: rows, context: context) }
        gathering.willRun(unit, backward: false)
        defer { gathering.didRun(unit, backward: false) }
        return layers[k].forward(x, rows: rows, context: context)
    }

    /// Layer `k`'s backward, between the gathering's calls when it is a unit.
    func backward(_ k: Int, _ dy: UnsafePointer<Float>, rows: Int) -> UnsafePointer<Float>? {
        guard let gathering, let unit = units[k] else { return layers[k].backward(dy, rows: rows) }
        gathering.willRun(unit, backward: true)
        defer { gathering.didRun(unit, backward: true) }
        return layers[k].backward(dy, rows: rows)
    }
}

/// The pre-norm residual block `y = x + branch(x)`, with `branch = W2·drop(f(W1·norm(x)))`
/// for the MLP block.
public final class Residual: Layer {
    public let branch: Sequential
    public var inputWidth: Int { branch.inputWidth }
    public var outputWidth: Int { branch.outputWidth }
    let y: Tensor, dx: Tensor

    public init(_ branch: Sequential, in build: BuildContext) {
        let maxRows = build.maxRows
        precondition(branch.inputWidth == branch.outputWidth, "a residual branch must keep the width")
        self.branch = branch
        y = build.tensor([maxRows, branch.outputWidth])
        dx = build.tensor([maxRows, branch.inputWidth])
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float> {
        let b = branch.forward(x, rows: rows, context: context)
        add(x, b, into: y.data, count: rows * outputWidth)
        return UnsafePointer(y.data)
    }

    public func backward(_ dy: UnsafePointer<Float>, rows: Int) -> UnsafePointer<Float>? {
        guard let db = branch.backward(dy, rows: rows) else { preconditionFailure("branch without input gradient") }
        add(dy, db, into: dx.data, count: rows * inputWidth)
        return UnsafePointer(dx.data)
    }
}
