import CHDF5
import Foundation

/// Training data in one HDF5 file or many (`HDF5Samples` each, with the same features): one
/// sample index space over them in file order, file f holding samples `[start[f],
/// start[f+1])`. Labels are held whole (4 bytes a sample); feature rows are read when asked,
/// so memory does not grow with the data.
public final class SampleFiles {
    public let files: [HDF5Samples]
    /// [F + 1] the first sample of each file, then the count.
    public let starts: [Int]
    public let width: Int
    public let labels: [Int32]
    public var count: Int { starts.last! }
    /// Chunks read directly, when every file's `x` is stored as `convert` writes it.
    let cache: ChunkCache?

    /// Bytes of chunks kept in memory between batches, over all the files together, whatever
    /// their number (`ChunkCache`, or HDF5's own caches shared out).
    static let cacheBudget = 64 << 20

    /// Opens `paths` in order, each with datasets `x` and `y`. A file that is missing,
    /// damaged, or whose features differ from the first file's is named with the samples it
    /// would hold.
    public init(paths: [String], x: String, y: String, classes: Int) throws {
        precondition(!paths.isEmpty)
        Self.allowOpenFiles(2 * paths.count + 256)
        let hdf5Cache = Self.cacheBudget / paths.count
        var files: [HDF5Samples] = [], starts = [0], labels: [Int32] = []
        for (f, path) in paths.enumerated() {
            let place = paths.count == 1 ? "" : "file \(f + 1) of \(paths.count), from sample \(starts[f])"
            let file: HDF5Samples
            do {
                file = try HDF5Samples(path: path, x: x, y: y, classes: classes, cacheBytes: hdf5Cache)
            } catch let e as DataError where !place.isEmpty {
                throw DataError(path, "(\(place)) \(e.problem)")
            }
            if let first = files.first, file.width != first.width || file.isBytes != first.isBytes {
                throw DataError(path, "(\(place)) has \(file.width) \(file.isBytes ? "uint8" : "float32") features per sample, "
                                + "\(first.path) \(first.width) \(first.isBytes ? "uint8" : "float32")")
            }
            files.append(file)
            labels += file.labels
            starts.append(starts[f] + file.count)
        }
        guard starts.last! < Int(Int32.max) else {
            throw DataError(paths[0], "the \(paths.count) files hold \(starts.last!) samples, more than this program handles")
        }
        self.files = files
        self.starts = starts
        self.labels = labels
        width = files[0].width
        let direct = files.compactMap(\.chunks)
        if direct.count == files.count {
            for (f, d) in direct.enumerated() { d.firstSample = starts[f] }
            cache = ChunkCache(budget: Self.cacheBudget, chunkBytes: direct.map(\.chunkBytes).max()!, chunks: direct.map(\.chunks))
        } else {
            cache = nil
        }
    }

    /// Reads the samples `indices` (any order) into `out` `[indices.count, width]` with
    /// `scratch`, in sample order: from their chunks (`SampleChunks`, through the chunk cache)
    /// where every file allows it, else each run of consecutive samples within a file in one
    /// HDF5 read. uint8 features are scaled to [0, 1], as IDX images are.
    public func read(_ indices: UnsafeBufferPointer<Int32>, into out: UnsafeMutablePointer<Float>, scratch: ReadScratch) throws {
        let n = indices.count
        precondition(n <= scratch.rows, "\(n) rows for read scratch of \(scratch.rows)")
        guard n > 0 else { return }
        let keys = scratch.keys
        for i in 0..<n { keys[i] = UInt64(UInt32(bitPattern: indices[i])) << 32 | UInt64(i) }
        heapSort(keys, count: n)
        if let cache { return try readChunks(keys, count: n, into: out, cache: cache) }
        let bytes = files[0].isBytes, w = width
        var i = 0
        while i < n {
            let first = Int(keys[i] >> 32)
            let (f, row) = locate(first)
            var run = 1
            while i + run < n, Int(keys[i + run] >> 32) == first + run, first + run < starts[f + 1] { run += 1 }
            let at = bytes ? UnsafeMutableRawPointer(scratch.bytes + i * w) : UnsafeMutableRawPointer(scratch.floats + i * w)
            do {
                try files[f].readRun(row, rows: run, into: at)
            } catch let e as HDF5Error {
                throw DataError(files[f].path, "samples \(first)…\(first + run - 1): \(e.failure)")
            }
            i += run
        }
        for i in 0..<n {
            let slot = Int(keys[i] & 0xffff_ffff), target = out + slot * w
            if bytes {
                let source = scratch.bytes + i * w
                for c in 0..<w { target[c] = Float(source[c]) * (1 / 255) }
            } else {
                target.update(from: scratch.floats + i * w, count: w)
            }
        }
    }

    /// The rows of the sorted `keys` (sample, slot) from their chunks, into their slots of `out`.
    func readChunks(_ keys: UnsafeMutablePointer<UInt64>, count n: Int, into out: UnsafeMutablePointer<Float>, cache: ChunkCache) throws {
        let bytes = files[0].isBytes, w = width
        for i in 0..<n {
            let (f, row) = locate(Int(keys[i] >> 32))
            let source = files[f].chunks!
            let chunk = try cache.chunk(row / source.chunkRows, of: f, from: source)
            let at = chunk + (row % source.chunkRows) * source.rowBytes
            let target = out + Int(keys[i] & 0xffff_ffff) * w
            if bytes {
                let p = at.assumingMemoryBound(to: UInt8.self)
                for c in 0..<w { target[c] = Float(p[c]) * (1 / 255) }
            } else {
                target.update(from: at.assumingMemoryBound(to: Float.self), count: w)
            }
        }
    }

    /// Each file is open twice (HDF5's handle, and the descriptor its chunks are read from):
    /// raises this process's soft limit on open files toward `count`, as far as the hard
    /// limit allows (the usual soft limit, 1024, would stop at about 500 files).
    static func allowOpenFiles(_ count: Int) {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < rlim_t(count) else { return }
        limit.rlim_cur = min(rlim_t(count), limit.rlim_max)
        _ = setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
    }

    /// The buffers a read of up to `rows` samples needs (rows as read only where they are
    /// read through HDF5).
    public func scratch(rows: Int) -> ReadScratch {
        ReadScratch(rows: rows, staging: cache == nil ? rows * width : 0, bytes: files[0].isBytes)
    }

    /// The file holding sample `i`, and the sample's row in it.
    func locate(_ i: Int) -> (file: Int, row: Int) {
        var lo = 0, hi = files.count - 1
        while lo < hi {
            let mid = (lo + hi + 1) / 2
            if starts[mid] <= i { lo = mid } else { hi = mid - 1 }
        }
        return (lo, i - starts[lo])
    }
}

/// The buffers one read of up to `rows` samples needs (`SampleFiles.scratch`): the sort keys
/// (sample, slot) and `staging` elements of rows as read, in sample order.
public final class ReadScratch {
    public let rows: Int
    let keys: UnsafeMutablePointer<UInt64>
    let bytes: UnsafeMutablePointer<UInt8>
    let floats: UnsafeMutablePointer<Float>

    init(rows: Int, staging: Int, bytes isBytes: Bool) {
        self.rows = rows
        keys = .allocate(capacity: max(rows, 1))
        bytes = .allocate(capacity: isBytes ? max(staging, 1) : 1)
        floats = .allocate(capacity: isBytes ? 1 : max(staging, 1))
    }

    deinit {
        keys.deallocate()
        bytes.deallocate()
        floats.deallocate()
    }
}

/// Sorts `count` keys ascending in place, without allocating.
func heapSort(_ a: UnsafeMutablePointer<UInt64>, count n: Int) {
    func sift(_ start: Int, _ end: Int) {
        var root = start
        while 2 * root + 1 < end {
            var child = 2 * root + 1
            if child + 1 < end && a[child] < a[child + 1] { child += 1 }
            guard a[root] < a[child] else { return }
            (a[root], a[child]) = (a[child], a[root])
            root = child
        }
    }
    guard n > 1 else { return }
    for start in stride(from: n / 2 - 1, through: 0, by: -1) { sift(start, n) }
    for end in stride(from: n - 1, to: 0, by: -1) {
        (a[0], a[end]) = (a[end], a[0])
        sift(0, end)
    }
}
