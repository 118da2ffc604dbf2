import Foundation
import Kernels
import Layers
import Storage
import TestSupport
import XCTest
@testable import Training

/// `switchboard predict` on checkpoints made by the real binary: the model's logits row for
/// row, from IDX or HDF5 input; no partial output after a kill; memory that does not grow with
/// the number of samples; bad input refused in one line.
final class PredictTests: ToyDataTestCase {
    /// A toy residual model trained for 22 steps; its final checkpoint and config.
    func trained() throws -> (checkpoint: String, config: JobConfig) {
        let (checkpoint, text) = try trainedToy(name: "toy")
        return (checkpoint, try JobConfig.parse(text, source: "toy"))
    }

    func predict(_ arguments: [String], environment: [String: String] = [:]) throws -> (code: Int32, output: String) {
        let r = try Launcher.run(binary, ["predict"] + arguments, environment: environment)
        return (r.code, r.output)
    }

    func floats(_ path: String, _ name: String, shape: [Int]) throws -> [Float] {
        var out = [Float](repeating: 0, count: shape.reduce(1, *))
        try HDF5File.open(path).readFloats(name, shape: shape, into: &out)
        return out
    }

    func testLogitsAndLabelsAreTheModelsRowForRowFromIDXAndHDF5() throws {
        let (checkpoint, config) = try trained()
        let test = try config.data.load(.test)
        // The model in this process, loaded from the checkpoint, run in predict's batches.
        let reader = try CheckpointReader(checkpoint)
        let model = Model(config.model, inputs: test.width, classes: 4, maxRows: 50, seed: 1)
        for p in model.store.parameters { try reader.read("params/\(p.name)", into: p.value) }
        var expected: [Float] = []
        for start in stride(from: 0, to: test.count, by: 50) {
            let n = min(50, test.count - start)
            let z = model.forward(test.features.data + start * test.width, rows: n, context: ForwardContext(training: false))
            expected += Array(UnsafeBufferPointer(start: z, count: n * 4))
        }
        // The same samples as HDF5 float32 features.
        let h5 = "\(dir)/samples.h5"
        let file = try HDF5File.create(h5)
        try file.writeFloats("x", shape: [test.count, test.width], test.features.data)
        try file.close()
        for input in ["\(dir)/test-images", h5] {
            let out = "\(dir)/predicted.h5"
            let r = try predict([checkpoint, input, out])
            XCTAssertEqual(r.code, 0, r.output)
            XCTAssertTrue(r.output.hasPrefix("wrote \(out): logits and labels of 128 samples (64 features, 4 classes)"), r.output)
            let logits = try floats(out, "logits", shape: [128, 4])
            XCTAssertEqual(logits, expected, "\(input): the model's logits, bitwise")
            let shape = try HDF5File.open(out).shape(of: "label")
            XCTAssertEqual(shape, [128])
            // Labels are the argmax; their accuracy is what evaluate reports.
            let e = try Launcher.run(binary, ["evaluate", checkpoint, "--json"])
            let json = try JSONSerialization.jsonObject(with: Data(e.output.utf8)) as! [String: Any]
            var labels = [Int32](repeating: 0, count: 128)
            try labels.withUnsafeMutableBufferPointer { buffer in
                let f = try HDF5File.open(out)
                try f.readInt32("label", count: 128, into: buffer.baseAddress!)
            }
            for r in 0..<128 {
                let row = logits[(r * 4)..<(r * 4 + 4)]
                XCTAssertEqual(Int(labels[r]), row.indices.first { row[$0] == row.max()! }! - r * 4, "row \(r)")
            }
            let correct = (0..<128).filter { labels[$0] == test.labels[$0] }.count
            XCTAssertEqual(Double(correct) / 128, json["accuracy"] as! Double, "\(input): accuracy from the labels")
            try FileManager.default.removeItem(atPath: out)
        }
    }

    /// Killed after its first batch, predict leaves OUT absent (only OUT.partial); the next
    /// predict replaces the partial file and commits OUT.
    func testAKilledPredictLeavesNoOutput() throws {
        let (checkpoint, _) = try trained()
        let out = "\(dir)/out.h5"
        let killed = try predict([checkpoint, "\(dir)/test-images", out, "--batch", "10"],
                                 environment: ["SWITCHBOARD_FAULT": "rank=0,step=0,kind=kill-in-predict"])
        XCTAssertNotEqual(killed.code, 0, killed.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "no output under OUT's name after a kill")
        XCTAssertTrue(FileManager.default.fileExists(atPath: out + ".partial"))
        let again = try predict([checkpoint, "\(dir)/test-images", out, "--batch", "10"])
        XCTAssertEqual(again.code, 0, again.output)
        XCTAssertTrue(FileManager.default.fileExists(atPath: out))
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + ".partial"))
    }

    /// 200,000 samples take no more memory than 2,000: they are read and written a batch at
    /// a time (held whole as floats they would be 51 MB).
    func testMemoryDoesNotGrowWithTheNumberOfSamples() throws {
        let (checkpoint, _) = try trained()
        func peak(_ samples: Int) throws -> Double {
            let input = "\(dir)/many-\(samples)"
            Fixtures.write(Fixtures.idx([samples, 8, 8], (0..<(samples * 64)).map { UInt8($0 % 251) }), to: input)
            let r = try predict([checkpoint, input, "\(dir)/many.h5"])
            XCTAssertEqual(r.code, 0, r.output)
            let text = try XCTUnwrap(r.output.components(separatedBy: "peak memory ").last?.split(separator: " ").first)
            return try XCTUnwrap(Double(text), r.output)
        }
        let small = try peak(2_000), large = try peak(200_000)
        XCTAssertLessThan(large - small, 10, "peak memory \(small) MB for 2,000 samples, \(large) MB for 200,000")
    }

    func testBadInputIsRefusedInOneLine() throws {
        let (checkpoint, _) = try trained()
        func fails(_ arguments: [String], code: Int32, _ message: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let r = try predict(arguments)
            XCTAssertEqual(r.code, code, r.output, file: file, line: line)
            XCTAssertEqual(r.output, "switchboard: error: \(message)\n", file: file, line: line)
            XCTAssertFalse(FileManager.default.fileExists(atPath: arguments[2]), "nothing written", file: file, line: line)
        }
        // Another shape: 16 features per sample where the model takes 64.
        let small = "\(dir)/small-images"
        Fixtures.write(Fixtures.idx([5, 4, 4], [UInt8](repeating: 1, count: 80)), to: small)
        try fails([checkpoint, small, "\(dir)/a.h5"], code: 1, "\(small): has 16 features per sample; the model of \(checkpoint) takes 64")
        // Another dtype: int32 features.
        let ints = "\(dir)/ints.h5"
        do {
            let file = try HDF5File.create(ints)
            let writer = try HDF5RowWriter(file, "x", rows: 3, columns: 64, element: .int32, chunkRows: 3)
            try [Int32](repeating: 1, count: 192).withUnsafeBytes { try writer.write(first: 0, count: 3, $0.baseAddress!) }
        }
        try fails([checkpoint, ints, "\(dir)/b.h5"], code: 1, "\(ints): dataset x must hold float32 or uint8 features")
        try fails([checkpoint, "\(dir)/test-images", "\(dir)/no/such/c.h5"], code: 1,
                  "\(dir)/no/such/c.h5: cannot write: the folder \(dir)/no/such does not exist")
        try fails([checkpoint, "\(dir)/nothing", "\(dir)/d.h5"], code: 1, "\(dir)/nothing: no such file")
    }
}
