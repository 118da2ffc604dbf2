import CZlib
import Errors
#if canImport(Glibc)
import Glibc
#endif

/// Sequential reads from a gzip file, or from a plain file (zlib passes those through).
final class GzipReader {
    let path: String
    private let file: gzFile

    init(path: String) throws {
        self.path = path
        guard let f = gzopen(path, "rb") else {
            throw DataError(path, "cannot open (\(systemMessage()))")
        }
        file = f
        gzbuffer(file, 1 << 20)
    }

    deinit { gzclose(file) }

    /// Whether the file is read as it is, not gzip (known once something has been read).
    var isPlain: Bool { gzdirect(file) != 0 }

    /// Reads up to `count` bytes; returns how many were read (fewer only at the end).
    func read(into buffer: UnsafeMutableRawPointer, count: Int) throws -> Int {
        var done = 0
        while done < count {
            let chunk = UInt32(min(count - done, 1 << 30))
            let n = gzread(file, buffer + done, chunk)
            if n < 0 {
                var code: Int32 = 0
                throw DataError(path, "corrupt or unreadable gzip data (\(String(cString: gzerror(file, &code))))")
            }
            if n == 0 { break }
            done += Int(n)
        }
        return done
    }

    func readExactly(_ count: Int, into buffer: UnsafeMutableRawPointer, what: String) throws {
        let n = try read(into: buffer, count: count)
        if n < count {
            throw DataError(path, "truncated: \(what) needs \(count) bytes, the file ends after \(n)")
        }
    }

    /// Exactly `count` bytes, read in pieces into a buffer that grows with what arrives, so a
    /// count taken from an untrusted header costs no more memory than the file has bytes.
    func readExactly(_ count: Int, what: String) throws -> [UInt8] {
        let piece = 1 << 22
        var out: [UInt8] = []
        out.reserveCapacity(min(count, piece))
        var buffer = [UInt8](repeating: 0, count: min(count, piece))
        while out.count < count {
            let want = min(piece, count - out.count)
            let n = try buffer.withUnsafeMutableBytes { try read(into: $0.baseAddress!, count: want) }
            out.append(contentsOf: buffer[0..<n])
            if n < want { throw DataError(path, "truncated: \(what) needs \(count) bytes, the file ends after \(out.count)") }
        }
        return out
    }

    /// True when no byte is left.
    func atEnd() throws -> Bool {
        var byte: UInt8 = 0
        return try read(into: &byte, count: 1) == 0
    }
}
