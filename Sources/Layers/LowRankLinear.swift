import Kernels

/// A Linear layer whose weight is factored as `W ≈ U · V` of rank r: `y = f((x · Vᵀ) · Uᵀ + b)`
/// with V [r, in] and U [out, r], as two products forward and backward (Linear's each), for
/// `r · (in + out)` parameters instead of `in · out`. The names are those of the two
/// factors: `<name>.v.weight`, `<name>.u.weight` and `<name>.u.bias`.
public final class LowRankLinear: Layer {
    public var inputWidth: Int { v.inputWidth }
    public var outputWidth: Int { u.outputWidth }
    public let rank: Int
    /// `x · Vᵀ`, [rows, r], without bias or activation.
    public let v: Linear
    /// `f(t · Uᵀ + b)`.
    public let u: Linear

    /// V uniform in ±1/√in (Linear's default); U uniform in ±√(3/r), so that each entry of
    /// U·V has the variance of the dense layer's, 1/(3·in); the bias as the dense layer's.
    public init(_ name: String, inputs: Int, outputs: Int, rank: Int, bias: Bool = true, activation: Activation = .identity,
                computesInputGradient: Bool = true, in build: BuildContext) {
        precondition(rank >= 1 && rank < min(inputs, outputs), "rank \(rank) of a \(outputs) × \(inputs) matrix")
        self.rank = rank
        v = Linear("\(name).v", inputs: inputs, outputs: rank, bias: false, computesInputGradient: computesInputGradient, in: build)
        u = Linear("\(name).u", inputs: rank, outputs: outputs, bias: bias, activation: activation, in: build,
                   initBound: (3 / Float(rank)).squareRoot(), biasBound: 1 / Float(inputs).squareRoot())
    }

    public func forward(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float> {
        u.forward(v.forward(x, rows: rows, context: context), rows: rows, context: context)
    }

    public func backward(_ dy: UnsafePointer<Float>, rows: Int) -> UnsafePointer<Float>? {
        guard let dt = u.backward(dy, rows: rows) else { preconditionFailure("LowRankLinear: U returned no input gradient") }
        return v.backward(dt, rows: rows)
    }
}
