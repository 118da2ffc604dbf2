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
            format = "hdf5", train_file and test_file. With --files or --samples-per-file the \
            samples are split, in order, over files OUTPUT-00.h5, OUTPUT-01.h5, … (for OUTPUT.h5), \
            which train_file = "OUTPUT-*.h5" reads back as one dataset.
            Example: switchboard convert /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz \
            /usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz train.h5
            """)

    @Argument(help: "IDX images (gzip or plain).") var images: String
    @Argument(help: "IDX labels (gzip or plain).") var labels: String
    @Argument(help: "The HDF5 file to write (replaced if it exists).") var output: String
    @Option(name: .customLong("x-name"), help: "Name of the features dataset.") var xName = "x"
    @Option(name: .customLong("y-name"), help: "Name of the labels dataset.") var yName = "y"
    @Option(parsing: .unconditional, help: "Split the samples over this many files of (nearly) equal size.") var files: Int?
    @Option(name: .customLong("samples-per-file"), help: "Split the samples over files of this many samples (the last may hold fewer).")
    var samplesPerFile: Int?

    func run() throws {
        if files != nil && samplesPerFile != nil { throw ValidationError("give --files or --samples-per-file, not both") }
        if let files, files < 1 { throw ValidationError("--files must be at least 1, got \(files)") }
        if let samplesPerFile, samplesPerFile < 1 { throw ValidationError("--samples-per-file must be at least 1, got \(samplesPerFile)") }
        for line in try Self.convert(images: images, labels: labels, output: output, files: files, samplesPerFile: samplesPerFile,
                                     xName: xName, yName: yName) {
            print(line)
        }
    }

    /// Writes the IDX `images` and `labels` as HDF5 at `output`, split over files as `files`
    /// or `samplesPerFile` say (neither: one file); returns a line for each file written.
    static func convert(images: String, labels: String, output: String, files: Int?, samplesPerFile: Int?,
                        xName: String = "x", yName: String = "y") throws -> [String] {
        let (ishape, pixels) = try IDXReader.read(images, dimensions: 3)
        let (lshape, raw) = try IDXReader.read(labels, dimensions: 1)
        guard ishape[0] == lshape[0] else {
            throw DataError(labels, "has \(lshape[0]) labels but \(images) has \(ishape[0]) images")
        }
        let n = ishape[0]
        if let files, files > n { throw ValidationError("--files: \(files) files for \(n) samples") }
        // Sample ranges, in order: equal parts (the first ones a sample larger), or fixed sizes.
        let parts: [Range<Int>] = if let files {
            (0..<files).map { ($0 * n / files)..<(($0 + 1) * n / files) }
        } else if let samplesPerFile {
            stride(from: 0, to: n, by: samplesPerFile).map { $0..<min($0 + samplesPerFile, n) }
        } else {
            [0..<n]
        }
        let rowBytes = ishape[1] * ishape[2]
        let digits = max(2, String(parts.count - 1).count)
        let stem = output.hasSuffix(".h5") ? String(output.dropLast(3)) : output
        var written: [String] = []
        for (i, part) in parts.enumerated() {
            let name = parts.count == 1 ? output : "\(stem)-\(String(repeating: "0", count: digits - String(i).count))\(i).h5"
            let tmp = name + ".tmp"
            let file = try HDF5File.create(tmp)
            try pixels.withUnsafeBufferPointer {
                try file.writeUInt8(xName, shape: [part.count, ishape[1], ishape[2]], $0.baseAddress! + part.lowerBound * rowBytes, chunkBytes: 64 << 10)
            }
            try raw.withUnsafeBufferPointer { try file.writeUInt8(yName, shape: [part.count], $0.baseAddress! + part.lowerBound, chunkBytes: 64 << 10) }
            try file.setAttribute("source_images", images)
            try file.setAttribute("source_labels", labels)
            try file.close()
            try DurableFiles.sync(tmp)
            try DurableFiles.rename(tmp, name)
            written.append("wrote \(name): \(xName) uint8 \([part.count, ishape[1], ishape[2]]), \(yName) uint8 [\(part.count)]"
                           + (parts.count == 1 ? "" : " (samples \(part.lowerBound)…\(part.upperBound - 1))"))
        }
        return written
    }
}
