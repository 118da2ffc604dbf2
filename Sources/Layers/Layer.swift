import Kernels

/// What a forward pass needs besides its input.
public struct ForwardContext: Sendable {
    /// Training mode turns dropout on.
    public var training: Bool
    /// The global optimizer step, which keys dropout masks.
    public var step: Int
    /// Position of this process's first row in the global batch; with `step` it makes a
    /// row's dropout mask a function of its global position, not of the rank that holds it.
    public var rowOffset: Int
    /// Rows in the whole global batch (0: this pass's rows): losses and their gradients are
    /// means over the global batch.
    public var globalRows: Int
    /// Inference with hard decisions: a fast feedforward layer descends its tree to one leaf
    /// per row instead of mixing every leaf (ignored in training).
    public var hardDecisions: Bool

    // Gradient accumulation: a step's global batch runs as several passes (micro-batches),
    // pass m holding rows [m·G, (m+1)·G) of it over all ranks.

    /// Which pass of the step this is (0: the first, or the only one).
    public var microBatch: Int
    /// Rows of this pass over all ranks (0: `globalRows`, one pass per step).
    public var passRows: Int
    /// MoE capacity over the whole global batch in global row order (the step's earlier
    /// passes first), not over this pass alone.
    public var capacityOverStep: Bool
    /// Where this pass's batch statistics come from (MoE load balance, FFF leaf balance).
    public var statistics: BatchStatistics

    public init(training: Bool, step: Int = 0, rowOffset: Int = 0, globalRows: Int = 0, hardDecisions: Bool = false,
                microBatch: Int = 0, passRows: Int = 0, capacityOverStep: Bool = false, statistics: BatchStatistics = .pass) {
        self.training = training
        self.step = step
        self.rowOffset = rowOffset
        self.globalRows = globalRows
        self.hardDecisions = hardDecisions
        self.microBatch = microBatch
        self.passRows = passRows
        self.capacityOverStep = capacityOverStep
        self.statistics = statistics
    }
}

/// The batch statistics a training pass uses (the means over rows behind the MoE balance and
/// entropy losses and the FFF leaf balance). A layer's auxiliary loss after a pass is that
/// pass's part of the step's: summed over a step's passes it is the step's auxiliary loss.
public enum BatchStatistics: Sendable {
    /// This pass's own, over its rows on every rank: one pass per step, evaluation, or
    /// statistics per micro-batch (the step's loss then averages the passes' losses).
    case pass
    /// A routing pre-pass: forward only, adding this pass's statistics to the step's
    /// (restarted at micro-batch 0); its output and auxiliary loss are not used.
    case gather
    /// The step's, as gathered by the pre-pass over the whole global batch: the passes then
    /// train exactly as one pass over the batch would.
    case held
}

/// A layer maps `[rows, inputWidth]` to `[rows, outputWidth]` with buffers it owns, sized
/// for `maxRows` when built: forward and backward never allocate.
///
/// `forward` keeps what backward needs (its input pointer, pre-activations). `backward`
/// takes `dy` (not modified), *accumulates* into parameter gradients, and returns `dx`
/// (or nil for a layer built without an input gradient, such as the first layer).
public protocol Layer: AnyObject {
    var inputWidth: Int { get }
    var outputWidth: Int { get }
    func forward(_ x: UnsafePointer<Float>, rows: Int, context: ForwardContext) -> UnsafePointer<Float>
    func backward(_ dy: UnsafePointer<Float>, rows: Int) -> UnsafePointer<Float>?
}
