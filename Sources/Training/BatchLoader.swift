import Kernels
import Storage

/// The training input, apart from the model (as llm.c's `dataloader_next_batch` stands apart
/// from its step): which samples this rank takes in each pass of each global batch, gathered
/// into `x` and `labels`, and the next load named to the dataset so it reads meanwhile.
///
/// Pass m of a global batch holds its rows [m·G, (m+1)·G), G = P · `passRows`, split among
/// the ranks as a whole batch is: global row order runs pass by pass, then rank by rank, the
/// same order as one pass over the batch, whatever P and the micro-batch.
final class BatchLoader {
    let order: GlobalSampleOrder
    let data: Dataset
    let rank: Int, ranks: Int
    /// Rows this rank holds in one pass: its share of a batch, or the micro-batch.
    let passRows: Int
    /// This rank's rows of the pass last loaded: x `[maxRows, width]`, labels `[maxRows]`.
    let x: Tensor
    var labels: [Int32]
    /// The sample orders of two epochs, in slot epoch % 2: the current one, and the next one
    /// once the input reads ahead into it.
    private var permutations: [[Int32]]
    private var permutationEpochs = [-1, -1]

    /// This rank's rows of one pass: `mine` rows, the first at `offset` within the global
    /// batch, of `pass` rows over all ranks.
    struct PassRows {
        var mine: Int, offset: Int, pass: Int
    }

    init(order: GlobalSampleOrder, data: Dataset, rank: Int, ranks: Int, passRows: Int, maxRows: Int) {
        self.order = order
        self.data = data
        (self.rank, self.ranks, self.passRows) = (rank, ranks, passRows)
        permutations = [[Int32](repeating: 0, count: data.count), [Int32](repeating: 0, count: data.count)]
        x = Tensor(shape: [maxRows, data.width])
        labels = [Int32](repeating: 0, count: maxRows)
    }

    /// The passes a global batch of `rows` rows takes: passes of `passRows` on every rank.
    func passes(rows: Int) -> Int { (rows + ranks * passRows - 1) / (ranks * passRows) }

    /// Gathers this rank's rows of pass `pass` of global batch `batch` of `epoch` into `x` and
    /// `labels`. Then names the rows of the load after it to the dataset (`Dataset.prefetch`),
    /// which reads them meanwhile: the next pass, the first again after a `gathering`
    /// pre-pass's last, or the next step's first.
    func load(_ pass: Int, epoch: Int, batch: Int, gathering: Bool = false) throws -> PassRows {
        let rows = try samples(pass, epoch: epoch, batch: batch) { samples in
            try labels.withUnsafeMutableBufferPointer { y in try data.gather(samples, into: x.data, labels: y.baseAddress!) }
        }
        guard data.prefetches else { return rows }
        var next = (pass: pass + 1, epoch: epoch, batch: batch)
        if next.pass == passes(rows: order.batch(batch).count) {
            next.pass = 0
            if !gathering { next.batch += 1 }
            if next.batch == order.batchesPerEpoch { (next.epoch, next.batch) = (epoch + 1, 0) }
        }
        _ = try samples(next.pass, epoch: next.epoch, batch: next.batch) { data.prefetch($0) }
        return rows
    }

    /// The dataset index of row `row` of global batch `batch` of `epoch` (an epoch loaded or
    /// read ahead).
    func sample(epoch: Int, batch: Int, row: Int) -> Int32 {
        permutations[epoch % 2][order.batch(batch).lowerBound + row]
    }

    /// Calls `body` with the samples this rank takes in pass `pass` of global batch `batch` of
    /// `epoch`; returns where they lie.
    private func samples(_ pass: Int, epoch: Int, batch: Int, _ body: (UnsafeBufferPointer<Int32>) throws -> Void) throws -> PassRows {
        let slot = epoch % 2
        if permutationEpochs[slot] != epoch {
            order.permutation(epoch: epoch, into: &permutations[slot])
            permutationEpochs[slot] = epoch
        }
        let positions = order.batch(batch)
        let size = ranks * passRows, first = pass * size
        let rows = min(size, positions.count - first)
        let part = GlobalSampleOrder.part(rows: rows, rank: rank, ranks: ranks)
        let from = positions.lowerBound + first + part.lowerBound
        try permutations[slot].withUnsafeBufferPointer { p in try body(UnsafeBufferPointer(rebasing: p[from..<(from + part.count)])) }
        return PassRows(mine: part.count, offset: first + part.lowerBound, pass: rows)
    }
}
