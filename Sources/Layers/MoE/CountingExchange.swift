/// The expert exchange of a model that is only counted (`Architecture.size`): it says how many
/// ranks there are and which runs each expert, so an MoE layer's `attach` sizes the buffers it
/// would hold on `ranks` ranks; it never moves anything.
final class CountingExchange: ExpertExchange {
    let ranks: Int
    let rank: Int
    let experts: Int
    let movesExperts: Bool
    let placement: ExpertPlacement

    /// `movesExperts`: the job lets experts move (`ExpertBalance`), which they do only with one
    /// owner each (E ≥ P). `rank`: the rank counted.
    init(ranks: Int, rank: Int, experts: Int, movesExperts: Bool) {
        self.ranks = ranks
        self.rank = rank
        self.experts = experts
        self.movesExperts = movesExperts && experts >= ranks
        placement = ExpertPlacement(experts: experts, ranks: ranks)
    }

    func runner(of expert: Int, forTokensOf q: Int) -> Int { placement.runner(of: expert, forTokensOf: q) }

    func allToAll(_ send: UnsafePointer<Int32>, _ receive: UnsafeMutablePointer<Int32>, perRank: Int) {
        fatalError("a counted model exchanged token counts")
    }

    func allToAll(_ send: UnsafePointer<Float>, _ sendCounts: UnsafePointer<Int32>, _ sendOffsets: UnsafePointer<Int32>,
                  _ receive: UnsafeMutablePointer<Float>, _ receiveCounts: UnsafePointer<Int32>,
                  _ receiveOffsets: UnsafePointer<Int32>) {
        fatalError("a counted model exchanged rows")
    }
}
