import CHDF5
import Errors
import Foundation

/// Direct access to the chunks of a sample file's `x` when it is stored as `convert` writes it
/// (`DirectChunks`: chunks of whole rows with the Fletcher32 filter alone): a chunk is read
/// from its address and its checksum checked, with no HDF5 call on the way but the first
/// lookup of its address. Reading a batch's rows through HDF5 costs a library call per run of
/// rows, which at two threads took 7–9% of the default job's step from the cores that compute it.
final class SampleChunks {
    let direct: DirectChunks
    var path: String { direct.path }
    let x: hid_t, space: hid_t
    var chunkRows: Int { direct.chunkRows }
    var rowBytes: Int { direct.rowBytes }
    var chunkBytes: Int { direct.chunkBytes }
    var chunks: Int { direct.chunks }
    /// Each chunk's address in the file, once looked up (-1 before).
    var addresses: [Int]
    /// The data set's index of this file's first sample, for messages.
    var firstSample = 0

    /// Nil when `x` is not stored that way, or holds float32 in another byte order than this
    /// CPU's (the caller then reads through HDF5, which converts).
    init?(path: String, x: hid_t, space: hid_t, shape: [Int], elementBytes: Int) throws {
        if elementBytes == 4 {
            let type = H5Handle(try HDF5Library.check(H5Dget_type(x), path, "the type of x"), close: H5Tclose)
            guard H5Tequal(type.id, sb_h5t_ieee_f32le()) > 0 else {
                H5Eclear2(sb_h5e_default())
                return nil
            }
        }
        guard let direct = try DirectChunks(path: path, dataset: x, name: "x", shape: shape, elementBytes: elementBytes) else { return nil }
        self.direct = direct
        self.x = x
        self.space = space
        addresses = [Int](repeating: -1, count: direct.chunks)
    }

    /// Reads chunk `c` (checksum last) into `buffer` (`chunkBytes + 4` bytes) and checks it.
    func read(_ c: Int, into buffer: UnsafeMutableRawPointer) throws {
        if addresses[c] < 0 { addresses[c] = try locate(c) }
        let first = c * chunkRows, last = min(first + chunkRows, direct.rows) - 1
        let samples = "samples \(firstSample + first)…\(firstSample + last) (rows \(first)…\(last) of x)"
        switch direct.read(at: addresses[c], into: buffer, checksumAfter: true) {
        case .good: return
        case .short: throw DataError(path, "\(samples): the file ends inside their chunk (truncated?)")
        case .damaged: throw DataError(path, "\(samples) fail their Fletcher32 checksum (the file is damaged)")
        }
    }

    /// The address of chunk `c`, looked up in the file's chunk index and checked against the file.
    func locate(_ c: Int) throws -> Int {
        let chunk = try direct.info(c, "locating chunk \(c) of x")
        guard direct.readable(chunk) else {
            throw DataError(path, chunk.address < 0 ? "chunk \(c) of x is not stored (truncated or damaged?)"
                            : "chunk \(c) of x holds \(chunk.size) bytes at byte \(chunk.address) of a \(direct.fileBytes)-byte file, "
                                + "expected \(chunkBytes + 4) (truncated or damaged?)")
        }
        return chunk.address
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
