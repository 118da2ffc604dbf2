import ArgumentParser
import Foundation
import Storage
import Training

/// `switchboard convert`: IDX image and label files to the HDF5 layout `[data] format =
/// "hdf5"` reads.
struct ConvertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convert",
        abstract: "Convert IDX image and label files to an HDF5 training-data file.",
        discussion: """
            Writes datasets x (uint8, [N, H, W], the images as they are) and y (uint8 labels, [N]), \
            chunked in small pieces (64 KiB) so that a rank reading its own rows of a shuffled batch \
            reads little else, each chunk checksummed (Fletcher32). Train on it with [data] \
            format = "hdf5", train_file and test_file.
            Example: switchboard convert /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz \
            /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz train.h5
            """)

    @Argument(help: "IDX images (gzip or plain).") var images: String
    @Argument(help: "IDX labels (gzip or plain).") var labels: String
    @Argument(help: "The HDF5 file to write (replaced if it exists).") var output: String
    @Option(name: .customLong("x-name"), help: "Name of the features dataset.") var xName = "x"
    @Option(name: .customLong("y-name"), help: "Name of the labels dataset.") var yName = "y"

    func run() throws {
        let (ishape, pixels) = try IDXReader.read(images, dimensions: 3)
        let (lshape, raw) = try IDXReader.read(labels, dimensions: 1)
        guard ishape[0] == lshape[0] else {
            throw DataError(labels, "has \(lshape[0]) labels but \(images) has \(ishape[0]) images")
        }
        let tmp = output + ".tmp"
        let file = try HDF5File.create(tmp)
        try pixels.withUnsafeBufferPointer { try file.writeUInt8(xName, shape: ishape, $0.baseAddress!, chunkBytes: 64 << 10) }
        try raw.withUnsafeBufferPointer { try file.writeUInt8(yName, shape: lshape, $0.baseAddress!, chunkBytes: 64 << 10) }
        try file.setAttribute("source_images", images)
        try file.setAttribute("source_labels", labels)
        try file.close()
        try DurableFiles.sync(tmp)
        try DurableFiles.rename(tmp, output)
        print("wrote \(output): \(xName) uint8 \(ishape), \(yName) uint8 \(lshape)")
    }
}
