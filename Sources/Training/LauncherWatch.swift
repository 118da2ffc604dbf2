import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Under a launcher (mpirun, srun), a rank whose launcher dies is orphaned: without this it
/// would train on, and commit checkpoints, into a run folder that a restarted job may be
/// using already. A thread watches the parent process; when the rank is reparented (the
/// launcher is gone), the process says so and exits at once, committing nothing further (a
/// save cut short leaves only a `.tmp` folder, which the next start removes).
public enum LauncherWatch {
    /// Seconds between looks at the parent.
    static let interval: useconds_t = 50_000

    nonisolated(unsafe) private static var line: [CChar] = []
    nonisolated(unsafe) private static var launcher: pid_t = 0

    /// Starts the watch when this process was started by a launcher; `rank` names it in the
    /// line it prints.
    public static func start(rank: Int) {
        let environment = ProcessInfo.processInfo.environment
        guard environment["OMPI_COMM_WORLD_SIZE"] != nil || environment["PMIX_RANK"] != nil
                || environment["SLURM_PROCID"] != nil else { return }
        launcher = getppid()
        guard launcher > 1 else { return }
        line = Array("switchboard: error: rank \(rank): its launcher (process \(launcher)) is gone; stopping without saving\n".utf8CString)
        var thread = pthread_t()
        pthread_create(&thread, nil, { _ in
            while getppid() == LauncherWatch.launcher { usleep(LauncherWatch.interval) }
            LauncherWatch.line.withUnsafeBufferPointer { _ = write(2, $0.baseAddress!, $0.count - 1) }
            _exit(1)
        }, nil)
        pthread_detach(thread)
    }
}
