import CHDF5
import Errors
import Foundation

/// Direct access to the chunks of a sample file's `x` when it is stored as `convert` writes it
/// (chunks of whole rows with the Fletcher32 filter alone): a chunk is `pread` from its
/// address and its checksum checked here, with no HDF5 call on the way but the first lookup
/// of its address. Reading a batch's rows through HDF5 costs a library call per run of rows,
/// which at two threads took 7–9% of the default job's step from the cores that compute it.
final class SampleChunks {
    let path: String
    let fd: Int32
    let fileBytes: Int
    let x: hid_t, space: hid_t
    /// Rows per chunk, bytes per row and per chunk (without the 4-byte checksum), rows in all.
    let chunkRows: Int, rowBytes: Int, chunkBytes: Int, rows: Int
    var chunks: Int { (rows + chunkRows - 1) / chunkRows }
    /// Each chunk's address in the file, once looked up (-1 before).
    var addresses: [Int]
    let dims: Int
    /// The data set's index of this file's first sample, for messages.
    var firstSample = 0

    /// Nil when `x` is not stored that way, or holds float32 in another byte order than this
    /// CPU's (the caller then reads through HDF5, which converts).
    init?(path: String, x: hid_t, space: hid_t, shape: [Int], elementBytes: Int) throws {
        guard let chunkRows = try HDF5File.wholeRowChunks(x, shape: shape, path: path, name: "x") else { return nil }
        if elementBytes == 4 {
            let type = H5Handle(try HDF5Library.check(H5Dget_type(x), path, "the type of x"), close: H5Tclose)
            guard H5Tequal(type.id, sb_h5t_ieee_f32le()) > 0 else {
                H5Eclear2(sb_h5e_default())
                return nil
            }
        }
        let fd = Glibc.open(path, O_RDONLY)
        guard fd >= 0 else { throw DataError(path, "cannot open the file (\(systemMessage()))") }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            Glibc.close(fd)
            throw DataError(path, "cannot stat the file")
        }
        self.path = path
        self.fd = fd
        self.x = x
        self.space = space
        fileBytes = Int(info.st_size)
        dims = shape.count
        rows = shape[0]
        self.chunkRows = chunkRows
        rowBytes = shape.dropFirst().reduce(1, *) * elementBytes
        chunkBytes = chunkRows * rowBytes
        addresses = [Int](repeating: -1, count: (shape[0] + chunkRows - 1) / chunkRows)
    }

    deinit { Glibc.close(fd) }

    /// Reads chunk `c` (checksum last) into `buffer` (`chunkBytes + 4` bytes) and checks it.
    func read(_ c: Int, into buffer: UnsafeMutableRawPointer) throws {
        if addresses[c] < 0 { addresses[c] = try locate(c) }
        let first = c * chunkRows, last = min(first + chunkRows, rows) - 1
        let samples = "samples \(firstSample + first)…\(firstSample + last) (rows \(first)…\(last) of x)"
        var done = 0
        while done < chunkBytes + 4 {
            let n = pread(fd, buffer + done, chunkBytes + 4 - done, off_t(addresses[c] + done))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw DataError(path, "\(samples): the file ends inside their chunk (truncated?)") }
            done += n
        }
        let stored = buffer.loadUnaligned(fromByteOffset: chunkBytes, as: UInt32.self)
        guard Fletcher32.checksum(buffer, bytes: chunkBytes) == UInt32(littleEndian: stored) else {
            throw DataError(path, "\(samples) fail their Fletcher32 checksum (the file is damaged)")
        }
    }

    /// The address of chunk `c`, looked up in the file's chunk index and checked against the file.
    func locate(_ c: Int) throws -> Int {
        var offset = [hsize_t](repeating: 0, count: dims)
        offset[0] = hsize_t(c * chunkRows)
        var mask: UInt32 = 0, address: haddr_t = 0, size: hsize_t = 0
        try HDF5Library.check(H5Dget_chunk_info_by_coord(x, offset, &mask, &address, &size), path, "locating chunk \(c) of x")
        guard mask == 0, Int(size) == chunkBytes + 4, address != haddr_t.max,
              Int(address) + Int(size) <= fileBytes else {
            throw DataError(path, "chunk \(c) of x holds \(size) bytes at byte \(address) of a \(fileBytes)-byte file, "
                            + "expected \(chunkBytes + 4) (truncated or damaged?)")
        }
        return Int(address)
    }
}

/// Chunks read by `SampleChunks`, kept up to a byte budget over all the files of a data set,
/// the least recently used given up first. Made once; reading allocates nothing.
final class ChunkCache {
    let slotBytes: Int, slots: Int
    let memory: UnsafeMutableRawPointer
    /// Per slot: the chunk it holds (file, chunk) as one key, -1 for none, and when last used.
    var held: [Int]
    var used: [UInt64]
    var clock: UInt64 = 0
    /// Per file, its chunks' slots (-1: not held).
    var slotOf: [[Int32]]

    init(budget: Int, chunkBytes: Int, chunks: [Int]) {
        slotBytes = chunkBytes + 4
        slots = max(1, min(budget / slotBytes, chunks.reduce(0, +)))
        memory = .allocate(byteCount: slots * slotBytes, alignment: 64)
        held = [Int](repeating: -1, count: slots)
        used = [UInt64](repeating: 0, count: slots)
        slotOf = chunks.map { [Int32](repeating: -1, count: $0) }
    }

    deinit { memory.deallocate() }

    /// Chunk `c` of file `f` (`source`), read now unless it is held.
    func chunk(_ c: Int, of f: Int, from source: SampleChunks) throws -> UnsafeRawPointer {
        clock += 1
        if slotOf[f][c] >= 0 {
            let s = Int(slotOf[f][c])
            used[s] = clock
            return UnsafeRawPointer(memory + s * slotBytes)
        }
        var s = 0
        for i in 1..<slots where used[i] < used[s] { s = i }
        if held[s] >= 0 { slotOf[held[s] >> 32][held[s] & 0xffff_ffff] = -1 }
        held[s] = -1
        try source.read(c, into: memory + s * slotBytes)
        held[s] = f << 32 | c
        used[s] = clock
        slotOf[f][c] = Int32(s)
        return UnsafeRawPointer(memory + s * slotBytes)
    }
}
