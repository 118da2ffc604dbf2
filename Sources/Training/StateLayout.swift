/// Where a rank keeps the optimizer state of the arena ranges it updates (ZeRO stage 1,
/// Rajbhandari et al. 2020): the ranges laid end to end in ascending order, so a rank holds
/// state for its shard of the synced parameters and for the experts it owns, not for the
/// whole arena. In a world of one the one range is the whole trainable arena, and a state
/// index is the arena offset.
///
/// A rank's part of one parameter is then one run of its state: the ranges it holds inside
/// the parameter are consecutive in ascending order, so they lie side by side.
public struct StateLayout: Sendable, Equatable {
    /// Arena ranges, ascending and disjoint.
    public let ranges: [Range<Int>]
    /// Where each range starts in the state.
    let starts: [Int]
    /// Floats of state per state tensor.
    public let count: Int

    /// The layout of `ranges` (in any order; empty ones are dropped).
    public init(_ ranges: [Range<Int>]) {
        let sorted = ranges.filter { !$0.isEmpty }.sorted { $0.lowerBound < $1.lowerBound }
        for (a, b) in zip(sorted, sorted.dropFirst()) { precondition(a.upperBound <= b.lowerBound, "overlapping ranges \(a), \(b)") }
        var at = 0
        starts = sorted.map { r in defer { at += r.count }; return at }
        self.ranges = sorted
        count = at
    }

    /// The whole arena of `count` floats.
    public init(whole count: Int) { self.init([0..<count]) }

    /// The state index of arena offset `offset`, or nil where this rank holds no state for it.
    public func index(of offset: Int) -> Int? {
        var lo = 0, hi = ranges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ranges[mid].upperBound <= offset { lo = mid + 1 } else { hi = mid }
        }
        guard lo < ranges.count, ranges[lo].contains(offset) else { return nil }
        return starts[lo] + offset - ranges[lo].lowerBound
    }

    /// Where the state of arena range `span` starts when this layout holds all of it (one run
    /// of the state: the ranges leave no gap inside it); nil otherwise.
    public func run(of span: Range<Int>) -> Int? {
        guard let at = index(of: span.lowerBound), index(of: span.upperBound - 1) == at + span.count - 1 else { return nil }
        return at
    }

    /// The parts of arena range `span` held here, ascending, each with its state index.
    public func pieces(of span: Range<Int>) -> [(arena: Range<Int>, at: Int)] {
        Self.pieces(of: span, in: ranges).map { ($0, index(of: $0.lowerBound)!) }
    }

    /// The parts of `span` inside `ranges` (ascending, disjoint), ascending.
    public static func pieces(of span: Range<Int>, in ranges: [Range<Int>]) -> [Range<Int>] {
        ranges.compactMap { r in
            let lo = max(r.lowerBound, span.lowerBound), hi = min(r.upperBound, span.upperBound)
            return lo < hi ? lo..<hi : nil
        }
    }
}
