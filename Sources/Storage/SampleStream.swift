import Errors
import Foundation

/// Samples to run a model on, read in order a batch at a time, so that memory does not grow
/// with their number: an IDX image file (gzip or plain; pixels scaled to [0, 1] as for
/// training) or an HDF5 file with a dataset `x` ([N, …] float32 or uint8, as `HDF5Samples`).
/// The kind is told by the file's first bytes.
public final class SampleStream {
    public let path: String
    public let count: Int
    public let width: Int
    private var next = 0
    private let idx: GzipReader?
    private let hdf5: HDF5Samples?
    private var bytes: [UInt8] = []
    private var indices: [Int32] = []

    /// The eight bytes every HDF5 file starts with (at offset 0 when it has no user block).
    static let hdf5Signature: [UInt8] = [0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a]

    public init(_ path: String, x: String = "x") throws {
        self.path = path
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw DataError(path, FileManager.default.fileExists(atPath: path) ? "cannot open (\(systemMessage()))" : "no such file")
        }
        let head = [UInt8]((try? handle.read(upToCount: 8)) ?? Data())
        try? handle.close()
        if head == Self.hdf5Signature {
            let samples = try HDF5Samples(path: path, x: x, y: nil, classes: 1)
            hdf5 = samples
            idx = nil
            count = samples.count
            width = samples.width
        } else {
            let reader = try GzipReader(path: path)
            let shape = try IDXReader.header(reader, dimensions: 3)
            idx = reader
            hdf5 = nil
            count = shape[0]
            width = shape[1] * shape[2]
            // A plain file's size says now whether it holds what its header declares, before
            // anything is predicted or written (a pipe's is read as it comes).
            var info = stat()
            if reader.isPlain, stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG {
                let header = 16, data = Int(info.st_size) - header
                if data < count * width {
                    throw DataError(path, "truncated: its header declares \(count) images of \(width) bytes (\(count * width) bytes), "
                                    + "the file holds \(data)")
                }
                if data > count * width { throw DataError(path, "unexpected bytes after the \(count) images") }
            }
        }
    }

    /// Reads the next `rows` samples into `out` `[rows, width]`; fewer at the end (returns how
    /// many). After the last sample, an IDX file must end.
    public func read(_ rows: Int, into out: UnsafeMutablePointer<Float>) throws -> Int {
        let n = min(rows, count - next)
        guard n > 0 else { return 0 }
        if let idx {
            if bytes.count < n * width { bytes = [UInt8](repeating: 0, count: n * width) }
            try bytes.withUnsafeMutableBytes {
                try idx.readExactly(n * width, into: $0.baseAddress!,
                                    what: "images \(next)…\(next + n - 1) (\(width) bytes each, of the \(count) its header declares)")
            }
            for i in 0..<(n * width) { out[i] = Float(bytes[i]) * (1 / 255) }
            if next + n == count, try !idx.atEnd() {
                throw DataError(path, "unexpected bytes after the \(count) images")
            }
        } else if let hdf5 {
            if indices.count < n { indices = [Int32](repeating: 0, count: n) }
            for i in 0..<n { indices[i] = Int32(next + i) }
            try indices.withUnsafeBufferPointer { try hdf5.read(UnsafeBufferPointer(rebasing: $0[0..<n]), into: out) }
        }
        next += n
        return n
    }
}
