import ArgumentParser
import Cluster
import Foundation
import Kernels
import Training

/// `--threads`, for the commands that compute on a checkpoint's model.
struct ThreadsOption: ParsableArguments {
    // A negative number is taken as the value (and refused by `validate`), not as an option.
    @Option(parsing: .unconditional, help: "BLAS threads per rank (default: the host's cores shared among its ranks).") var threads: Int?

    func validate() throws {
        if let threads, threads < 1 { throw ValidationError("--threads \(threads): must be at least 1") }
    }
}

/// `--precision`, for the commands that run a checkpoint's model.
struct PrecisionOption: ParsableArguments {
    @Option(help: """
        The precision of the matrix products: fp32 or bf16, emulated where the CPU has no native bf16 \
        (default: as trained; checkpoints hold fp32 weights).
        """)
    var precision: Precision?

    /// The config with the precision asked for, if any. Asked for by name, bf16 runs emulated
    /// where it must: the numbers, not the speed, are wanted.
    func applied(to config: JobConfig) -> JobConfig {
        guard let precision else { return config }
        var config = config
        config.train.precision = precision
        config.train.bf16Emulation = true
        return config
    }
}

/// The start every command that computes makes, in one place: MPI (once per process), the
/// one-line report of a fatal signal, the watch on a launcher that dies (under mpirun), and
/// the BLAS threads.
enum CommandStart {
    /// The world of `command`; `alone`: the command runs on one process and refuses mpirun.
    static func world(_ command: String, alone: Bool = false) throws -> Communicator {
        let comm = try MPIWorld.start()
        if alone && comm.size > 1 { throw ConfigError("\(command) runs on one process; start it without mpirun") }
        FatalSignalReport.install(rank: comm.rank, ranks: comm.size)
        if !alone { LauncherWatch.start(rank: comm.rank) }
        return comm
    }

    /// Sets the BLAS threads, `given` or the host's cores shared among the ranks on this host;
    /// returns them and those ranks. Collective: every rank asks how many share its host, given
    /// threads or not, so ranks whose settings differ still reach the preflight that names it.
    @discardableResult
    static func threads(_ given: Int?, comm: Communicator) throws -> (threads: Int, ranksOnHost: Int) {
        let onHost = try comm.ranksOnThisHost()
        let threads = given ?? max(1, ProcessInfo.processInfo.activeProcessorCount / onHost)
        BLAS.setThreads(threads)
        return (threads, onHost)
    }
}
