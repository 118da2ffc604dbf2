import Kernels

/// The architectures Switchboard builds. Widths are per row (one flattened sample).
public enum Architecture: Sendable, Equatable {
    /// `Linear + f` for each hidden width, then a Linear head (workload W1).
    case stack(hidden: [Int], activation: Activation)
    /// `Linear(in→d)` (the lift), then `depth` pre-norm residual blocks `x + ffn(norm(x))`,
    /// then a final norm and a Linear head.
    case residual(Trunk, FeedForward)
    /// As `residual`, with a mixture of experts in every block: `x + MoE(norm(x))` (W2).
    case moe(Trunk, MoESpec)
}

extension Architecture {
    /// The largest width, hidden width, leaves' total width or batch a job may declare (2²⁴):
    /// then every parameter of any model a job can declare has a size that fits in an `Int`,
    /// and so does every dimension the layers multiply; the counting build (`size`) adds the
    /// buffers' sizes up in `Double` (a placeholder's own count saturates).
    public static let largestDimension = 1 << 24
    /// The most experts a model may have over all its MoE layers (2²⁰): a counted model
    /// registers each expert's parameters, as the built one does.
    public static let mostExperts = 1 << 20
}

/// The residual stream of the residual and MoE families.
public struct Trunk: Sendable, Equatable {
    public var width: Int
    public var depth: Int
    public var norm: NormKind
    /// LayerNorm Scaling ("The Curse of Depth", Sun et al. 2025): the norm of block ℓ
    /// (counted from 1) has its output scaled by 1/√ℓ, which keeps the variance of deep
    /// pre-norm stacks from growing with depth. The final norm is not scaled.
    public var depthScaledNorm: Bool

    public init(width: Int, depth: Int, norm: NormKind = .layerNorm, depthScaledNorm: Bool = false) {
        self.width = width
        self.depth = depth
        self.norm = norm
        self.depthScaledNorm = depthScaledNorm
    }

    /// The output scale of block `index`'s norm (0-based).
    public func normScale(block index: Int) -> Float { depthScaledNorm ? 1 / Float(index + 1).squareRoot() : 1 }
}

/// The feedforward part of a residual block.
public enum FeedForward: Sendable, Equatable {
    /// `W2·drop(f(W1·x))`.
    case mlp(MLPSpec)
    /// A fast feedforward tree (`FastFeedforward`).
    case fff(FFFSpec)
}

/// A two-matrix MLP block. Its hidden width is given directly: wider than the stream in the
/// conventional shape, narrower in an hourglass ("Rethinking the shape convention of an
/// MLP", Chen et al. 2025), where the wide stream computes through a narrow bottleneck.
public struct MLPSpec: Sendable, Equatable {
    /// Hidden width (doubled inside W1 for a GLU variant).
    public var hidden: Int
    public var activation: BlockActivation
    public var dropout: Float
    /// With r > 0, W1 and W2 are each factored as U·V of rank r (`LowRankLinear`).
    public var rank: Int
    /// With k > 0, only the k largest hidden activations of each row are kept
    /// (`TopKActivation`, σ-MoE's dense baseline); 0 keeps them all.
    public var keep: Int

    public init(hidden: Int, activation: BlockActivation = .pointwise(.gelu), dropout: Float = 0, rank: Int = 0, keep: Int = 0) {
        self.hidden = hidden
        self.activation = activation
        self.dropout = dropout
        self.rank = rank
        self.keep = keep
    }
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

