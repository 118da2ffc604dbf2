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
