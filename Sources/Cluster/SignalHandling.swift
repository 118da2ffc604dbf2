import CSignals
import Errors
#if canImport(Glibc)
import Glibc
#endif

/// A rank killed by a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) first writes
/// one line naming itself and the training step, so that the job's output says which rank
/// died and where; the signal then goes on to the Swift runtime's backtracer and kills the
/// process, and mpirun aborts the other ranks.
public enum FatalSignalReport {
    public static func install(rank: Int, ranks: Int) {
        sb_install_fatal_signal_report(ranks > 1 ? "switchboard: error: rank \(rank):" : "switchboard: error:")
    }

    /// Records the step the report will name (a plain store; called every step).
    @inline(__always) public static func at(step: Int) {
        sb_fatal_signal_set_step(Int64(step))
    }
}

/// SIGTERM or SIGINT asks training to stop: the step in progress finishes, a checkpoint is
/// committed, and the program exits (clusters send SIGTERM before preemption).
public enum StopRequest {
    public static func install() { sb_install_stop_request() }

    /// Whether this process has been asked to stop (a plain load; read once per step).
    @inline(__always) public static var isRequested: Bool { sb_stop_requested() != 0 }

    /// The signal that asked (SIGTERM when another rank got it).
    public static var signal: Int32 { sb_stop_requested() != 0 ? sb_stop_requested() : SIGTERM }
}

/// Training stopped on request after saving (said on standard output already); the program
/// exits with 128 + the signal, or the code the caller chose (`train --stop-exit-code`).
public struct StoppedBySignal: SwitchboardError {
    public let signal: Int32
    public let chosenCode: Int32?
    public init(signal: Int32, exitCode: Int32? = nil) { self.signal = signal; chosenCode = exitCode }
    public var exitCode: Int32 { chosenCode ?? 128 + signal }
    public var message: String { "" }
}
