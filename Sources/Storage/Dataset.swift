import Kernels

/// A labelled classification dataset held in memory: features `[count, features]` as Float,
/// labels `[count]`.
public final class Dataset {
    public let features: Tensor
    public let labels: [Int32]
    public let classes: Int
    public var count: Int { labels.count }
    public var width: Int { features.cols }

    public init(features: Tensor, labels: [Int32], classes: Int) {
        precondition(features.rows == labels.count)
        self.features = features
        self.labels = labels
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
                       labels y: UnsafeMutablePointer<Int32>) {
        let w = width
        for (row, i) in indices.enumerated() {
            (x + row * w).update(from: features.data + Int(i) * w, count: w)
            y[row] = labels[Int(i)]
        }
    }
}
