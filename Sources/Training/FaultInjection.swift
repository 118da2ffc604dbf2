import Foundation

/// A failure made on purpose by the test hook `SWITCHBOARD_FAULT`.
public struct InjectedFault: Error, CustomStringConvertible {
    public let step: Int
    public var description: String { "injected fault before step \(step) (SWITCHBOARD_FAULT)" }
}

/// Test hook: `SWITCHBOARD_FAULT=rank=R,step=S` makes rank R throw before training step S, so
/// tests can check that one rank's error stops the whole job. Unset, it costs one compare.
public enum FaultInjection {
    static let plan: (rank: Int, step: Int)? = {
        guard let raw = getenv("SWITCHBOARD_FAULT") else { return nil }
        var rank: Int?, step: Int?
        for part in String(cString: raw).split(separator: ",") {
            let kv = part.split(separator: "=").map(String.init)
            guard kv.count == 2 else { continue }
            if kv[0] == "rank" { rank = Int(kv[1]) }
            if kv[0] == "step" { step = Int(kv[1]) }
        }
        guard let rank, let step else { return nil }
        return (rank, step)
    }()

    public static func check(rank: Int, step: Int) throws {
        if let plan, plan.rank == rank, plan.step == step { throw InjectedFault(step: step) }
    }
}
