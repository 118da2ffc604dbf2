#if canImport(Glibc)
import Glibc
#endif

/// What one MoE layer's router did over a logging interval (training passes only).
public struct MoETelemetry: Sendable {
    /// Assignments routed to each expert (before capacity).
    public var routed: [Int]
    /// Assignments each expert took (after capacity).
    public var accepted: [Int]
    /// Sum of the auxiliary loss over the passes (each pass's part of its step's).
    public var auxSum = 0.0
    /// Training steps, and passes (several per step with gradient accumulation).
    public var steps = 0
    public var passes = 0
    /// Experts run away from their owner, summed over the passes (`ExpertBalance`).
    public var moved = 0

    public init(experts: Int) {
        routed = [Int](repeating: 0, count: experts)
        accepted = [Int](repeating: 0, count: experts)
    }

    public var assignments: Int { routed.reduce(0, +) }
    /// Share of routed assignments that capacity dropped.
    public var droppedFraction: Double {
        let a = assignments
        return a == 0 ? 0 : Double(a - accepted.reduce(0, +)) / Double(a)
    }
    /// Entropy of the assignment shares over log E: 1 when every expert gets the same share,
    /// 0 when one expert takes everything.
    public var balance: Double { Self.balance(routed) }

    /// The entropy of the shares of `counts` over log(count): 1 when every one is the same
    /// (or there is nothing to share), 0 when one takes everything.
    public static func balance(_ counts: [Int]) -> Double {
        let a = Double(counts.reduce(0, +)), e = Double(counts.count)
        guard a > 0, e > 1 else { return 1 }
        var h = 0.0
        for r in counts where r > 0 { let p = Double(r) / a; h -= p * log(p) }
        return h / log(e)
    }
    public var meanAux: Double { steps == 0 ? 0 : auxSum / Double(steps) }
    public var movedPerPass: Double { passes == 0 ? 0 : Double(moved) / Double(passes) }
    /// The expert with the largest share, and that share.
    public var busiest: (expert: Int, share: Double) {
        let a = max(assignments, 1)
        let i = routed.indices.max { routed[$0] < routed[$1] } ?? 0
        return (i, Double(routed.isEmpty ? 0 : routed[i]) / Double(a))
    }
}
