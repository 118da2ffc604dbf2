#if canImport(Glibc)
import Glibc
#endif
import Foundation

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

extension MoE: ReportsTelemetry {
    public var telemetryPrefix: String { "moe" }

    /// The router's interval: one compact line, warnings for router collapse (one expert with
    /// more than half the assignments) and for experts that received nothing for three
    /// intervals running, and the metrics fields.
    public func takeReport(rankLoad: (([Int]) -> (max: Double, mean: Double))?) -> TelemetryReport {
        let t = takeTelemetry()
        var report = TelemetryReport()
        report.expertRows = t.routed
        var perRank = ""
        if let load = rankLoad?(t.accepted) {
            perRank = ", per rank max \(Int(load.max)) mean \(Int(load.mean))"
            report.fields.append(("rank_max", .number(load.max)))
            if exchange?.movesExperts == true {
                perRank += " (\(fixed(t.movedPerPass, 1)) experts run off their rank per pass)"
                report.fields.append(("moved", .number(t.movedPerPass)))
            }
        }
        report.lines.append("  \(name): tokens per expert \(t.routed.min() ?? 0)–\(t.routed.max() ?? 0)\(perRank), "
                            + "dropped \(fixed(100 * t.droppedFraction, 1))%, balance \(fixed(t.balance, 3)), "
                            + "aux \(fixed(t.meanAux, 4))")
        let busiest = t.busiest
        if busiest.share > 0.5 {
            report.lines.append("warning: \(name): expert \(busiest.expert) took \(Int(100 * busiest.share))% of the assignments (router collapse?)")
        }
        let idle = idleIntervals.indices.filter { idleIntervals[$0] == 3 }
        if !idle.isEmpty {
            report.lines.append("warning: \(name): expert\(idle.count == 1 ? "" : "s") \(idle.map(String.init).joined(separator: ", ")) "
                                + "received no tokens for 3 logging intervals")
        }
        report.fields += [("tokens", .counts(t.routed)), ("dropped", .number(t.droppedFraction)),
                          ("balance", .number(t.balance)), ("aux", .number(t.meanAux))]
        return report
    }
}

private func fixed(_ v: Double, _ digits: Int) -> String { String(format: "%.\(digits)f", v) }
