import CHDF5
import CZlib
import Errors
import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Kernels

/// Checkpoint tensors, written and read chunk by chunk around HDF5's filter pipeline, at disk
/// speed. The datasets are ordinary chunked float32 datasets with the `fletcher32` filter, so
/// h5py, `h5dump` and `HDF5File.readFloats` read them and verify every chunk as usual. This
/// program computes the Fletcher32 sums itself (`Fletcher32`, on the worker threads) and
/// hands HDF5 finished chunks (`H5Dwrite_chunk`); it reads through `DirectChunks`, as sample
/// input does: HDF5 says where each chunk lies (every address and size checked against the
/// file), and the chunks are `pread` on the worker threads straight into the tensor, each
/// sum verified. HDF5's own
/// pipeline checksums on one thread, well below the disk's read rate (`bench W5`).
///
/// A tensor's checksum, recorded in the manifest, is the CRC-32 of its chunks' Fletcher32
/// sums (little-endian, in chunk order): it changes with any chunk, and costs nothing more
/// than the chunks' own verification.
extension HDF5File {
    /// Writes `data` of `shape` as the dataset `name`; returns the tensor's checksum.
    public func writeTensor(_ name: String, shape: [Int], _ data: UnsafePointer<Float>) throws -> UInt32 {
        let (dataset, chunkRows) = try createDataset(name, shape: shape, type: sb_h5t_native_float(), elementBytes: 4)
        let layout = ChunkLayout(shape: shape, chunkRows: chunkRows)
        let sums = ChunkSums(data: UnsafeRawPointer(data), layout: layout)
        WorkerPool.shared.run(sums, count: layout.fullChunks, align: 1, minimum: 2)
        let staging = stagingBuffer(layout.chunkBytes + 4)
        var offset = [hsize_t](repeating: 0, count: shape.count)
        for c in 0..<layout.chunks {
            let valid = layout.validBytes(c)
            staging.copyMemory(from: UnsafeRawPointer(data) + c * layout.chunkBytes, byteCount: valid)
            if valid < layout.chunkBytes {
                // An edge chunk is stored whole; HDF5 pads it, and so do we, with zeros.
                (staging + valid).initializeMemory(as: UInt8.self, repeating: 0, count: layout.chunkBytes - valid)
                sums.results[c] = Fletcher32.checksum(staging, bytes: layout.chunkBytes)
            }
            (staging + layout.chunkBytes).storeBytes(of: sums.results[c].littleEndian, as: UInt32.self)
            offset[0] = hsize_t(c * chunkRows)
            try HDF5Library.check(H5Dwrite_chunk(dataset.id, sb_h5p_default(), 0, offset, layout.chunkBytes + 4, staging),
                                  path, "writing chunk \(c) of \(name)")
        }
        return sums.combined
    }

    /// Reads the dataset `name` of `shape` into `data`, verifying every chunk's Fletcher32;
    /// returns the tensor's checksum. The dataset must be laid out as `writeTensor` lays it.
    public func readTensor(_ name: String, shape: [Int], into data: UnsafeMutablePointer<Float>) throws -> UInt32 {
        func fail(_ problem: String) -> HDF5Error { HDF5Error(path: path, action: "reading \(name)", details: problem) }
        let found = try self.shape(of: name)
        guard found == shape else { throw fail("shape \(found), expected \(shape)") }
        let dataset = try openDataset(name)
        // What any HDF5 reader will convert from: float32, little-endian, as the chunks hold.
        let type = H5Handle(try HDF5Library.check(H5Dget_type(dataset.id), path, "the datatype of \(name)"), close: H5Tclose)
        guard H5Tequal(type.id, sb_h5t_ieee_f32le()) > 0 else {
            H5Eclear2(sb_h5e_default())
            throw fail("its datatype is not little-endian float32 (\(HDF5File.describe(type: type.id))): other HDF5 readers would convert the bytes")
        }
        let direct: DirectChunks?
        do { direct = try DirectChunks(path: path, dataset: dataset.id, name: name, shape: shape, elementBytes: 4) } catch let e as DataError {
            throw fail(e.problem)
        }
        guard let chunks = direct else {
            throw fail("not stored as checkpoint tensors are (chunks of whole rows with the fletcher32 filter alone)")
        }
        let layout = ChunkLayout(shape: shape, chunkRows: chunks.chunkRows)
        let space = H5Handle(try HDF5Library.check(H5Dget_space(dataset.id), path, "the shape of \(name)"), close: H5Sclose)
        var count: hsize_t = 0
        try HDF5Library.check(H5Dget_num_chunks(dataset.id, space.id, &count), path, "counting the chunks of \(name)")
        guard Int(count) == layout.chunks else { throw fail("\(count) chunks stored, \(layout.chunks) expected") }
        let reader = ChunkReader(chunks: chunks, data: UnsafeMutableRawPointer(data), layout: layout)
        for i in 0..<layout.chunks {
            let chunk = try chunks.info(entry: i, space: space.id, "locating chunk \(i) of \(name)")
            guard let c = chunk.chunk, reader.addresses[c] < 0 else { throw fail("chunk \(i) of the index is not a chunk of whole rows, or a second one") }
            guard chunk.address >= 0 else { throw fail("chunk \(c) of \(layout.chunks) is not stored") }
            guard chunk.mask == 0, chunk.size == layout.chunkBytes + 4 else { throw fail("chunk \(c) holds \(chunk.size) bytes, expected \(layout.chunkBytes + 4)") }
            guard chunks.readable((chunk.mask, chunk.address, chunk.size)) else {
                throw fail("chunk \(c) of \(chunk.size) bytes lies at byte \(chunk.address) of a \(chunks.fileBytes)-byte file (truncated?)")
            }
            reader.addresses[c] = chunk.address
        }
        // No read-ahead hint: WILLNEED and SEQUENTIAL on the tensor's extent both made loads
        // slower in `bench W5` (docs/BENCHMARKS.md).
        WorkerPool.shared.run(reader, count: min(WorkerPool.shared.threads, layout.chunks), align: 1, minimum: 2)
        for c in 0..<layout.chunks where reader.status[c] != 0 {
            throw fail(reader.status[c] == 1 ? "chunk \(c) of \(layout.chunks): short read"
                       : "chunk \(c) of \(layout.chunks) fails its Fletcher32 checksum (data error)")
        }
        return reader.sums.combined
    }
}

/// Chunks of whole rows; all full except perhaps the last.
extension HDF5File {
    /// Rows per chunk of `dataset` when it is stored in chunks of whole rows with the
    /// Fletcher32 filter alone (as checkpoint tensors and `convert`'s samples are), else nil.
    static func wholeRowChunks(_ dataset: hid_t, shape: [Int], path: String, name: String) throws -> Int? {
        let plist = H5Handle(try HDF5Library.check(H5Dget_create_plist(dataset), path, "properties of \(name)"), close: H5Pclose)
        var chunk = [hsize_t](repeating: 0, count: shape.count)
        guard H5Pget_layout(plist.id) == H5D_CHUNKED,
              H5Pget_chunk(plist.id, Int32(shape.count), &chunk) == Int32(shape.count),
              chunk.dropFirst().map({ Int($0) }) == Array(shape.dropFirst()), chunk[0] >= 1,
              H5Pget_nfilters(plist.id) == 1, H5Pget_filter_by_id2(plist.id, H5Z_FILTER_FLETCHER32, nil, nil, nil, 0, nil, nil) >= 0
        else {
            H5Eclear2(sb_h5e_default())
            return nil
        }
        return Int(chunk[0])
    }
}

struct ChunkLayout {
    let chunkRows: Int, rowBytes: Int, rows: Int
    let chunks: Int, fullChunks: Int, chunkBytes: Int
    init(shape: [Int], chunkRows: Int) {
        self.chunkRows = chunkRows
        rows = shape[0]
        rowBytes = shape.dropFirst().reduce(1, *) * 4
        chunks = (rows + chunkRows - 1) / chunkRows
        fullChunks = rows / chunkRows
        chunkBytes = chunkRows * rowBytes
    }
    /// Bytes of chunk c that hold data (less than `chunkBytes` for an edge chunk).
    func validBytes(_ c: Int) -> Int { min(chunkRows, rows - c * chunkRows) * rowBytes }
}

/// Fletcher32 of each full chunk, computed on the worker threads (a task per chunk: the pool's
/// default minimum of 64 K elements would keep a few large chunks on one thread).
final class ChunkSums: RangeTask, @unchecked Sendable {
    let data: UnsafeRawPointer, layout: ChunkLayout
    let results: UnsafeMutablePointer<UInt32>
    init(data: UnsafeRawPointer, layout: ChunkLayout) {
        self.data = data
        self.layout = layout
        results = .allocate(capacity: layout.chunks)
        results.initialize(repeating: 0, count: layout.chunks)
    }
    deinit { results.deallocate() }
    func run(_ part: Range<Int>) {
        for c in part { results[c] = Fletcher32.checksum(data + c * layout.chunkBytes, bytes: layout.chunkBytes) }
    }
    /// CRC-32 of the sums, little-endian, in chunk order.
    var combined: UInt32 {
        var crc: uLong = 0
        for c in 0..<layout.chunks {
            var le = results[c].littleEndian
            crc = withUnsafeBytes(of: &le) { crc32(crc, $0.baseAddress!.assumingMemoryBound(to: UInt8.self), 4) }
        }
        return UInt32(crc)
    }
}

/// Reads chunks on the worker threads (`DirectChunks`), straight into the tensor, each one's
/// stored Fletcher32 checked.
final class ChunkReader: RangeTask, @unchecked Sendable {
    let chunks: DirectChunks, data: UnsafeMutableRawPointer, layout: ChunkLayout
    var addresses: [Int]
    let sums: ChunkSums
    /// Per chunk: 0 good, 1 short read, 2 checksum mismatch.
    let status: UnsafeMutablePointer<Int8>
    init(chunks: DirectChunks, data: UnsafeMutableRawPointer, layout: ChunkLayout) {
        self.chunks = chunks
        self.data = data
        self.layout = layout
        addresses = [Int](repeating: -1, count: layout.chunks)
        sums = ChunkSums(data: data, layout: layout)
        status = .allocate(capacity: layout.chunks)
        status.initialize(repeating: 0, count: layout.chunks)
    }
    deinit { status.deallocate() }

    /// Thread t takes chunks t, t + T, …: together the threads read the file in order.
    func run(_ part: Range<Int>) {
        let stride = min(WorkerPool.shared.threads, layout.chunks)
        for t in part { for c in Swift.stride(from: t, to: layout.chunks, by: stride) { read(c) } }
    }

    /// Reads chunk c into the tensor (an edge chunk through a buffer of its own) and checks it.
    func read(_ c: Int) {
        let valid = layout.validBytes(c)
        let edge = valid < layout.chunkBytes
        let target = edge ? UnsafeMutableRawPointer.allocate(byteCount: layout.chunkBytes, alignment: 64) : data + c * layout.chunkBytes
        defer { if edge { target.deallocate() } }
        let address = addresses.withUnsafeBufferPointer { $0[c] }
        switch chunks.read(at: address, into: target, checksumAfter: false) {
        case .good(let sum): sums.results[c] = sum
        case .short: status[c] = 1; return
        case .damaged: status[c] = 2
        }
        if edge { (data + c * layout.chunkBytes).copyMemory(from: target, byteCount: valid) }
    }
}
