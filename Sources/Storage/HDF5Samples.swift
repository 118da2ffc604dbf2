import CHDF5
import Foundation

/// Training data in HDF5: a dataset `x` (float32 or uint8, `[N, …]`, each sample flattened to
/// a row) and a dataset `y` (integer labels `[N]`). Labels are read whole at open (they are
/// small, and every one is checked against the classes); feature rows are read when a batch
/// needs them, only the rows this rank takes, so no rank holds more of `x` than its batch.
/// uint8 features are scaled to [0, 1], as IDX images are.
public final class HDF5Samples {
    public let path: String
    public let name: String
    public let count: Int
    public let width: Int
    public let labels: [Int32]
    let file: HDF5File
    let x: H5Handle
    let fileSpace: H5Handle
    let isBytes: Bool
    /// The shape of `x` in the file.
    let dims: [hsize_t]
    /// Direct chunk reads of `x`, where it is stored as `convert` writes it.
    let chunks: SampleChunks?
    /// One row in memory, and a uint8 row as read.
    var rowSpace: H5Handle?
    var staging: [UInt8] = []

    /// `y`: the labels' dataset, or nil for features alone (`labels` is then empty).
    /// `cacheBytes`: the chunk cache of `x` (chunks of rows stay once a read has needed them).
    public init(path: String, x xName: String, y yName: String?, classes: Int, cacheBytes: Int = 32 << 20) throws {
        self.path = path
        func fail(_ problem: String) -> DataError { DataError(path, problem) }
        guard FileManager.default.fileExists(atPath: path) else { throw fail("no such file") }
        do {
            file = try HDF5File.open(path)
            let shape = try file.shape(of: xName)
            guard shape.count >= 2, shape.allSatisfy({ $0 > 0 }) else {
                throw fail("dataset \(xName) has shape \(shape); expected [samples, features…]")
            }
            x = try file.openDataset(xName, cacheBytes: cacheBytes)
            let type = H5Handle(try HDF5Library.check(H5Dget_type(x.id), path, "the type of \(xName)"), close: H5Tclose)
            let cls = H5Tget_class(type.id), size = H5Tget_size(type.id)
            if cls == H5T_INTEGER && size == 1 && H5Tget_sign(type.id) == H5T_SGN_NONE {
                isBytes = true
            } else if cls == H5T_FLOAT && size == 4 {
                isBytes = false
            } else {
                throw fail("dataset \(xName) must hold float32 or uint8 features")
            }
            // Dimensions from the file's metadata: bounded before any product or allocation.
            guard shape[0] < Int(Int32.max), shape.dropFirst().allSatisfy({ $0 <= 1 << 26 }) else {
                throw fail("dataset \(xName) has shape \(shape), more than this program handles")
            }
            count = shape[0]
            width = shape.dropFirst().reduce(1) { $0.multipliedReportingOverflow(by: $1).overflow ? Int.max : $0 * $1 }
            guard width <= 1 << 26 else { throw fail("dataset \(xName) has \(width) features per sample, more than this program handles") }
            fileSpace = H5Handle(try HDF5Library.check(H5Dget_space(x.id), path, "the shape of \(xName)"), close: H5Sclose)
            dims = shape.map { hsize_t($0) }
            chunks = try SampleChunks(path: path, x: x.id, space: fileSpace.id, shape: shape, elementBytes: isBytes ? 1 : 4)

            name = xName
            guard let yName else {
                labels = []
                return
            }
            let yShape = try file.shape(of: yName)
            guard yShape == [count] else { throw fail("dataset \(yName) has shape \(yShape); expected [\(count)], one label per sample of \(xName)") }
            let y = try file.openDataset(yName)
            let yType = H5Handle(try HDF5Library.check(H5Dget_type(y.id), path, "the type of \(yName)"), close: H5Tclose)
            guard H5Tget_class(yType.id) == H5T_INTEGER else { throw fail("dataset \(yName) must hold integer labels") }
            // The labels are read whole: their count must be backed by bytes in the file (a
            // chunked dataset may declare any size; allow for compression up to 64:1).
            let stored = Double(H5Dget_storage_size(y.id))
            guard Double(count) <= 64 * stored + 4096 else {
                throw fail("dataset \(yName) declares \(count) labels but stores \(Int(stored)) bytes")
            }
            var labels = [Int32](repeating: 0, count: count)
            try HDF5Library.check(H5Dread(y.id, sb_h5t_native_int32(), sb_h5s_all(), sb_h5s_all(), sb_h5p_default(), &labels),
                                  path, "reading \(yName)")
            if let bad = labels.firstIndex(where: { $0 < 0 || Int($0) >= classes }) {
                throw fail("label \(labels[bad]) at index \(bad) of \(yName) is not in 0..<\(classes)")
            }
            self.labels = labels
        } catch let e as HDF5Error {
            throw fail(e.failure)
        }
    }

    /// Reads rows `[first, first + rows)` as they are stored (uint8 or float32) into `out`, in
    /// one read.
    func readRun(_ first: Int, rows: Int, into out: UnsafeMutableRawPointer) throws {
        var start = [hsize_t](repeating: 0, count: dims.count), block = dims
        start[0] = hsize_t(first)
        block[0] = hsize_t(rows)
        let ones = [hsize_t](repeating: 1, count: dims.count)
        try HDF5Library.check(H5Sselect_hyperslab(fileSpace.id, H5S_SELECT_SET, start, nil, ones, block), path, "selecting rows")
        let memory = H5Handle(try HDF5Library.check(H5Screate_simple(1, [hsize_t(rows * width)], nil), path, "a buffer of rows"),
                              close: H5Sclose)
        try HDF5Library.check(H5Dread(x.id, isBytes ? sb_h5t_native_uint8() : sb_h5t_native_float(), memory.id, fileSpace.id,
                                      sb_h5p_default(), out),
                              path, "reading rows \(first)…\(first + rows - 1) of \(name)")
    }

    /// Reads the rows `indices` (any order; each below `count`) into `out` `[indices.count, width]`.
    /// One read per row: measured faster than one read of a selection of all rows, whose
    /// span tree HDF5 walks at length.
    public func read(_ indices: UnsafeBufferPointer<Int32>, into out: UnsafeMutablePointer<Float>) throws {
        guard !indices.isEmpty else { return }
        if rowSpace == nil {
            rowSpace = H5Handle(try HDF5Library.check(H5Screate_simple(1, [hsize_t(width)], nil), path, "a row buffer"), close: H5Sclose)
            staging = [UInt8](repeating: 0, count: width)
        }
        var start = [hsize_t](repeating: 0, count: dims.count), block = dims
        block[0] = 1
        let ones = [hsize_t](repeating: 1, count: dims.count)
        for (slot, row) in indices.enumerated() {
            start[0] = hsize_t(row)
            try HDF5Library.check(H5Sselect_hyperslab(fileSpace.id, H5S_SELECT_SET, start, nil, ones, block), path, "selecting a row")
            let target = out + slot * width
            if isBytes {
                try staging.withUnsafeMutableBytes { buffer in
                    try HDF5Library.check(H5Dread(x.id, sb_h5t_native_uint8(), rowSpace!.id, fileSpace.id, sb_h5p_default(), buffer.baseAddress!),
                                          path, "reading row \(row) of \(name)")
                    let source = buffer.baseAddress!.assumingMemoryBound(to: UInt8.self)
                    for c in 0..<width { target[c] = Float(source[c]) * (1 / 255) }
                }
            } else {
                try HDF5Library.check(H5Dread(x.id, sb_h5t_native_float(), rowSpace!.id, fileSpace.id, sb_h5p_default(), target),
                                      path, "reading row \(row) of \(name)")
            }
        }
    }
}
