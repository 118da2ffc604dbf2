import Foundation
import Kernels
import Layers
import Storage
import TestSupport
import XCTest
@testable import Training

/// Gradient accumulation (`[train] micro_batch`) by the real binary: a step of several passes
/// trains the model one pass over the batch trains, on 1 and 2 ranks, and with MoE capacity
/// it drops the same assignments (`[moe] statistics = "batch"`, the routing pre-pass).
final class AccumulationTests: ToyDataTestCase {
    /// Micro-batches add each weight gradient up in another order than one pass does (a
    /// product per pass, then the sum over passes), the same kind of difference as another
    /// world size: held to the same bound, max over tensors of ‖θ − θ_ref‖₂ / ‖θ_ref‖₂.
    static let tolerance = MultiRankTests.tolerance

    /// The toy job (batch 48, 11 batches per epoch, the last of 32 rows) for 20 steps, across
    /// an epoch boundary and the short batch.
    func job(_ model: ToyModel, settings: KeyValuePairs<String, String?> = [:], extra: String = "") throws -> (path: String, config: JobConfig) {
        var text = Fixtures.job(dir: dir, model: model, settings: ["train.max_steps": "20"], extra: extra)
        for (path, value) in settings { text = Fixtures.set(path, value, in: text) }
        let path = try writeJob(text)
        return (path, try JobConfig.parse(text, source: path))
    }

    /// A trained model and the assignments its run dropped, as `step layer sample expert`.
    struct Trained {
        var model: Model
        var dropped: Set<String>
        var output: String
    }

    /// Trains `job` on `ranks` ranks with `micro` rows per pass (nil: one pass per step),
    /// tracing the dropped assignments (`SWITCHBOARD_ROUTING_TRACE`).
    func trained(_ job: (path: String, config: JobConfig), ranks: Int, micro: Int?, name: String,
                 settings: [String] = []) throws -> Trained {
        let trace = "\(dir)/trace-\(name)"
        try FileManager.default.createDirectory(atPath: trace, withIntermediateDirectories: true)
        let r = try mpirun(ranks: ranks, name: name, job: job.path, settings: settings + (micro.map { ["train.micro_batch=\($0)"] } ?? []),
                           environment: ["SWITCHBOARD_ROUTING_TRACE": trace])
        XCTAssertEqual(r.code, 0, r.output)
        var dropped = Set<String>()
        for rank in 0..<ranks {
            let text = try String(contentsOfFile: "\(trace)/rank-\(rank).txt", encoding: .utf8)
            for line in text.split(separator: "\n") {
                XCTAssertTrue(dropped.insert(String(line)).inserted, "\(name): \(line) dropped twice")
            }
        }
        return Trained(model: try loadModel("\(dir)/runs/\(name)/model.h5", job.config), dropped: dropped, output: r.output)
    }

    /// Checks `other` is `reference`'s model within the bound and dropped the same assignments.
    func assertSame(_ reference: Trained, _ other: Trained, _ label: String, tolerance: Double = tolerance,
                    file: StaticString = #filePath, line: UInt = #line) {
        let worst = Self.maxRelativeDifference(reference.model, other.model)
        XCTAssertLessThanOrEqual(worst.0, tolerance, "\(label): max relative L2 difference \(worst.0) in \(worst.1)", file: file, line: line)
        XCTAssertEqual(reference.dropped, other.dropped, "\(label): \(reference.dropped.subtracting(other.dropped).count) assignments "
                       + "dropped only in one pass per step, \(other.dropped.subtracting(reference.dropped).count) only here",
                       file: file, line: line)
        print("\(label): max relative L2 difference \(worst.0) (\(worst.1)), \(other.dropped.count) dropped assignments")
    }

    /// Micro-batches of 1/4, 1/2 and all of a rank's share train the model of one pass per
    /// step, on 1 and 2 ranks: a residual MLP with dropout; an MoE with capacity, balance and
    /// z-losses (the same dropped assignments); a fast feedforward tree with leaf balance; and
    /// σ-MoE with entropy regularization and expert dropout.
    func testMicroBatchesTrainTheModelOfOnePassOnOneAndTwoRanks() throws {
        let capacity = ToyModel.moe("experts = 4\ntop_k = 2\nhidden = 8\nbalance_loss = 0.01\nz_loss = 0.001\n"
                                    + "dropless = false\ncapacity_factor = 0.8")
        for (label, model) in [("dense", ToyModel.residual), ("moe", capacity), ("fff", .fff), ("sigma", .sigmaMoE)] {
            let job = try job(model)
            let reference = try trained(job, ranks: 1, micro: nil, name: "\(label)-whole")
            if label == "moe" { XCTAssertGreaterThan(reference.dropped.count, 0, "capacity 0.8 must drop assignments") }
            for ranks in [1, 2] {
                let share = 48 / ranks
                for micro in [share / 4, share / 2, share] where ranks > 1 || micro < share {
                    let run = try trained(job, ranks: ranks, micro: micro, name: "\(label)-\(ranks)x\(micro)")
                    assertSame(reference, run, "\(label), \(ranks) rank\(ranks == 1 ? "" : "s"), micro-batch \(micro)")
                }
            }
        }
    }

    /// A short last batch can leave a rank without rows in a pass: batches of 30 leave 2
    /// samples of 512 for the last, which 3 ranks split 0, 1, 1. Every rank still takes part
    /// in each pass's collectives, and the model is the one-pass model.
    func testAPassWithoutRowsOnSomeRank() throws {
        let job = try job(.moe("experts = 3\ntop_k = 2\nhidden = 8\nbalance_loss = 0.01\ndropless = false\ncapacity_factor = 0.8"),
                          settings: ["train.batch_size": "30"])
        let reference = try trained(job, ranks: 1, micro: nil, name: "one")
        assertSame(reference, try trained(job, ranks: 3, micro: 5, name: "three"), "3 ranks, micro-batch 5, a last pass of 2 rows")
    }

    /// `statistics = "micro_batch"` takes capacity and balance per pass, over every rank's
    /// rows of it: 1 rank with passes of 12 rows and 2 ranks with 6 each train the same model
    /// and drop the same assignments, which are not those of statistics over the batch.
    func testStatisticsPerMicroBatchAreOverEachPassOfEveryRank() throws {
        let job = try job(.moe("experts = 4\ntop_k = 2\nhidden = 8\nbalance_loss = 0.01\ndropless = false\ncapacity_factor = 0.8\n"
                               + "statistics = \"micro_batch\""))
        let one = try trained(job, ranks: 1, micro: 12, name: "micro1")
        let two = try trained(job, ranks: 2, micro: 6, name: "micro2")
        assertSame(one, two, "per-micro-batch statistics, 2 ranks × 6 rows against 1 × 12")
        XCTAssertTrue(two.output.contains("20 steps of 48 samples in 4 passes of 6 per rank, MoE statistics per micro-batch; "), two.output)
        let batch = try trained(job, ranks: 1, micro: 12, name: "batch1", settings: ["moe.statistics=\"batch\""])
        XCTAssertNotEqual(one.dropped, batch.dropped, "capacity per pass of 12 rows must drop other assignments than over 48")
        XCTAssertGreaterThan(Self.maxRelativeDifference(one.model, batch.model).0, Self.tolerance,
                             "statistics per micro-batch must train another model than statistics over the batch")
    }

    /// Checkpoints fall between steps: a run with micro-batches resumed from its middle ends on
    /// the bits of the run that went through, and continues within the bound on another
    /// number of ranks with another micro-batch.
    func testMicroBatchedRunsResumeBitwise() throws {
        let job = try job(.moe("experts = 4\ntop_k = 2\nhidden = 8\nbalance_loss = 0.01\ndropless = false\ncapacity_factor = 0.8"),
                          extra: "[checkpoint]\nevery_steps = 10\nkeep_last = 0\n")
        let whole = try trained(job, ranks: 2, micro: 6, name: "whole")
        let middle = "\(dir)/runs/whole/\(CheckpointFolder.name(step: 10))"
        for (ranks, micro, name) in [(2, 6, "again"), (1, 24, "other")] {
            let r = try mpirun(ranks: ranks, name: name, job: job.path, settings: ["train.micro_batch=\(micro)"],
                               extraArguments: ["--resume", middle])
            XCTAssertEqual(r.code, 0, r.output)
            let resumed = try loadModel("\(dir)/runs/\(name)/model.h5", job.config)
            if name == "again" {
                assertBitwiseEqual(whole.model.store.values, resumed.store.values, "resumed from step 10 on the same ranks and micro-batch")
            } else {
                let worst = Self.maxRelativeDifference(whole.model, resumed)
                XCTAssertLessThanOrEqual(worst.0, Self.tolerance, "continued on 1 rank with micro-batch 24: \(worst.1)")
            }
        }
    }

    /// bf16 products with micro-batches: bf16 itself carries a rounding-order difference on
    /// (`BFloat16TrainingTests.tolerance`), so the bound is bf16's across world sizes.
    func testMicroBatchesInBFloat16() throws {
        let job = try job(.residual, settings: ["train.precision": "\"bf16\"", "train.bf16_emulation": "true"])
        let reference = try trained(job, ranks: 1, micro: nil, name: "bf16-whole")
        let fp32 = try trained(job, ranks: 1, micro: nil, name: "fp32-whole", settings: ["train.precision=\"fp32\""])
        XCTAssertGreaterThan(Self.maxRelativeDifference(reference.model, fp32.model).0, BFloat16TrainingTests.tolerance,
                             "the bf16 run must differ from fp32 by more than the bound, or the bound shows nothing")
        for (ranks, micro) in [(1, 12), (2, 6)] {
            let run = try trained(job, ranks: ranks, micro: micro, name: "bf16-\(ranks)x\(micro)")
            assertSame(reference, run, "bf16, \(ranks) rank(s), micro-batch \(micro)", tolerance: BFloat16TrainingTests.tolerance)
        }
    }

    /// A batch that does not split evenly over the ranks cannot be cut into equal passes.
    func testAMicroBatchNeedsAnEvenSplitOverTheRanks() throws {
        let job = try job(.residual, settings: ["train.batch_size": "47"])
        let r = try mpirun(ranks: 2, name: "odd", job: job.path, settings: ["train.micro_batch=12"])
        XCTAssertEqual(r.code, 2, r.output)
        XCTAssertTrue(r.output.contains("switchboard: error: rank 0: [train] micro_batch = 12 needs batch_size = 47 to split evenly "
                                        + "over the 2 ranks (each takes 23 or 24 rows)"), r.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/runs/odd"), "a refused start leaves no run folder")
    }
}
