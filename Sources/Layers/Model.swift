import Kernels

/// The architectures Switchboard builds. Widths are per row (one flattened sample).
public enum Architecture: Sendable, Equatable {
    /// `Linear + f` for each hidden width, then a Linear head (workload W1).
    case stack(hidden: [Int], activation: Activation)
    /// `Linear(in→d)`, then `depth` pre-norm residual MLP blocks
    /// `x + W2·drop(f(W1·norm(x)))` with hidden width `expansion·d` (doubled inside W1 for a
    /// GLU variant), then a final norm and a Linear head.
    case residual(width: Int, depth: Int, expansion: Int, norm: NormKind, mlp: BlockActivation, dropout: Float)
    /// As `residual`, with a mixture of experts in every block: `x + MoE(norm(x))` (W2).
    case moe(width: Int, depth: Int, norm: NormKind, spec: MoESpec)
}

/// The nonlinearity of an MLP block: a pointwise activation or a gated linear unit.
public enum BlockActivation: Sendable, Equatable {
    case pointwise(Activation)
    case gated(Activation)

    /// Names used in configs: `relu`, `gelu`, `gelu_tanh`, `silu`, `swiglu`, `geglu`, `reglu`, `glu`.
    public init?(name: String) {
        switch name {
        case "swiglu": self = .gated(.silu)
        case "geglu": self = .gated(.gelu)
        case "reglu": self = .gated(.relu)
        case "glu": self = .gated(.sigmoid)
        default:
            guard let a = Activation(rawValue: name), a != .identity, a != .sigmoid else { return nil }
            self = .pointwise(a)
        }
    }

    public static let names = ["relu", "gelu", "gelu_tanh", "silu", "swiglu", "geglu", "reglu", "glu"]
}

/// A network plus its parameter store, built for a maximum number of rows per pass.
public final class Model {
    public let store: ParameterStore
    public let network: Sequential
    public let inputs: Int
    public let classes: Int
    public let maxRows: Int
    /// The MoE layers, in order.
    public let moeLayers: [MoE]
    /// For each top-level layer, the arena offset from which every gradient is final once
    /// that layer's backward has run (parameters are laid out in forward order).
    let finalFrom: [Int]

    public init(_ architecture: Architecture, inputs: Int, classes: Int, maxRows: Int, seed: UInt64) {
        self.inputs = inputs
        self.classes = classes
        self.maxRows = maxRows
        let store = ParameterStore(seed: seed)
        var layers: [any Layer] = []
        var moes: [MoE] = []
        // The index of the first parameter each top-level layer registers.
        var firstParameter: [Int] = []
        func append(_ layer: @autoclosure () -> any Layer) {
            firstParameter.append(store.parameters.count)
            layers.append(layer())
        }
        switch architecture {
        case .stack(let hidden, let activation):
            var width = inputs
            for (i, h) in hidden.enumerated() {
                append(Linear("layers.\(i)", inputs: width, outputs: h, activation: activation,
                                     computesInputGradient: i > 0, maxRows: maxRows, store: store))
                width = h
            }
            append(Linear("head", inputs: width, outputs: classes,
                                 computesInputGradient: !hidden.isEmpty, maxRows: maxRows, store: store))
        case .residual(let d, let depth, let expansion, let norm, let mlp, let p):
            append(Linear("embed", inputs: inputs, outputs: d, computesInputGradient: false,
                                 maxRows: maxRows, store: store))
            for i in 0..<depth {
                let name = "blocks.\(i)"
                let hidden = expansion * d
                var branch: [any Layer] = [makeNorm(norm, "\(name).norm", width: d, maxRows: maxRows, store: store)]
                switch mlp {
                case .pointwise(let f):
                    branch.append(Linear("\(name).fc1", inputs: d, outputs: hidden, activation: f,
                                         maxRows: maxRows, store: store))
                case .gated(let gate):
                    branch.append(Linear("\(name).fc1", inputs: d, outputs: 2 * hidden, maxRows: maxRows, store: store))
                    branch.append(GLULayer(gate: gate, hidden: hidden, maxRows: maxRows))
                }
                if p > 0 {
                    branch.append(Dropout(probability: p, width: hidden, site: i, seed: seed, maxRows: maxRows))
                }
                branch.append(Linear("\(name).fc2", inputs: hidden, outputs: d, maxRows: maxRows, store: store))
                append(Residual(Sequential(branch), maxRows: maxRows))
            }
            append(makeNorm(norm, "norm", width: d, maxRows: maxRows, store: store))
            append(Linear("head", inputs: d, outputs: classes, maxRows: maxRows, store: store))
        case .moe(let d, let depth, let norm, let spec):
            append(Linear("embed", inputs: inputs, outputs: d, computesInputGradient: false,
                          maxRows: maxRows, store: store))
            for i in 0..<depth {
                let name = "blocks.\(i)"
                let moe = MoE("\(name).moe", width: d, spec: spec, site: i, seed: seed, maxRows: maxRows, store: store)
                moes.append(moe)
                append(Residual(Sequential([makeNorm(norm, "\(name).norm", width: d, maxRows: maxRows, store: store), moe]),
                                maxRows: maxRows))
            }
            append(makeNorm(norm, "norm", width: d, maxRows: maxRows, store: store))
            append(Linear("head", inputs: d, outputs: classes, maxRows: maxRows, store: store))
        }
        moeLayers = moes
        network = Sequential(layers)
        store.finalize()
        self.store = store
        // A layer without parameters finalizes nothing new: it inherits the next one's offset.
        var offsets = [Int](repeating: store.count, count: layers.count)
        var next = store.count
        for i in layers.indices.reversed() {
            let end = i + 1 < layers.count ? firstParameter[i + 1] : store.parameters.count
            if firstParameter[i] < end { next = store.parameters[firstParameter[i]].offset }
            offsets[i] = next
        }
        finalFrom = offsets
    }

    /// The MoE layers' auxiliary losses from the last forward pass (coefficients applied).
    public var auxLoss: Double { moeLayers.reduce(0) { $0 + $1.auxLoss } }

    /// Logits `[rows, classes]` for inputs `[rows, inputs]`.
    public func forward(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float> {
        precondition(rows <= maxRows, "\(rows) rows for a model built for \(maxRows)")
        return network.forward(x, rows: rows, context: context)
    }

    /// Accumulates parameter gradients for `dlogits`. With `gradientsFinal`: after each top-level layer,
    /// `gradientsFinal(offset)` says that every gradient at `[offset, store.count)` is
    /// complete (the data-parallel trainer starts sending those).
    public func backward(_ dlogits: UnsafePointer<Float>, rows: Int) {
        backward(dlogits, rows: rows) { _ in }
    }

    public func backward(_ dlogits: UnsafePointer<Float>, rows: Int, gradientsFinal: (Int) throws -> Void) rethrows {
        var g: UnsafePointer<Float>? = dlogits
        let layers = network.layers
        for i in layers.indices.reversed() {
            guard let gi = g else { preconditionFailure("a layer before the first returned no input gradient") }
            g = layers[i].backward(gi, rows: rows)
            try gradientsFinal(finalFrom[i])
        }
    }
}
