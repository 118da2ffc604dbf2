/// Reader for the IDX format of MNIST and Fashion-MNIST (LeCun et al.): a 4-byte magic
/// `00 00 <type> <ndims>`, `ndims` big-endian UInt32 dimensions, then the data row-major.
/// Only unsigned bytes (type 0x08) occur in these datasets and only those are accepted.
public enum IDXReader {
    /// The most elements a file may declare (guards allocations made from file contents).
    static let maxElements = 1 << 32

    /// Reads an unsigned-byte IDX file with exactly `dimensions` dimensions (gzip or plain).
    public static func read(_ path: String, dimensions: Int) throws -> (shape: [Int], bytes: [UInt8]) {
        let file = try GzipReader(path: path)
        let shape = try header(file, dimensions: dimensions)
        let total = shape.reduce(1, *)
        // Read as it arrives, never allocated from the header alone: a header may declare far
        // more than the file holds.
        let bytes = try file.readExactly(total, what: "data of shape \(shape.map(String.init).joined(separator: "×"))")
        guard try file.atEnd() else {
            throw DataError(path, "unexpected bytes after the \(total) data bytes of shape \(shape)")
        }
        return (shape, bytes)
    }

    /// Reads and checks the header of an unsigned-byte IDX file of `dimensions` dimensions,
    /// leaving `file` at the first data byte; returns the shape (its product bounded).
    static func header(_ file: GzipReader, dimensions: Int) throws -> [Int] {
        let path = file.path
        var header = [UInt8](repeating: 0, count: 4)
        try file.readExactly(4, into: &header, what: "the IDX header")
        guard header[0] == 0, header[1] == 0 else {
            throw DataError(path, "not an IDX file (magic bytes \(hex(header)), expected 00 00 08 0\(dimensions))")
        }
        guard header[2] == 0x08 else {
            throw DataError(path, "IDX element type 0x\(String(header[2], radix: 16)) is not supported (expected 0x08, unsigned byte)")
        }
        guard Int(header[3]) == dimensions else {
            throw DataError(path, "IDX file has \(header[3]) dimensions, expected \(dimensions)")
        }
        var raw = [UInt8](repeating: 0, count: 4 * dimensions)
        try file.readExactly(raw.count, into: &raw, what: "the IDX dimensions")
        var shape: [Int] = []
        var total = 1
        for d in 0..<dimensions {
            let v = Int(raw[4 * d]) << 24 | Int(raw[4 * d + 1]) << 16 | Int(raw[4 * d + 2]) << 8 | Int(raw[4 * d + 3])
            guard v > 0 else { throw DataError(path, "IDX dimension \(d) is 0") }
            guard v <= maxElements / total else { throw DataError(path, "IDX dimensions \(shape + [v]) are implausibly large") }
            total *= v
            shape.append(v)
        }
        return shape
    }

    static func hex(_ b: [UInt8]) -> String {
        b.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined(separator: " ")
    }
}
