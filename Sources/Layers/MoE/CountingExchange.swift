/// The expert exchange of a model that is only counted (`Architecture.size`): it says how many
/// ranks there are and which runs each expert, so an MoE layer's `attach` sizes the buffers it
/// would hold on `ranks` ranks; it never moves anything.
final class CountingExchange: ExpertExchange {
    let ranks: Int
    let rank = 0
    let experts: Int
    let movesExperts: Bool

    /// `movesExperts`: the job lets experts move (`ExpertBalance`), which they do only with one
    /// owner each (E ≥ P).
    init(ranks: Int, experts: Int, movesExperts: Bool) {
        self.ranks = ranks
        self.experts = experts
        self.movesExperts = movesExperts && experts >= ranks
    }

    /// Contiguous blocks of experts per rank (E ≥ P), or a replica per rank (E < P). Which rank
    /// runs which expert does not change what rank 0 holds: the experts that may move are all
    /// either held or visiting.
    func runner(of expert: Int, forTokensOf q: Int) -> Int {
        experts >= ranks ? expert * ranks / experts : q
    }

    func allToAll(_ send: UnsafePointer<Int32>, _ receive: UnsafeMutablePointer<Int32>, perRank: Int) {
        fatalError("a counted model exchanged token counts")
    }

    func allToAll(_ send: UnsafePointer<Float>, _ sendCounts: UnsafePointer<Int32>, _ sendOffsets: UnsafePointer<Int32>,
                  _ receive: UnsafeMutablePointer<Float>, _ receiveCounts: UnsafePointer<Int32>,
                  _ receiveOffsets: UnsafePointer<Int32>) {
        fatalError("a counted model exchanged rows")
    }
}
