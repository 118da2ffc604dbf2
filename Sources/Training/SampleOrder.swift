import Kernels

/// The global sample order (docs/ARCHITECTURE.md, "One training step"): epoch e visits the samples in
/// a permutation drawn from `(seed, e)`; global batch b is positions `[b·B, (b+1)·B)` of it
/// (the last one shorter when B does not divide N), and rank r of P takes a fixed contiguous
/// part of each batch. B comes from the config, never from P.
public struct GlobalSampleOrder: Sendable {
    public let count: Int
    public let batchSize: Int
    public let seed: UInt64

    public init(count: Int, batchSize: Int, seed: UInt64) {
        self.count = count
        self.batchSize = batchSize
        self.seed = seed
    }

    public var batchesPerEpoch: Int { (count + batchSize - 1) / batchSize }

    /// Writes epoch `epoch`'s permutation into `order` (count entries); no allocation.
    public func permutation(epoch: Int, into order: inout [Int32]) {
        precondition(order.count == count)
        Philox(seed: seed).fillPermutation(&order, stream: RNGStream.shuffle(epoch: epoch))
    }

    /// Positions in the epoch order of global batch `batch`.
    public func batch(_ batch: Int) -> Range<Int> {
        let start = batch * batchSize
        return start..<min(start + batchSize, count)
    }

    /// The part of a global batch of `rows` rows that rank `rank` of `ranks` takes, as row
    /// offsets within the batch: balanced, contiguous, the same split for any batch size.
    public static func part(rows: Int, rank: Int, ranks: Int) -> Range<Int> {
        (rank * rows / ranks)..<((rank + 1) * rows / ranks)
    }
}
