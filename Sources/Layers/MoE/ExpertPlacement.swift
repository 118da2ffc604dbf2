/// Which ranks run which experts: contiguous blocks of global expert ids. With E ≥ P, rank r
/// runs experts `[r·E/P, (r+1)·E/P)` (blocks differ by at most one when P does not divide E).
/// With E < P, expert e runs on the group of ranks `[e·P/E, (e+1)·P/E)`, a replica on each;
/// rank q's tokens for e go to the replica at `q mod group size`, so every replica serves a
/// fixed set of ranks whatever the routing.
public struct ExpertPlacement: Sendable, Equatable, CustomStringConvertible {
    public let experts: Int
    public let ranks: Int

    public init(experts: Int, ranks: Int) {
        precondition(experts >= 1 && ranks >= 1)
        self.experts = experts
        self.ranks = ranks
    }

    /// The experts rank r runs.
    public func experts(on r: Int) -> Range<Int> {
        if experts >= ranks { return (r * experts / ranks)..<((r + 1) * experts / ranks) }
        let e = (0..<experts).first { runners(of: $0).contains(r) }!
        return e..<(e + 1)
    }

    /// The ranks that hold expert e (one unless E < P).
    public func runners(of e: Int) -> Range<Int> {
        if experts >= ranks {
            let r = (0..<ranks).first { experts(on: $0).contains(e) }!
            return r..<(r + 1)
        }
        return (e * ranks / experts)..<((e + 1) * ranks / experts)
    }

    /// The rank that runs expert e on rank q's tokens.
    public func runner(of e: Int, forTokensOf q: Int) -> Int {
        let group = runners(of: e)
        return group.lowerBound + q % group.count
    }

    /// One line per rank, as printed at start: `rank 0: experts 0–3`.
    public var description: String {
        (0..<ranks).map { r in
            let mine = experts(on: r)
            let list = mine.count == 1 ? "expert \(mine.lowerBound)" : "experts \(mine.lowerBound)–\(mine.upperBound - 1)"
            let replicas = experts < ranks ? " (replica \(r - runners(of: mine.lowerBound).lowerBound + 1) of \(runners(of: mine.lowerBound).count))" : ""
            return "rank \(r): \(list)\(replicas)"
        }.joined(separator: "\n")
    }
}
