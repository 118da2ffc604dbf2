// What a layer can do beyond forward and backward, declared by conforming to these small
// protocols. The model and training find such layers by walking the network
// (`Model.layers(_:)`), never by naming their types.

/// A layer whose objective adds an auxiliary loss (the MoE balance, z- and entropy losses;
/// the FFF hardening and leaf balance).
public protocol AuxiliaryLoss: AnyObject {
    /// This pass's part of the step's auxiliary loss, coefficients applied, from the last
    /// forward: summed over a step's passes it is the step's.
    var auxLoss: Double { get }
}

/// A layer that keeps statistics over its rows which its terms need summed over the ranks
/// (MoE capacity order and balance, FFF leaf balance), and whose gradients may depend on
/// means over the whole batch.
public protocol RankStatistics: AnyObject {
    /// The sums over the ranks: nil on one rank.
    var reduction: (any RankReduction)? { get set }
    /// Whether a gradient depends on means over the whole batch: a step of several passes
    /// then gathers them in a pre-pass (`BatchStatistics.gather`).
    var gradientsUseBatchStatistics: Bool { get }
}

/// Sums over the ranks that share a global batch, for the layers with `RankStatistics`: MoE
/// capacity is applied in global token order, and auxiliary losses are over the global batch,
/// so P ranks compute exactly what one process would. Training passes only (evaluation needs
/// no statistics, so ranks may evaluate different numbers of chunks).
public protocol RankReduction: AnyObject {
    /// In-place sum over the ranks.
    func sum(_ data: UnsafeMutablePointer<Double>, count: Int)
    /// In place: the sum over the ranks below this one (zeros on rank 0).
    func sumBelow(_ data: UnsafeMutablePointer<Double>, count: Int)
}

/// A layer with a second inference mode, hard decisions (`ForwardContext.hardDecisions`: an
/// FFF descends its tree to one leaf): evaluation reports both, and predict uses it.
public protocol HardInference: AnyObject {}

/// A layer of experts, each row routed to some of them, whose experts ranks can own (expert
/// parallelism): training places them, the layer exchanges rows with the ranks that run them,
/// and an expert's update may run inside backward.
public protocol ExpertLayer: AnyObject {
    var name: String { get }
    var experts: Int { get }
    /// The experts each row goes to (k).
    var expertsPerRow: Int { get }
    /// Rows routed to each expert in the last forward pass.
    var routed: [Int] { get }
    /// Where the parameters of `experts` lie in the store's arena: each expert's are one span,
    /// and consecutive experts' are adjacent.
    func parameterSpan(_ experts: Range<Int>) -> Range<Int>
    /// Runs the experts across ranks from now on (`ExpertExchange`).
    func attach(_ exchange: any ExpertExchange)
    /// Updates the experts this rank owns and runs inside backward from now on, with a
    /// gradient buffer for each of `threads` worker threads.
    func attach(updates: any UpdateInBackward, threads: Int)
}

/// A layer that reports what it did over a logging interval (how it spread its rows over
/// experts or leaves), for the log and the metrics.
public protocol ReportsTelemetry: AnyObject {
    /// The prefix of its metrics fields, numbered over the layers of the same prefix: "moe"
    /// gives `moe0_tokens`, `moe1_tokens`, ….
    var telemetryPrefix: String { get }
    /// Ends the interval (every rank, on the same steps) and reports it. `rankLoad` gives,
    /// for the rows each expert took, the most and the mean a rank took (the placement is
    /// training's); nil on one rank.
    func takeReport(rankLoad: (([Int]) -> (max: Double, mean: Double))?) -> TelemetryReport
}

/// What a layer did over a logging interval: lines for the log (a summary, warnings) and
/// fields for the metrics.
public struct TelemetryReport {
    public enum Value {
        case number(Double)
        case counts([Int])
    }
    public var lines: [String] = []
    /// Field names without the layer's prefix (`tokens`, `balance`).
    public var fields: [(String, Value)] = []
    /// Rows routed to each expert over the interval (an expert layer's; checkpoints keep the
    /// last).
    public var expertRows: [Int]?

    public init() {}

    /// The number field `key`, if reported.
    public func number(_ key: String) -> Double? {
        for case let (k, .number(x)) in fields where k == key { return x }
        return nil
    }
}
