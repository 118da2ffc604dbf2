import Foundation
import Storage
import TestSupport
import XCTest
@testable import Training

/// `switchboard moefy` by the real binary: with all E experts the MoE checkpoint computes the
/// dense model; with K < E each token uses K experts (counted by evaluate); bad input refused.
final class MoefyTests: ToyDataTestCase {
    func denseCheckpoint() throws -> String { try trainedToy(name: "dense").checkpoint }

    func json(_ arguments: [String]) throws -> [String: Any] {
        let r = try Launcher.run(binary, arguments)
        XCTAssertEqual(r.code, 0, r.output)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(r.output.utf8)) as? [String: Any], r.output)
    }

    func testAllExpertsReproduceTheDenseModelAndFewerUseFewer() throws {
        let dense = try denseCheckpoint()
        let moe = "\(dir)/moe"
        // OUT with a trailing slash names the same folder.
        let r = try Launcher.run(binary, ["moefy", dense, "--experts", "4", "--out", moe + "/", "--samples", "256"])
        XCTAssertEqual(r.code, 0, r.output)
        XCTAssertTrue(r.output.contains("wrote \(moe): 2 MoE blocks of 4 experts of 16 units"), r.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: moe + ".partial"))
        // Predictions of the MoE with all 4 experts against the dense model's, row for row.
        for (checkpoint, out) in [(dense, "\(dir)/dense.h5"), (moe, "\(dir)/moe.h5")] {
            let p = try Launcher.run(binary, ["predict", checkpoint, "\(dir)/test-images", out])
            XCTAssertEqual(p.code, 0, p.output)
        }
        var a = [Float](repeating: 0, count: 128 * 4), b = a
        try HDF5File.open("\(dir)/dense.h5").readFloats("logits", shape: [128, 4], into: &a)
        try HDF5File.open("\(dir)/moe.h5").readFloats("logits", shape: [128, 4], into: &b)
        let scale = a.map(abs).max()!
        for i in a.indices { XCTAssertEqual(a[i], b[i], accuracy: 1e-4 * scale, "logit \(i): the dense model's, to rounding") }
        let denseEval = try json(["evaluate", dense, "--json"])
        let all = try json(["evaluate", moe, "--json"])
        XCTAssertEqual(all["accuracy"] as? Double, denseEval["accuracy"] as? Double)
        // K < E: each of the 128 tokens goes to exactly K experts in each block.
        for k in [1, 2] {
            let e = try json(["evaluate", moe, "--json", "--top-k", "\(k)"])
            let tokens = try XCTUnwrap(e["expert_tokens"] as? [[Int]])
            XCTAssertEqual(tokens.count, 2)
            for block in tokens { XCTAssertEqual(block.reduce(0, +), 128 * k, "top-\(k): \(block)") }
        }
    }

    func testBadInputIsRefusedInOneLine() throws {
        let dense = try denseCheckpoint()
        func fails(_ arguments: [String], code: Int32, _ message: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let r = try Launcher.run(binary, ["moefy"] + arguments)
            XCTAssertEqual(r.code, code, r.output, file: file, line: line)
            XCTAssertEqual(r.output, "switchboard: error: \(message)\n", file: file, line: line)
        }
        try fails([dense, "--experts", "5", "--out", "\(dir)/a"], code: 2, "--experts 5 does not divide the hidden width 64 of the model of \(dense)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/a"))
        try fails([dense, "--experts", "4", "--out", "\(dir)/no/such/b"], code: 1, "\(dir)/no/such/b: cannot write: the folder \(dir)/no/such does not exist")
        try fails([dense, "--experts", "4", "--out", dir], code: 2, "\(dir) exists; moefy writes a new checkpoint folder")
        // An MoE checkpoint, an FFF one, and a top-k one (keeping 8 of its 32 units).
        for (label, model, what) in [("moe", ToyModel.moe("experts = 4\nhidden = 8"), "already a mixture of experts"),
                                     ("fff", .fff, "a fast feedforward model"),
                                     ("topk", .custom("kind = \"residual\"\nwidth = 16\nblock = \"topk\"\nexpansion = 2\n[topk]\nk = 8"),
                                      "a top-k activation MLP")] {
            let path = try writeJob(Fixtures.job(dir: dir, model: model, settings: ["train.max_steps": "3"]))
            _ = try train(ranks: 1, name: label, job: path)
            let checkpoint = "\(dir)/runs/\(label)/\(CheckpointFolder.name(step: 3))"
            try fails([checkpoint, "--experts", "2", "--out", "\(dir)/c"], code: 2,
                      "moefy splits the dense MLP blocks of a residual model (pointwise activation, full rank, every unit kept); "
                      + "the model of \(checkpoint) is \(what)")
        }
    }
}
