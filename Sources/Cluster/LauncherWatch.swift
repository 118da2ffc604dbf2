import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Under a launcher (mpirun, srun), a rank whose launcher dies is orphaned: without this it
/// would train on, and commit checkpoints, into a run folder that a restarted job may be
/// using already. A thread watches the parent process; when the rank is reparented (the
/// launcher is gone), the process says so and exits at once, committing nothing further (a
/// save cut short leaves only a `.tmp` folder, which the next start removes). The commit of a
/// checkpoint asks `isOrphaned` too, for a launcher that died since the thread last looked.
public enum LauncherWatch {
    /// The launcher's process id and the line to print, handed to the watching thread.
    final class Watch {
        let launcher: pid_t
        let line: [CChar]
        init(launcher: pid_t, line: [CChar]) { self.launcher = launcher; self.line = line }
    }

    /// Microseconds between looks at the parent.
    static let interval: useconds_t = 50_000

    /// Starts the watch when this process was started by a launcher; `rank` names it in the
    /// line it prints.
    public static func start(rank: Int) {
        guard let launcher = launcherProcess else { return }
        let line = "switchboard: error: rank \(rank): its launcher (process \(launcher)) is gone; stopping without saving\n"
        let watch = Unmanaged.passRetained(Watch(launcher: launcher, line: Array(line.utf8CString)))
        var thread = pthread_t()
        pthread_create(&thread, nil, { raw in
            let watch = Unmanaged<Watch>.fromOpaque(raw!).takeRetainedValue()
            while getppid() == watch.launcher { usleep(LauncherWatch.interval) }
            watch.line.withUnsafeBufferPointer { _ = write(2, $0.baseAddress!, $0.count - 1) }
            _exit(1)
        }, watch.toOpaque())
        pthread_detach(thread)
    }

    /// The launcher's process id (the parent at start), when a launcher started this process.
    static let launcherProcess: pid_t? = {
        let environment = ProcessInfo.processInfo.environment
        guard environment["OMPI_COMM_WORLD_SIZE"] != nil || environment["PMIX_RANK"] != nil
                || environment["SLURM_PROCID"] != nil else { return nil }
        let parent = getppid()
        return parent > 1 ? parent : nil
    }()

    /// Whether this process was started by a launcher that is gone now.
    public static var isOrphaned: Bool {
        launcherProcess.map { getppid() != $0 } ?? false
    }
}
