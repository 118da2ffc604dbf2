import CFatalSignal

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
