import Errors
import Foundation

/// A file or folder that could not be written, read or moved.
public struct DiskError: SwitchboardError, CustomStringConvertible {
    public let path: String, problem: String
    public init(_ path: String, _ problem: String) { self.path = path; self.problem = problem }
    public var description: String { "\(path): \(problem)" }
    public var message: String { description }
    public var exitCode: Int32 { 1 }
}

/// The file-system steps of a crash-safe commit: data reaches the disk (`fsync`) before the
/// name that makes it visible does (`rename`, then `fsync` of the folder holding the name).
public enum DurableFiles {
    /// Flushes a file's or folder's contents and metadata to the disk.
    public static func sync(_ path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw DiskError(path, "cannot open to sync (\(systemMessage()))") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw DiskError(path, failedCall("fsync", systemMessage())) }
    }

    /// Renames `from` to `to` (same file system, atomic), then syncs the folder holding both.
    public static func rename(_ from: String, _ to: String) throws {
        guard Foundation.rename(from, to) == 0 else { throw DiskError(from, "cannot rename to \(to) (\(systemMessage()))") }
        try sync((to as NSString).deletingLastPathComponent.nonEmpty ?? ".")
    }

    /// Removes a file or folder tree; a missing one is not an error.
    public static func remove(_ path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else { return }
        do { try FileManager.default.removeItem(atPath: path) } catch {
            throw DiskError(path, "cannot remove (\(error.localizedDescription))")
        }
    }

    /// Removes a stale file left at `path` by an earlier write that did not finish (a file
    /// written there first and renamed when complete, such as predict's `OUT.partial`). Only
    /// a plain file is removed: a folder, a link or anything else of that name is someone
    /// else's, and is refused, naming it.
    public static func removeStale(_ path: String) throws {
        var info = stat()
        guard lstat(path, &info) == 0 else { return }
        let kind: String
        switch info.st_mode & S_IFMT {
        case S_IFREG: return try remove(path)
        case S_IFDIR: kind = "a folder"
        case S_IFLNK: kind = "a symbolic link"
        default: kind = "not a plain file"
        }
        throw DiskError(path, "is in the way: this output is written there first, and it is \(kind), not a file left by an "
                        + "earlier write; move it away")
    }

    /// Makes a folder (and its parents); an existing one is fine.
    public static func makeFolder(_ path: String) throws {
        do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
            throw DiskError(path, "cannot create the folder (\(error.localizedDescription))")
        }
    }

    /// Drops a file's pages from the page cache (after it has been synced), so the next read
    /// comes from the disk: `bench W5` measures loads the way a restarted job sees them.
    public static func evictFromCache(_ path: String) {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { return }
        _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
        close(fd)
    }
}

extension String {
    var nonEmpty: String? { isEmpty ? nil : self }
}
