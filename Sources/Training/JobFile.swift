import Foundation

/// Reading a job file as text. The TOML parser reads a C string, so everything after a NUL
/// byte would be silently lost, and TOML allows no control character but tab and line ends
/// anyway: a job file must be UTF-8 text without control bytes (tab, line feed and carriage
/// return aside). Anything else is refused, naming the byte offset, before the parser sees it.
public enum JobFile {
    /// Far above any job file, far below harm.
    public static let maxBytes = 1 << 20

    /// The text of the job file at `path`.
    public static func read(_ path: String) throws -> String {
        var isFolder: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isFolder) else {
            throw ConfigError("\(path): cannot read the job file (no such file)")
        }
        guard !isFolder.boolValue else { throw ConfigError("\(path): cannot read the job file (it is a folder)") }
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw ConfigError("\(path): cannot read the job file (unreadable)")
        }
        defer { try? handle.close() }
        let bytes: Data
        do { bytes = try handle.read(upToCount: maxBytes + 1) ?? Data() } catch {
            throw ConfigError("\(path): cannot read the job file (\(error.localizedDescription))")
        }
        guard bytes.count <= maxBytes else {
            throw ConfigError("\(path): the job file is larger than \(maxBytes / 1024) KiB; a job file is a short text")
        }
        return try text(Array(bytes), source: path)
    }

    /// `bytes` as text, or an error naming the first byte that is not allowed.
    public static func text(_ bytes: [UInt8], source: String) throws -> String {
        var line = 1, lineStart = 0
        for (offset, byte) in bytes.enumerated() {
            if byte == 0x0A { line += 1; lineStart = offset + 1; continue }
            if byte < 0x20 && byte != 0x09 && byte != 0x0D || byte == 0x7F {
                throw ConfigError("\(source): byte offset \(offset) (line \(line), column \(offset - lineStart + 1)) is the control "
                                  + "character \(String(format: "0x%02X", byte))\(byte == 0 ? " (NUL)" : ""); a job file must be text")
            }
        }
        if let offset = firstInvalidUTF8(bytes) {
            throw ConfigError("\(source): byte offset \(offset) is not UTF-8 text (0x\(String(format: "%02X", bytes[offset])))")
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The offset of the first byte that does not begin a valid UTF-8 sequence, or nil.
    static func firstInvalidUTF8(_ bytes: [UInt8]) -> Int? {
        var parser = Unicode.UTF8.ForwardParser()
        var input = bytes.makeIterator()
        var offset = 0
        while true {
            switch parser.parseScalar(from: &input) {
            case .valid(let scalar): offset += scalar.count
            case .error: return offset
            case .emptyInput: return nil
            }
        }
    }
}
