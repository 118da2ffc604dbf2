import Kernels

/// A labelled classification dataset: labels `[count]` in memory, and features `[count,
/// width]` as Float either in memory (IDX) or read from an HDF5 file a batch at a time.
public final class Dataset {
    /// The features held in memory (empty when they are read from `samples`).
    public let features: Tensor
    public let labels: [Int32]
    public let classes: Int
    /// The HDF5 file rows are read from, batch by batch.
    let samples: HDF5Samples?
    public var count: Int { labels.count }
    public let width: Int

    /// Bytes this dataset holds in memory: its labels, and its features when they came from
    /// IDX (HDF5 features stay on disk).
    public var heldBytes: Int { labels.count * 4 + features.count * 4 }
    /// Bytes it needed besides while it was read: the IDX bytes the features were made from.
    public var loadingBytes: Int { samples == nil ? features.count : 0 }

    public init(features: Tensor, labels: [Int32], classes: Int) {
        precondition(features.rows == labels.count)
        self.features = features
        self.labels = labels
        self.classes = classes
        width = features.cols
        samples = nil
    }

    /// HDF5 training data (`HDF5Samples`): datasets `x` and `y` of the file at `path`.
    public init(hdf5 path: String, x: String, y: String, classes: Int) throws {
        let samples = try HDF5Samples(path: path, x: x, y: y, classes: classes)
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

    /// Copies the samples at `indices` into `x` `[indices.count, width]` and `y`.
    @inline(__always)
    public func gather(_ indices: UnsafeBufferPointer<Int32>, into x: UnsafeMutablePointer<Float>,
                       labels y: UnsafeMutablePointer<Int32>) throws {
        for (row, i) in indices.enumerated() { y[row] = labels[Int(i)] }
        if let samples { return try samples.read(indices, into: x) }
        let w = width
        for (row, i) in indices.enumerated() { (x + row * w).update(from: features.data + Int(i) * w, count: w) }
    }
}
