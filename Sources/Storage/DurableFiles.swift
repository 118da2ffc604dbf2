import CZlib
import Foundation
import Kernels

/// A file or folder that could not be written, read or moved.
public struct DiskError: Error, CustomStringConvertible {
    public let path: String, problem: String
    public init(_ path: String, _ problem: String) { self.path = path; self.problem = problem }
    public var description: String { "\(path): \(problem)" }
}

/// The file-system steps of a crash-safe commit: data reaches the disk (`fsync`) before the
/// name that makes it visible does (`rename`, then `fsync` of the folder holding the name).
public enum DurableFiles {
    /// Flushes a file's or folder's contents and metadata to the disk.
    public static func sync(_ path: String) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw DiskError(path, "cannot open to sync (\(lastError))") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw DiskError(path, "fsync failed (\(lastError))") }
    }

    /// Renames `from` to `to` (same file system, atomic), then syncs the folder holding both.
    public static func rename(_ from: String, _ to: String) throws {
        guard Foundation.rename(from, to) == 0 else { throw DiskError(from, "cannot rename to \(to) (\(lastError))") }
        try sync((to as NSString).deletingLastPathComponent.nonEmpty ?? ".")
    }

    /// Removes a file or folder tree; a missing one is not an error.
    public static func remove(_ path: String) throws {
        guard FileManager.default.fileExists(atPath: path) else { return }
        do { try FileManager.default.removeItem(atPath: path) } catch {
            throw DiskError(path, "cannot remove (\(error.localizedDescription))")
        }
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

    static var lastError: String { String(cString: strerror(errno)) }
}

extension String {
    var nonEmpty: String? { isEmpty ? nil : self }
}

/// CRC-32 (zlib's, the one `zlib.crc32` in Python computes) of a tensor's bytes, recorded in
/// the checkpoint manifest so a shard that does not belong to it is caught. Computed in
/// pieces on the worker threads and combined (`crc32_combine`).
public enum CRC32 {
    public static func of(_ data: UnsafeRawPointer, bytes: Int) -> UInt32 {
        let piece = 4 << 20
        guard bytes > 2 * piece else { return UInt32(crc32(0, data.assumingMemoryBound(to: UInt8.self), UInt32(bytes))) }
        let task = PieceTask(data: data.assumingMemoryBound(to: UInt8.self), bytes: bytes, piece: piece)
        WorkerPool.shared.run(task, count: task.pieces)
        var crc = task.results[0]
        for i in 1..<task.pieces {
            let length = min(piece, bytes - i * piece)
            crc = crc32_combine(crc, task.results[i], off_t(length))
        }
        return UInt32(crc)
    }

    /// CRCs of consecutive pieces, one slot per piece.
    final class PieceTask: RangeTask, @unchecked Sendable {
        let data: UnsafePointer<UInt8>, bytes: Int, piece: Int, pieces: Int
        /// One slot per piece, written by whichever thread takes it.
        let results: UnsafeMutablePointer<uLong>
        init(data: UnsafePointer<UInt8>, bytes: Int, piece: Int) {
            self.data = data
            self.bytes = bytes
            self.piece = piece
            pieces = (bytes + piece - 1) / piece
            results = .allocate(capacity: pieces)
        }
        deinit { results.deallocate() }
        func run(_ part: Range<Int>) {
            for i in part {
                results[i] = crc32(0, data + i * piece, UInt32(min(piece, bytes - i * piece)))
            }
        }
    }
}
