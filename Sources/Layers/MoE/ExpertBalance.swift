/// Which rank runs each expert in one pass, when routing leaves the owners' loads uneven.
///
/// An expert lives on its owner (parameters, gradient, optimizer state), but for one pass
/// another rank can run it: the owner sends it the weights, and after backward it returns the
/// weight gradients. The runner does exactly what the owner would have done (the same rows in
/// the same order, the same GEMMs, a gradient that starts from zero), so where an expert runs
/// changes no bit of the result; it only moves time from a busy rank to an idle one.
///
/// The runners of a pass are contiguous blocks of expert ids in rank order, like the owners:
/// then each rank's rows for a runner stay one run in its expert-ordered rows, and the row
/// exchange needs no packing. Of all such blocks, the plan takes the one with the smallest
/// largest load, and of those the fewest moves (an exact search over the cut points). Every
/// rank computes it from the same counts, so all agree without a message.
///
/// A rank runs at most `maxVisiting` experts it does not own in one pass: their parameters
/// and gradients live in slots sized when the layer is attached, not in the rank's store.
public struct ExpertBalance {
    /// An expert costs its rows plus this many rows' worth of fixed time: its weights are read
    /// whole however few rows it has, a cost that scales with the weights as the per-row cost
    /// does, so one number serves any size (fitted on `bench W4`; docs/BENCHMARKS.md).
    public static let fixedRows = 12
    /// Moving an expert: its weights out in forward and its gradients back after backward,
    /// in rows' worth of time (fitted the same way).
    public static let moveRows = 16

    let ranks: Int, experts: Int, maxVisiting: Int
    /// [(P + 1) · (E + 1)], for experts j..<E on ranks r..<P: the smallest largest load; then,
    /// with no block above the smallest of all, the fewest moves and where rank r's block ends.
    private var worst: [Int], moves: [Int], cut: [Int]
    /// [E] rows per expert over all ranks.
    private var total: [Int]

    public init(ranks: Int, experts: Int, maxVisiting: Int = .max) {
        self.ranks = ranks
        self.experts = experts
        self.maxVisiting = maxVisiting
        let n = (ranks + 1) * (experts + 1)
        worst = [Int](repeating: 0, count: n)
        moves = [Int](repeating: 0, count: n)
        cut = [Int](repeating: 0, count: n)
        total = [Int](repeating: 0, count: experts)
    }

    /// Fills `runner[e]` for every expert and returns the number moved off their owners.
    /// `rows[q · E + e]`: rows rank q sends to expert e; `owner(e)`: the rank that holds e. An
    /// expert without rows stays with its owner (nothing runs, nothing moves).
    @discardableResult
    public mutating func plan(rows: UnsafePointer<Int32>, owner: (Int) -> Int, runner: UnsafeMutablePointer<Int>) -> Int {
        let p = ranks, e = experts, width = e + 1
        for i in 0..<e {
            var n = 0
            for q in 0..<p { n += Int(rows[q * e + i]) }
            total[i] = n
        }
        // Expert i run on rank r: its rows, a fixed cost, a move cost if r does not own it.
        func load(_ i: Int, on r: Int) -> Int {
            total[i] == 0 ? 0 : total[i] + Self.fixedRows + (owner(i) == r ? 0 : Self.moveRows)
        }
        func moved(_ i: Int, to r: Int) -> Int { total[i] > 0 && owner(i) != r ? 1 : 0 }
        // Pass 1: the smallest largest load, ranks from the last down, block [j, k) on rank r,
        // of blocks with at most `maxVisiting` experts moved in (every expert on its owner is
        // one such plan, so there always is one).
        let infeasible = Int.max / 2
        for j in 0...e {
            let visitors = (j..<e).reduce(0) { $0 + moved($1, to: p - 1) }
            worst[(p - 1) * width + j] = visitors > maxVisiting ? infeasible : (j..<e).reduce(0) { $0 + load($1, on: p - 1) }
        }
        for r in stride(from: p - 2, through: 0, by: -1) {
            for j in 0...e {
                var best = infeasible, block = 0, visitors = 0
                for k in j...e {
                    if k > j { block += load(k - 1, on: r); visitors += moved(k - 1, to: r) }
                    if visitors > maxVisiting { break }
                    best = min(best, max(block, worst[(r + 1) * width + k]))
                }
                worst[r * width + j] = best
            }
        }
        // Pass 2: the fewest moves with every block within that load.
        let limit = worst[0]
        for j in 0...e {
            let fits = worst[(p - 1) * width + j] <= limit
            moves[(p - 1) * width + j] = fits ? (j..<e).reduce(0) { $0 + moved($1, to: p - 1) } : infeasible
            cut[(p - 1) * width + j] = e
        }
        for r in stride(from: p - 2, through: 0, by: -1) {
            for j in 0...e {
                var best = infeasible, bestCut = e, block = 0, blockMoves = 0
                for k in j...e {
                    if k > j { block += load(k - 1, on: r); blockMoves += moved(k - 1, to: r) }
                    if block > limit || blockMoves > maxVisiting { break }
                    let m = blockMoves + moves[(r + 1) * width + k]
                    if m < best { best = m; bestCut = k }
                }
                moves[r * width + j] = best
                cut[r * width + j] = bestCut
            }
        }
        var j = 0, count = 0
        for r in 0..<p {
            let k = r == p - 1 ? e : cut[r * width + j]
            for i in j..<k {
                runner[i] = total[i] > 0 ? r : owner(i)
                count += moved(i, to: r)
            }
            j = k
        }
        return count
    }
}
