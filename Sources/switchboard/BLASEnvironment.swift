import Foundation

/// OpenBLAS settings that it reads from the environment once, when the library loads —
/// before `main` — so the process sets them and re-executes itself.
enum BLASEnvironment {
    /// After each call OpenBLAS's idle threads spin (yielding) for 2^28 cycles by default,
    /// ~0.1 s, which takes a core from everything between GEMMs: the optimizer update on the
    /// worker pool, other ranks. 2^16 cycles (~30 µs) still covers the gap between a step's
    /// back-to-back GEMMs. W1 at 2 threads: 3560 → 3836 samples/s (bench W1, this machine).
    static let threadTimeout = "16"

    /// Re-executes the program with `OPENBLAS_THREAD_TIMEOUT` set, unless the user set it.
    /// Runs before MPI starts, so under mpirun the rank simply continues as the new image.
    static func ensureThreadTimeout() {
        guard getenv("OPENBLAS_THREAD_TIMEOUT") == nil else { return }
        setenv("OPENBLAS_THREAD_TIMEOUT", threadTimeout, 1)
        let args = CommandLine.unsafeArgv
        execv("/proc/self/exe", args)
        // exec failed (no /proc): carry on with OpenBLAS's default.
    }
}
