import Foundation

/// Settings that libraries read from the environment once, when they load (before `main`):
/// the program sets them and re-executes itself, once, at the start of `main`. Under mpirun
/// that happens before MPI starts, so each rank simply continues as the new image.
enum LaunchEnvironment {
    /// After each call OpenBLAS's idle threads spin (yielding) for 2^28 cycles by default,
    /// ~0.1 s, which takes a core from everything between GEMMs: the optimizer update on the
    /// worker pool, other ranks. 2^16 cycles (~30 µs) still covers the gap between a step's
    /// back-to-back GEMMs (docs/BENCHMARKS.md).
    static let threadTimeout = "16"

    /// oneDNN's OpenMP threads (libgomp) spin 300,000 times after each product by default,
    /// which takes a core from an MoE expert running on the worker pool: 3,000 (a few µs)
    /// ran W2 at 2 threads 1.7× faster and W1 within its noise (docs/BENCHMARKS.md). The user's
    /// own GOMP_SPINCOUNT or OMP_WAIT_POLICY wins.
    static let openMPSpinCount = "3000"

    /// The shared library that counts heap allocations per thread (`CAllocCounter`, built
    /// by `swift build` beside the binary). Only `bench`'s counting run (and `train` under its test hook) loads it: it
    /// interposes `malloc`, which costs time, and the program users train with does not
    /// carry that.
    static let allocationCounterFile = "libSwitchboardAllocCounter.so"

    /// Sets `OPENBLAS_THREAD_TIMEOUT` and `GOMP_SPINCOUNT` unless the user set them (or
    /// `OMP_WAIT_POLICY`), and for `bench --count-allocations` (and `train` with the test hook
    /// `SWITCHBOARD_COUNT_ALLOCATIONS`, `AllocationTrace`) preloads the allocation counter;
    /// re-executes the program if anything changed.
    static func prepare() {
        // Once: a preload that failed to load must not make the program exec itself forever.
        if getenv("SWITCHBOARD_LAUNCHED") != nil {
            unsetenv("SWITCHBOARD_LAUNCHED")
            return
        }
        var changed = false
        if getenv("OPENBLAS_THREAD_TIMEOUT") == nil {
            setenv("OPENBLAS_THREAD_TIMEOUT", threadTimeout, 1)
            changed = true
        }
        if getenv("GOMP_SPINCOUNT") == nil && getenv("OMP_WAIT_POLICY") == nil {
            setenv("GOMP_SPINCOUNT", openMPSpinCount, 1)
            changed = true
        }
        let counting = CommandLine.arguments.dropFirst().first == "bench" && CommandLine.arguments.contains("--count-allocations")
            || CommandLine.arguments.dropFirst().first == "train" && getenv("SWITCHBOARD_COUNT_ALLOCATIONS") != nil
        if counting, AllocationCounter.read == nil,
           let library = allocationCounterLibrary {
            let preloaded = getenv("LD_PRELOAD").map { String(cString: $0) + ":" } ?? ""
            setenv("LD_PRELOAD", preloaded + library, 1)
            changed = true
        }
        guard changed else { return }
        setenv("SWITCHBOARD_LAUNCHED", "1", 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        // exec failed (no /proc): carry on without.
    }

    /// The allocation counter library beside this program, if it was built.
    static var allocationCounterLibrary: String? {
        let binary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        let path = binary.deletingLastPathComponent().appendingPathComponent(allocationCounterFile).path
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }
}

/// The heap allocations this thread has made, when the allocation counter library is
/// loaded (`LaunchEnvironment`).
enum AllocationCounter {
    typealias Count = @convention(c) () -> UInt64
    static let read: Count? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "sb_thread_allocations")
        .map { unsafeBitCast($0, to: Count.self) }
    /// Those made inside the libraries' products (oneDNN, OpenBLAS), which the counter keeps apart.
    static let readLibraries: Count? = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "sb_thread_library_allocations")
        .map { unsafeBitCast($0, to: Count.self) }
}
