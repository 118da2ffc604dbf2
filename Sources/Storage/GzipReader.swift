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

    /// True when no byte is left.
    func atEnd() throws -> Bool {
        var byte: UInt8 = 0
        return try read(into: &byte, count: 1) == 0
    }
}
