#if canImport(Glibc)
import Glibc
#endif

/// An error Switchboard reports to its user: one line and an exit code. Every domain error
/// adopts it (a bad job file, bad data, a bad checkpoint, a failed disk, HDF5 or MPI call),
/// so the command line reports them all the same way:
/// `switchboard: error: <message>` on standard error, then exit with `exitCode`.
public protocol SwitchboardError: Error {
    /// 2 for usage and configuration errors, 1 for data and runtime failures; others for
    /// outcomes that are not failures (`inspect diff` finding differences, a stop by signal).
    var exitCode: Int32 { get }
    /// One line: what was wrong and where (file, key, tensor, rank), and what was expected.
    /// Empty when the outcome has been printed already and only the exit code is left.
    var message: String { get }
}

/// How a failed call reads in a message: "`action` failed (`details`)", or "`action` failed"
/// when there are no details.
public func failedCall(_ action: String, _ details: String) -> String {
    details.isEmpty ? "\(action) failed" : "\(action) failed (\(details))"
}

/// The C library's words for an `errno` value ("No such file or directory"); by default the
/// current `errno`.
public func systemMessage(_ code: Int32 = errno) -> String {
    String(cString: strerror(code))
}
