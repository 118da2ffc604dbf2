import Foundation
import Storage
import TestSupport
import XCTest
@testable import Training

/// `[init]`: a new run from another run's weights, by the real binary. A new head for another
/// class count starts fresh and is listed (non-strict) or refuses the job with every mismatch
/// (strict); a dense checkpoint upcycles into a mixture of experts on any number of ranks.
final class InitTests: ToyDataTestCase {
    func denseCheckpoint() throws -> String { try trainedToy(name: "dense").checkpoint }

    func testANewHeadStartsFreshOrRefusesTheStrictJob() throws {
        let checkpoint = try denseCheckpoint()
        // Five classes where the checkpoint has four (the toy labels are all below 4).
        let text = Fixtures.job(dir: dir, settings: ["data.classes": "5", "train.max_steps": "5", "run.name": "\"head\""],
                                extra: "[init]\nfrom = \"\(checkpoint)\"\nstrict = false\n")
        let job = try writeJob(text)
        let r = try Launcher.run(binary, ["train", job, "--quiet"])
        XCTAssertEqual(r.code, 0, r.output)
        XCTAssertTrue(r.output.contains("initialized from \(checkpoint) (step 22): 16 parameter tensors loaded; fresh: "
                                        + "head.weight (shape [4, 32] in the checkpoint, [5, 32] here), head.bias (shape [4] in the checkpoint, [5] here)\n"),
                      r.output)
        XCTAssertTrue(r.output.contains("done: 5 steps"), r.output)
        let metrics = try String(contentsOfFile: "\(dir)/runs/head/metrics.jsonl", encoding: .utf8)
        XCTAssertTrue(metrics.contains("\"kind\":\"init\""), metrics)

        let strict = try writeJob(Fixtures.set("init.strict", "true", in: text))
        let refused = try Launcher.run(binary, ["train", strict, "--quiet", "--set", "run.name=\"strict\""])
        XCTAssertEqual(refused.code, 2, refused.output)
        assertErrorLine(refused.output, "\(strict): [init] strict = true, and \(checkpoint) does not fit this model: "
                        + "head.weight has shape [4, 32] in the checkpoint, [5, 32] here; head.bias has shape [4] in the checkpoint, [5] here "
                        + "(strict = false starts those parameters fresh)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/runs/strict"), "a refused job leaves no run folder")
        let missing = try writeJob(Fixtures.set("init.from", "\"\(dir)/nowhere\"", in: text))
        let none = try Launcher.run(binary, ["train", missing, "--quiet"])
        XCTAssertEqual(none.code, 2, none.output)
        assertErrorLine(none.output, "\(missing): [init] from = \"\(dir)/nowhere\": no such checkpoint")
    }

    /// The output (stdout and stderr together) ends with exactly one error line, `message`.
    func assertErrorLine(_ output: String, _ message: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertTrue(output.hasSuffix("switchboard: error: \(message)\n"), output, file: file, line: line)
        XCTAssertEqual(output.components(separatedBy: "switchboard: error:").count, 2, output, file: file, line: line)
    }

    /// A dense checkpoint saved on one rank upcycles into an MoE run on two (experts placed
    /// over the ranks): every expert from its block's FFN, the routers fresh, nothing unused.
    func testUpcyclingRunsOnTwoRanks() throws {
        let checkpoint = try denseCheckpoint()
        let text = Fixtures.job(dir: dir, model: .moe(width: 32, depth: 2, "experts = 4\ntop_k = 2\nhidden = 64"),
                                settings: ["train.max_steps": "5"], extra: "[init]\nfrom = \"\(checkpoint)\"\nupcycle = true\nnoise = 0.01\n")
        let job = try writeJob(text)
        let r = try mpirun(ranks: 2, name: "upcycled", job: job)
        XCTAssertEqual(r.code, 0, r.output)
        XCTAssertTrue(r.output.contains("initialized from \(checkpoint) (step 22, upcycled dense → MoE with noise 0.01): "
                                        + "42 parameter tensors loaded; fresh: blocks.0.moe.router.weight (the router starts as the job says), "
                                        + "blocks.1.moe.router.weight (the router starts as the job says)\n"), r.output)
        XCTAssertTrue(r.output.contains("done: 5 steps"), r.output)
    }
}
