import Cluster
import Errors
import Foundation

/// A failure made on purpose by the test hook `SWITCHBOARD_FAULT`.
public struct InjectedFault: SwitchboardError, CustomStringConvertible {
    public let step: Int
    public var description: String { "injected fault before step \(step) (SWITCHBOARD_FAULT)" }
    public var message: String { description }
    public var exitCode: Int32 { 1 }
}

/// Test hook: `SWITCHBOARD_FAULT=rank=R,step=S[,kind=K]` acts on rank R before training step
/// S, so tests can check how the job handles one failing rank. Kinds: `throw` (the default)
/// throws an error; `stop` sends the process SIGSTOP, as a hung node would look to the others;
/// `crash` writes through a bad pointer (a real SIGSEGV); `kill-in-save` acts later, inside the
/// checkpoint of step S, after this rank has written and synced its shard and before the
/// commit: it sends itself SIGKILL, a death in the middle of a save; `kill-in-predict` acts in
/// `switchboard predict` after batch S is written, before the output is committed;
/// `term-in-predict` there sends SIGTERM instead, as a user's Ctrl-C or a scheduler would.
/// Unset, it costs one compare per step.
public enum FaultInjection {
    public enum Kind: String, Sendable {
        case `throw`, stop, crash, killInSave = "kill-in-save", killInPredict = "kill-in-predict", termInPredict = "term-in-predict"
    }

    static let plan: (rank: Int, step: Int, kind: Kind)? = {
        guard let raw = getenv("SWITCHBOARD_FAULT") else { return nil }
        var rank: Int?, step: Int?, kind = Kind.throw
        for part in String(cString: raw).split(separator: ",") {
            let kv = part.split(separator: "=").map(String.init)
            guard kv.count == 2 else { continue }
            if kv[0] == "rank" { rank = Int(kv[1]) }
            if kv[0] == "step" { step = Int(kv[1]) }
            if kv[0] == "kind", let k = Kind(rawValue: kv[1]) { kind = k }
        }
        guard let rank, let step else { return nil }
        return (rank, step, kind)
    }()

    /// Test hook `SWITCHBOARD_STEP_PAUSE=<milliseconds>`: every rank sleeps that long before
    /// each step, so that a test of a cluster event (a node lost, a signal) finds the run still
    /// going however fast this machine trains the toy model.
    static let stepPause: useconds_t? = getenv("SWITCHBOARD_STEP_PAUSE").flatMap { UInt32(String(cString: $0)) }.map { $0 * 1000 }

    public static func check(rank: Int, step: Int) throws {
        if let stepPause { usleep(stepPause) }
        guard let plan, plan.rank == rank, plan.step == step, ![.killInSave, .killInPredict, .termInPredict].contains(plan.kind) else { return }
        switch plan.kind {
        case .killInSave, .killInPredict, .termInPredict: break
        case .throw: throw InjectedFault(step: step)
        case .stop: raise(SIGSTOP)
        case .crash: UnsafeMutablePointer<Int>(bitPattern: 16)!.pointee = step
        }
    }
}

extension FaultInjection {
    /// Called inside the save of the checkpoint for `step` (which holds `step` steps).
    static func checkInSave(rank: Int, step: Int) {
        guard let plan, plan.kind == .killInSave, plan.rank == rank, plan.step == step else { return }
        kill(getpid(), SIGKILL)
    }
}

extension FaultInjection {
    /// Called by `switchboard predict` once batch `batch` (from 0) is written.
    public static func checkInPredict(batch: Int) {
        guard let plan, plan.kind == .killInPredict || plan.kind == .termInPredict, plan.step == batch else { return }
        kill(getpid(), plan.kind == .killInPredict ? SIGKILL : SIGTERM)
        // The signal thread takes it: wait until it has (at most a second), so the next batch
        // sees the request.
        for _ in 0..<1000 where !StopRequest.isRequested { usleep(1000) }
    }
}
