import Kernels

/// A labelled classification dataset: labels `[count]` in memory, and features `[count,
/// width]` as Float either in memory (IDX) or read from HDF5 files a batch at a time, the
/// next batch's rows read ahead on a thread of their own (`prefetch`).
public final class Dataset {
    /// The features held in memory (empty when they are read from `samples`).
    public let features: Tensor
    public let labels: [Int32]
    public let classes: Int
    /// The HDF5 files rows are read from, batch by batch.
    let samples: SampleFiles?
    /// The buffers of a read on the caller's thread (made for the largest one so far).
    var scratch: ReadScratch?
    /// Reads ahead (`preparePrefetch`).
    var prefetcher: RowPrefetcher?
    var waited = Duration.zero
    /// Gathers served from rows read ahead.
    public private(set) var gathersReadAhead = 0
    public var count: Int { labels.count }
    public let width: Int

    /// Bytes this dataset holds in memory: its labels, and its features when they came from
    /// IDX (HDF5 features stay on disk, but for the chunks kept between batches).
    public var heldBytes: Int { labels.count * 4 + features.count * 4 + (samples?.cache.map { $0.slots * $0.slotBytes } ?? 0) }
    /// Bytes it needed besides while it was read: the IDX bytes the features were made from.
    public var loadingBytes: Int { samples == nil ? features.count : 0 }

    /// Whether `prefetch` reads ahead: HDF5 data with `preparePrefetch` done.
    public var prefetches: Bool { prefetcher != nil }

    /// Reads ahead from now on, up to `rows` samples a gather, where that helps and is safe:
    /// HDF5 data and a thread-safe HDF5 library.
    public func preparePrefetch(rows: Int) {
        guard let samples, RowPrefetcher.isAvailable, (prefetcher?.rows ?? -1) < rows else { return }
        prefetcher?.close()
        prefetcher = RowPrefetcher(samples, rows: rows)
    }

    /// Starts reading the samples `indices` (at most the prepared rows) for the next gather.
    public func prefetch(_ indices: UnsafeBufferPointer<Int32>) { prefetcher?.start(indices) }

    /// The time gathers of HDF5 rows waited since the last call, for rows read ahead or read
    /// then (zero for data in memory).
    public func takeInputWait() -> Duration {
        defer { waited = .zero }
        return waited
    }

    public init(features: Tensor, labels: [Int32], classes: Int) {
        precondition(features.rows == labels.count)
        self.features = features
        self.labels = labels
        self.classes = classes
        width = features.cols
        samples = nil
    }

    /// HDF5 training data (`SampleFiles`): datasets `x` and `y` of the files at `paths`, their
    /// samples one after another.
    public init(hdf5 paths: [String], x: String, y: String, classes: Int) throws {
        let samples = try SampleFiles(paths: paths, x: x, y: y, classes: classes)
        self.samples = samples
        labels = samples.labels
        width = samples.width
        features = Tensor(shape: [0, samples.width])
        self.classes = classes
    }

    /// Image/label IDX files: images `[N, H, W]` scaled to [0, 1] and flattened, labels `[N]`.
    /// Checks that the counts agree and that every label is below `classes`.
    public static func idx(images: String, labels: String, classes: Int) throws -> Dataset {
        let (ishape, pixels) = try IDXReader.read(images, dimensions: 3)
        let (lshape, raw) = try IDXReader.read(labels, dimensions: 1)
        guard ishape[0] == lshape[0] else {
            throw DataError(labels, "has \(lshape[0]) labels but \(images) has \(ishape[0]) images")
        }
        if let bad = raw.firstIndex(where: { Int($0) >= classes }) {
            throw DataError(labels, "label \(raw[bad]) at index \(bad) is not below the \(classes) classes")
        }
        let n = ishape[0], width = ishape[1] * ishape[2]
        let x = Tensor(shape: [n, width])
        let scale: Float = 1 / 255
        pixels.withUnsafeBufferPointer { p in
            for i in 0..<n * width { x.data[i] = Float(p[i]) * scale }
        }
        return Dataset(features: x, labels: raw.map { Int32($0) }, classes: classes)
    }

    deinit { prefetcher?.close() }

    /// Copies the samples at `indices` into `x` `[indices.count, width]` and `y`: from memory,
    /// from the rows read ahead for exactly these samples, or read now.
    @inline(__always)
    public func gather(_ indices: UnsafeBufferPointer<Int32>, into x: UnsafeMutablePointer<Float>,
                       labels y: UnsafeMutablePointer<Int32>) throws {
        for (row, i) in indices.enumerated() { y[row] = labels[Int(i)] }
        if let samples {
            // Time the step waited for its rows: a read ahead not yet done, or a read now.
            let t0 = ContinuousClock.now
            defer { waited += t0.duration(to: .now) }
            if let prefetcher, try prefetcher.take(indices, into: x) {
                gathersReadAhead += 1
                return
            }
            if (scratch?.rows ?? -1) < indices.count { scratch = samples.scratch(rows: indices.count) }
            return try samples.read(indices, into: x, scratch: scratch!)
        }
        let w = width
        for (row, i) in indices.enumerated() { (x + row * w).update(from: features.data + Int(i) * w, count: w) }
    }
}
