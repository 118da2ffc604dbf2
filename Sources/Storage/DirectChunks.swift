import CHDF5
import Errors
import Foundation

/// The chunks of a dataset stored in chunks of whole rows with the Fletcher32 filter alone
/// (checkpoint tensors, `convert`'s samples), read around HDF5's filter pipeline: a chunk's
/// address comes from HDF5's chunk index (checked against the file by the caller, which knows
/// what to call it), its bytes and stored checksum by `pread`, and the checksum is verified
/// here. Sample input (`SampleChunks`, a chunk at a time into the chunk cache) and checkpoint
/// loading (`readTensor`, every chunk on the worker threads straight into the tensor) both
/// read through it. `read` may run on several threads at once.
final class DirectChunks: @unchecked Sendable {
    let path: String
    let fd: Int32
    let fileBytes: Int
    let dataset: hid_t
    let dims: Int
    /// Rows per chunk, bytes per row and per chunk (without its 4-byte checksum), rows in all.
    let chunkRows: Int, rowBytes: Int, chunkBytes: Int, rows: Int
    var chunks: Int { (rows + chunkRows - 1) / chunkRows }

    /// Nil when `dataset` is not stored in chunks of whole rows with the Fletcher32 filter alone.
    init?(path: String, dataset: hid_t, name: String, shape: [Int], elementBytes: Int) throws {
        guard let chunkRows = try HDF5File.wholeRowChunks(dataset, shape: shape, path: path, name: name) else { return nil }
        let fd = Glibc.open(path, O_RDONLY)
        guard fd >= 0 else { throw DataError(path, "cannot open the file (\(systemMessage()))") }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            Glibc.close(fd)
            throw DataError(path, "cannot stat the file")
        }
        self.path = path
        self.fd = fd
        self.dataset = dataset
        fileBytes = Int(info.st_size)
        dims = shape.count
        rows = shape[0]
        self.chunkRows = chunkRows
        rowBytes = shape.dropFirst().reduce(1, *) * elementBytes
        chunkBytes = chunkRows * rowBytes
    }

    deinit { Glibc.close(fd) }

    /// What HDF5's chunk index says of chunk `c`: its filter mask, where it lies and how many
    /// bytes it holds (an address of `haddr_t.max`: not stored).
    func info(_ c: Int, _ action: @autoclosure () -> String) throws -> (mask: UInt32, address: Int, size: Int) {
        var offset = [hsize_t](repeating: 0, count: dims)
        offset[0] = hsize_t(c * chunkRows)
        var mask: UInt32 = 0, address: haddr_t = 0, size: hsize_t = 0
        try HDF5Library.check(H5Dget_chunk_info_by_coord(dataset, offset, &mask, &address, &size), path, action())
        return (mask, address == haddr_t.max ? -1 : Int(address), Int(size))
    }

    /// The `i`-th entry of HDF5's chunk index (in storage order, a walk that is cheaper than a
    /// lookup per chunk when every chunk is read): which chunk it is (nil when its offset is
    /// not the start of a chunk of whole rows), and its mask, address and size as `info`.
    func info(entry i: Int, space: hid_t, _ action: @autoclosure () -> String) throws -> (chunk: Int?, mask: UInt32, address: Int, size: Int) {
        var offset = [hsize_t](repeating: 0, count: dims)
        var mask: UInt32 = 0, address: haddr_t = 0, size: hsize_t = 0
        try HDF5Library.check(H5Dget_chunk_info(dataset, space, hsize_t(i), &offset, &mask, &address, &size), path, action())
        let row = Int(offset[0])
        let whole = row % chunkRows == 0 && row / chunkRows < chunks && offset.dropFirst().allSatisfy { $0 == 0 }
        return (whole ? row / chunkRows : nil, mask, address == haddr_t.max ? -1 : Int(address), Int(size))
    }

    /// Whether a chunk of that index entry is one this reader can read: unfiltered but for
    /// its checksum, of the expected size, and inside the file.
    func readable(_ chunk: (mask: UInt32, address: Int, size: Int)) -> Bool {
        chunk.mask == 0 && chunk.size == chunkBytes + 4 && chunk.address >= 0 && chunk.address <= fileBytes
            && chunk.size <= fileBytes - chunk.address
    }

    /// How a chunk read ended.
    enum Read { case good(sum: UInt32), short, damaged }

    /// Reads the chunk at `address`: its `chunkBytes` into `target`, its stored checksum into
    /// `target + chunkBytes` when `checksumAfter` (a buffer of `chunkBytes + 4`, one read), or
    /// apart (`target` then holds the chunk alone, as a tensor's memory does); then verifies it.
    func read(at address: Int, into target: UnsafeMutableRawPointer, checksumAfter: Bool) -> Read {
        var stored: UInt32 = 0
        if checksumAfter {
            guard readFully(target, chunkBytes + 4, at: address) else { return .short }
            stored = target.loadUnaligned(fromByteOffset: chunkBytes, as: UInt32.self)
        } else {
            guard readFully(target, chunkBytes, at: address),
                  withUnsafeMutableBytes(of: &stored, { readFully($0.baseAddress!, 4, at: address + chunkBytes) }) else { return .short }
        }
        let sum = Fletcher32.checksum(target, bytes: chunkBytes)
        return sum == UInt32(littleEndian: stored) ? .good(sum: sum) : .damaged
    }

    private func readFully(_ buffer: UnsafeMutableRawPointer, _ count: Int, at offset: Int) -> Bool {
        var done = 0
        while done < count {
            let n = pread(fd, buffer + done, count - done, off_t(offset + done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }
}
