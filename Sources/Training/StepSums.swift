import Cluster

/// The sums one training step needs from every rank, reduced in one allreduce: the loss and
/// the correct predictions over the global batch, Σ gradient² for the global norm (each rank's
/// shard), and whether any rank asked for a checkpoint or to stop, so that every rank learns
/// it at the same step. Evaluation reduces the same struct, with only the first two set.
struct StepSums {
    var lossSum = 0.0
    var correct = 0.0
    var squaredGradients = 0.0
    var saveRequests = 0.0
    var stopRequests = 0.0

    /// The fields as the contiguous doubles the allreduce sums, in declaration order.
    private var packed: (Double, Double, Double, Double, Double) {
        get { (lossSum, correct, squaredGradients, saveRequests, stopRequests) }
        set { (lossSum, correct, squaredGradients, saveRequests, stopRequests) = newValue }
    }

    /// Sums every field over the ranks of `comm` (collective).
    mutating func reduce(over comm: Communicator, _ phase: StaticString) throws {
        var values = packed
        try withUnsafeMutablePointer(to: &values) { tuple in
            try tuple.withMemoryRebound(to: Double.self, capacity: 5) { try comm.allreduceSum($0, count: 5, phase) }
        }
        packed = values
    }
}
