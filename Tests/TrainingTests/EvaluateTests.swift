import Foundation
import Storage
import TestSupport
import XCTest
@testable import Training

/// `switchboard evaluate` on checkpoints made by the real binary: the accuracy training
/// reported for the checkpoint, exactly, on 1 and 2 ranks; soft and hard for an FFF model;
/// fewer experts per token for an MoE model; and bad input refused in one line.
final class EvaluateTests: ToyDataTestCase {
    /// Trains `model` on `ranks` ranks for 22 steps (two epochs, evaluated after each) and
    /// returns the final checkpoint and the run's summary.
    func trained(_ model: ToyModel, name: String, ranks: Int = 2) throws -> (checkpoint: String, summary: [String: Any]) {
        let checkpoint = try trainedToy(model, name: name, ranks: ranks).checkpoint
        let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir)/runs/\(name)/summary.json")))
        return (checkpoint, summary as! [String: Any])
    }

    /// `switchboard evaluate … --json` on `ranks` ranks (mpirun above 1).
    func evaluate(_ arguments: [String], ranks: Int = 1) throws -> (code: Int32, output: String, json: [String: Any]?) {
        let r = ranks == 1 ? try Launcher.run(binary, ["evaluate"] + arguments)
            : try launch(["-np", String(ranks), binary, "evaluate"] + arguments)
        let json = r.code == 0 ? try? JSONSerialization.jsonObject(with: Data(r.output.utf8)) as? [String: Any] : nil
        return (r.code, r.output, json)
    }

    func testEvaluateGivesTheAccuracyTrainingReportedOnOneAndTwoRanks() throws {
        for (label, model) in [("dense", ToyModel.residual), ("moe", .moe("experts = 4\nhidden = 8")), ("fff", .fff)] {
            let (checkpoint, summary) = try trained(model, name: label)
            for ranks in [1, 2] {
                let r = try evaluate([checkpoint, "--json"], ranks: ranks)
                let json = try XCTUnwrap(r.json, "\(label), \(ranks) ranks: \(r.output)")
                XCTAssertEqual(json["accuracy"] as? Double, summary["test_accuracy"] as? Double, "\(label), \(ranks) ranks")
                XCTAssertEqual(json["loss"] as! Double, summary["test_loss"] as! Double, accuracy: 1e-6, "\(label), \(ranks) ranks")
                XCTAssertEqual(json["samples"] as? Int, 128)
                let confusion = try XCTUnwrap(json["confusion"] as? [[Int]])
                XCTAssertEqual(confusion.flatMap { $0 }.reduce(0, +), 128)
                XCTAssertEqual(Double((0..<4).map { confusion[$0][$0] }.reduce(0, +)) / 128, json["accuracy"] as! Double)
                let hard = json["hard"] as? [String: Any]
                XCTAssertEqual(hard != nil, label == "fff", "hard decisions for FFF models only")
                if let hard { XCTAssertEqual(hard["accuracy"] as? Double, summary["test_accuracy_hard"] as? Double, "fff hard, \(ranks) ranks") }
            }
            let text = try Launcher.run(binary, ["evaluate", checkpoint])
            XCTAssertEqual(text.code, 0, text.output)
            XCTAssertTrue(text.output.contains("; fp32 products\n"), text.output)
            // The fp32 weights evaluated with bf16 products: close to, not the same as, fp32.
            let bf16 = try evaluate([checkpoint, "--json", "--precision", "bf16"])
            let json = try XCTUnwrap(bf16.json, "\(label), bf16: \(bf16.output)")
            let loss = try XCTUnwrap(json["loss"] as? Double), fp32Loss = try XCTUnwrap(summary["test_loss"] as? Double)
            XCTAssertNotEqual(loss, fp32Loss, "\(label): bf16 products gave exactly the fp32 loss")
            XCTAssertEqual(loss, fp32Loss, accuracy: 0.02 * fp32Loss, "\(label): bf16 products")
            XCTAssertTrue(text.output.contains("class  samples  correct  accuracy"), text.output)
        }
    }

    /// `--top-k` evaluates an MoE model with fewer experts per token; the training split and
    /// another data folder can be evaluated; bad values are refused in one line.
    func testTopKSplitAndBadInput() throws {
        let (checkpoint, _) = try trained(.moe("experts = 4\ntop_k = 2\nhidden = 8"), name: "moe", ranks: 1)
        let one = try XCTUnwrap(try evaluate([checkpoint, "--json", "--top-k", "1"]).json)
        XCTAssertEqual(one["top_k"] as? Int, 1)
        let train = try XCTUnwrap(try evaluate([checkpoint, "--json", "--split", "train"]).json)
        XCTAssertEqual(train["samples"] as? Int, 512)
        func fails(_ arguments: [String], code: Int32, _ message: String, file: StaticString = #filePath, line: UInt = #line) throws {
            let r = try Launcher.run(binary, ["evaluate"] + arguments)
            XCTAssertEqual(r.code, code, r.output, file: file, line: line)
            XCTAssertEqual(r.output, "switchboard: error: \(message)\n", file: file, line: line)
        }
        try fails([checkpoint, "--top-k", "0"], code: 2, "--top-k 0: a token can use from 1 to the 4 experts of this model")
        try fails([checkpoint, "--top-k", "5"], code: 2, "--top-k 5: a token can use from 1 to the 4 experts of this model")
        let (dense, _) = try trained(.residual, name: "dense", ranks: 1)
        try fails([dense, "--top-k", "1"], code: 2, "--top-k applies to MoE models; the model of \(dense) is not one")
        try fails(["\(dir)/runs"], code: 2, "\(dir)/runs: no checkpoint.h5: not a committed checkpoint (the manifest is written last)")
        // Data of another shape: 16 features per sample where the model takes 64.
        let other = "\(dir)/small"
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        Fixtures.dataset(in: other, side: 4)
        try fails([dense, "--data", other], code: 1,
                  "\(other)/test-images: has 16 features per sample; the model of \(dense) takes 64")
    }
}
