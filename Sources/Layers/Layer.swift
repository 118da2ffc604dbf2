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
    /// Rows in the whole global batch (0: this pass's rows): MoE auxiliary losses are means
    /// over the global batch.
    public var globalRows: Int
    /// Inference with hard decisions: a fast feedforward layer descends its tree to one leaf
    /// per row instead of mixing every leaf (ignored in training).
    public var hardDecisions: Bool

    public init(training: Bool, step: Int = 0, rowOffset: Int = 0, globalRows: Int = 0, hardDecisions: Bool = false) {
        self.training = training
        self.step = step
        self.rowOffset = rowOffset
        self.globalRows = globalRows
        self.hardDecisions = hardDecisions
    }
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
