import Foundation
import Layers
import Storage
import TestSupport
import XCTest
@testable import Training

/// The real binary under `mpirun`: the same job on 1, 2 and 4 ranks (4 oversubscribed on a
/// 2-core machine) trains the same model. Ranks sum gradients in a different order than one
/// process sums rows inside its GEMMs, so equality across world sizes is within a tolerance;
/// at one world size it is bitwise.
final class MultiRankTests: ToyDataTestCase {
    /// Max over tensors of ‖θ_P − θ_1‖₂ / ‖θ_1‖₂ after 50 steps.
    static let tolerance = 1e-5

    /// The toy job on 2 ranks with the fault hook set to `fault` (`rank=R,step=S[,kind=K]`).
    func faulty(_ fault: String, name: String, settings: [String] = []) throws -> (code: Int32, output: String, seconds: Double) {
        try mpirun(ranks: 2, name: name, job: try writeJob(), settings: settings, environment: ["SWITCHBOARD_FAULT": fault])
    }

    /// Ranks that resolved different configs (here: a different --set) do not start.
    func testPreflightRefusesRanksWithDifferentConfigs() throws {
        let job = try writeJob()
        let (code, text, _) = try launch(["-np", "1", binary, "train", job, "--quiet",
                                          ":", "-np", "1", binary, "train", job, "--quiet", "--set", "train.epochs=3"])
        XCTAssertEqual(code, 2, text)
        XCTAssertTrue(text.contains("switchboard: error: rank 0: preflight refused to start: rank 1 resolved a different config than rank 0"), text)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/runs"), "nothing is written when the preflight refuses")
    }

    /// One rank's error reaches the output with its rank number and stops every rank.
    func testAnErrorOnOneRankAbortsEveryRank() throws {
        let r = try faulty("rank=1,step=3", name: "fault")
        XCTAssertNotEqual(r.code, 0, r.output)
        XCTAssertLessThan(r.seconds, 10, "the job must end promptly, not wait in a collective")
        XCTAssertTrue(r.output.contains("switchboard: error: rank 1: injected fault before step 3 (SWITCHBOARD_FAULT)"), r.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/runs/fault/summary.json"))
    }

    /// A rank that stops (SIGSTOP, as a hung node looks to the others) is found by the
    /// watchdog: the coordinator names it and the collective it never reached, and aborts.
    func testTheWatchdogNamesAStoppedRankAndAbortsTheJob() throws {
        let r = try faulty("rank=1,step=3,kind=stop", name: "stop", settings: ["parallel.watchdog_seconds=2"])
        XCTAssertNotEqual(r.code, 0, r.output)
        XCTAssertLessThan(r.seconds, 6, "deadline 2 s, a grace of 1 s to collect answers, and start-up")
        XCTAssertTrue(r.output.contains("switchboard: watchdog: rank 0 waited 2."), r.output)
        XCTAssertTrue(r.output.contains("  rank 0: waiting 2."), r.output)
        XCTAssertTrue(r.output.contains("(step 3, gradient reduce-scatter: bucket 1/1 (embed.weight … head.bias)"), r.output)
        XCTAssertTrue(r.output.contains("  rank 1: no answer: never reached collective #"), r.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/runs/stop/summary.json"))
    }

    /// When the coordinator itself stops, the rank waiting for it says so and aborts the job.
    func testTheWatchdogNamesAStoppedCoordinator() throws {
        let r = try faulty("rank=0,step=3,kind=stop", name: "stop0", settings: ["parallel.watchdog_seconds=2"])
        XCTAssertNotEqual(r.code, 0, r.output)
        XCTAssertLessThan(r.seconds, 10, "deadline 2 s, twice the grace, and start-up")
        XCTAssertTrue(r.output.contains("switchboard: watchdog: rank 1 waited 2."), r.output)
        XCTAssertTrue(r.output.contains("rank 1: the coordinator (rank 0) did not answer"), r.output)
    }

    /// A rank killed by a fatal signal names itself and its step; mpirun stops the others.
    func testARankKilledByASignalIsNamed() throws {
        let r = try faulty("rank=1,step=3,kind=crash", name: "crash")
        XCTAssertNotEqual(r.code, 0, r.output)
        XCTAssertLessThan(r.seconds, 10)
        XCTAssertTrue(r.output.contains("switchboard: error: rank 1: killed by signal SIGSEGV (invalid memory access) in training step 3"), r.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "\(dir)/runs/crash/summary.json"))
    }

    func testOneTwoAndFourRanksTrainTheSameModel() throws {
        // 11 steps per epoch: 50 steps cross four epoch boundaries and four partial batches.
        let text = Fixtures.job(dir: dir, settings: ["train.epochs": "5", "train.max_steps": "50"])
        let job = try writeJob(text)
        let config = try JobConfig.parse(text, source: job)
        func load(_ path: String) throws -> Model {
            let m = Model(config.model, inputs: 64, classes: 4, maxRows: 1, seed: 999)
            try ModelFile.read(m, from: path)
            return m
        }
        // 1 KiB buckets: the ~43 KB of gradients travel in 42 buckets, most of them in flight
        // during backward, and chunks that do not divide evenly among 4 ranks.
        let small = ["parallel.bucket_kib=1"]
        let one = try load(try train(ranks: 1, name: "p1", job: job))
        let two = try load(try train(ranks: 2, name: "p2", job: job, settings: small))
        let twoAgain = try load(try train(ranks: 2, name: "p2b", job: job, settings: small))
        // On 2 ranks each sum is a + b whatever the bucketing, so one bucket gives the same bits
        // (without clipping: the gradient norm is summed shard by shard, and shards follow buckets).
        let noClip = "optimizer.clip_norm=0"
        let twoSmallBuckets = try load(try train(ranks: 2, name: "p2c", job: job, settings: small + [noClip]))
        let twoOneBucket = try load(try train(ranks: 2, name: "p2d", job: job, settings: ["parallel.bucket_kib=4096", noClip]))
        let four = try load(try train(ranks: 4, name: "p4", job: job, settings: small))
        let preflight = try String(contentsOfFile: "\(dir)/p4.out", encoding: .utf8)
        XCTAssertTrue(preflight.contains("preflight:\n  rank  host  cores  bound to  BLAS threads"), preflight)
        XCTAssertTrue(preflight.contains("4 ranks × BLAS threads = 4 threads on \(ProcessInfo.processInfo.activeProcessorCount) cores (oversubscribed")
                      || ProcessInfo.processInfo.activeProcessorCount >= 4, preflight)

        // The done: line names the rank with the largest peak; summary.json keeps every rank's.
        let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: "\(dir)/runs/p4/summary.json")))
        let peaks = try XCTUnwrap((summary as? [String: Any])?["peak_memory_bytes"] as? [Double], "summary.json: peak_memory_bytes")
        XCTAssertEqual(peaks.count, 4)
        XCTAssertTrue(peaks.allSatisfy { $0 > 10e6 }, "\(peaks)")
        let busiest = peaks.indices.max { peaks[$0] < peaks[$1] }!
        XCTAssertTrue(preflight.contains("on rank \(busiest) (the most of 4 ranks)"), preflight)
        assertBitwiseEqual(two.store.values, twoAgain.store.values, "2 ranks twice: the same world size must give the same bits")
        assertBitwiseEqual(twoSmallBuckets.store.values, twoOneBucket.store.values, "2 ranks: the bucket size must not change a bit")
        for (label, other) in [("2 ranks", two), ("4 ranks", four)] {
            let worst = Self.maxRelativeDifference(one, other)
            XCTAssertLessThanOrEqual(worst.0, Self.tolerance, "\(label): max relative L2 difference \(worst.0) in \(worst.1)")
            print("\(label) vs 1 rank after 50 steps: max relative L2 difference \(worst.0) (\(worst.1))")
        }
    }

    /// Trains `job` on 1, 2 and 4 ranks and checks the parameters agree; returns rank 1's output.
    func assertSameOnOneTwoAndFourRanks(_ job: (path: String, config: JobConfig), _ label: String, settings: [String] = [],
                                        file: StaticString = #filePath, line: UInt = #line) throws -> String {
        func load(_ path: String) throws -> Model {
            let m = Model(job.config.model, inputs: 64, classes: 4, maxRows: 1, seed: 999)
            try ModelFile.read(m, from: path)
            return m
        }
        let name = label.filter { $0.isLetter || $0.isNumber }
        let one = try load(try train(ranks: 1, name: "\(name)1", job: job.path, settings: settings))
        for ranks in [2, 4] {
            let other = try load(try train(ranks: ranks, name: "\(name)\(ranks)", job: job.path, settings: settings))
            let worst = Self.maxRelativeDifference(one, other)
            XCTAssertLessThanOrEqual(worst.0, Self.tolerance, "\(label), \(ranks) ranks: max relative L2 difference \(worst.0) in \(worst.1)",
                                     file: file, line: line)
            print("\(label), \(ranks) ranks vs 1: max relative L2 difference \(worst.0) (\(worst.1))")
        }
        return try String(contentsOfFile: "\(dir)/\(name)1.out", encoding: .utf8)
    }

    /// With `[parallel] shard_parameters` (each rank keeps 1/P of the synced parameters and
    /// gathers a layer's when it runs) every family trains the same model on 1, 2 and 4 ranks:
    /// dense, MoE with an owner per expert (4 on 2 and 4) and with replicated experts (2 on 4),
    /// FFF, hourglass (a frozen lift, which stays whole on every rank), low-rank and σ-MoE.
    func testShardedParametersTrainTheSameModelForEveryFamily() throws {
        let families: [(String, ToyModel)] = [
            ("mlp", .residual), ("moe", .moe("experts = 4\ntop_k = 2\nhidden = 8\nbalance_loss = 0.01")),
            ("moe2", .moe("experts = 2\ntop_k = 1\nhidden = 8")), ("fff", .fff), ("hourglass", .hourglass),
            ("lowrank", .lowRank), ("sigma", .sigmaMoE),
        ]
        for (label, model) in families {
            let text = Fixtures.job(dir: dir, model: model, settings: ["train.epochs": "3", "train.max_steps": "24"])
            let job = try writeJob(text)
            _ = try assertSameOnOneTwoAndFourRanks((job, try JobConfig.parse(text, source: job)), "sharded \(label)",
                                                   settings: ["parallel.shard_parameters=true"])
        }
    }

    /// On 2 ranks each sum is a + b however the gradients are cut into buckets, so without
    /// clipping a run with the parameters in shards ends on the same bits as one without
    /// (parameters and optimizer state, in the checkpoint), though every layer's values came
    /// from gathers, in one pass a step or in micro-batches. And no training step after the
    /// second allocates on any rank, with the parameters sharded or not, dense or MoE (the
    /// allocation counter under mpirun).
    func testShardedParametersChangeNoBitOnTwoRanksAndAllocateNothing() throws {
        let text = Fixtures.job(dir: dir, settings: ["train.epochs": "3", "train.max_steps": "24", "optimizer.clip_norm": "0"])
        let job = try writeJob(text)
        // One pass a step, and micro-batches of 12 rows (2 passes, whose gradients add up whole).
        for passes in [[], ["train.micro_batch=12"]] {
            var checksums: [Bool: [String: String]] = [:]
            for shard in [false, true] {
                let name = "bits\(shard)\(passes.count)"
                let r = try mpirun(ranks: 2, name: name, job: job, settings: ["parallel.shard_parameters=\(shard)"] + passes,
                                   environment: ["SWITCHBOARD_COUNT_ALLOCATIONS": "1"])
                XCTAssertEqual(r.code, 0, r.output)
                for rank in 0..<2 {
                    XCTAssertTrue(r.output.contains("rank \(rank): 0 heap allocations in training steps 3…24"),
                                  "shard_parameters = \(shard) \(passes): every step after the second allocates nothing on rank \(rank): \(r.output)")
                }
                let folder = "\(dir)/runs/\(name)/\(CheckpointFolder.name(step: 24))"
                let main = try HDF5File.open("\(folder)/\(CheckpointManifest.mainFile)")
                let m = try CheckpointManifest.decode(try main.readBytes(CheckpointManifest.manifestDataset, limit: 1 << 24), source: folder)
                checksums[shard] = Dictionary(uniqueKeysWithValues: m.tensors.map { ($0.name, $0.checksum) })
            }
            XCTAssertEqual(checksums[false], checksums[true], "2 ranks \(passes): sharding the parameters must not change a bit")
        }
        let moe = try writeJob(Fixtures.job(dir: dir, model: .moe("experts = 4\ntop_k = 2\nhidden = 8\nbalance_loss = 0.01"),
                                            settings: ["train.epochs": "3", "train.max_steps": "24"]))
        let r = try mpirun(ranks: 2, name: "moealloc", job: moe, settings: ["parallel.shard_parameters=true"],
                           environment: ["SWITCHBOARD_COUNT_ALLOCATIONS": "1"])
        XCTAssertEqual(r.code, 0, r.output)
        XCTAssertTrue(r.output.contains("rank 0: 0 heap allocations in training steps 3…24") && r.output.contains("rank 1: 0 heap allocations"),
                      "MoE, sharded: \(r.output)")
    }

    /// A model large enough that sharding gives pages back: an arena of 17 MB (a mapping of its
    /// own) with 4 MiB matrices, which on 2 ranks split at a 2 MiB page. Each rank's values and
    /// gradients outside its chunks are then released and read as zeros until gathered or
    /// written again: on 2 ranks without clipping the run still ends on the unsharded run's
    /// bits, and on 4 ranks within rounding of 1.
    func testShardedParametersReleasePagesAndTrainTheSameModel() throws {
        let text = Fixtures.job(dir: dir, settings: ["train.epochs": "2", "train.max_steps": "12", "optimizer.clip_norm": "0",
                                                     "model.width": "512", "model.expansion": "4"])
        let job = try writeJob(text)
        let config = try JobConfig.parse(text, source: job)
        let size = config.model.size(inputs: 64, classes: 4, maxRows: 1)
        XCTAssertGreaterThan(size.parameters * 4, 16e6, "the arena must be a mapping of its own, with pages to give back")
        var models: [Bool: Model] = [:]
        for shard in [false, true] {
            let path = try train(ranks: 2, name: "big\(shard)", job: job, settings: ["parallel.shard_parameters=\(shard)"])
            models[shard] = try loadModel(path, config)
        }
        assertBitwiseEqual(models[false]!.store.values, models[true]!.store.values, "2 ranks: sharding must not change a bit")
        _ = try assertSameOnOneTwoAndFourRanks((job, config), "big sharded", settings: ["parallel.shard_parameters=true"])
    }

    /// An MoE model trains the same on 1, 2 and 4 ranks: capacity is applied in global token
    /// order (a scan over the ranks) and the auxiliary losses use global statistics.
    func testMoEOnOneTwoAndFourRanksTrainsTheSameModel() throws {
        let job = try moeJob("experts = 4\ntop_k = 2\nhidden = 8\nbalance_loss = 0.01\nz_loss = 0.001\ndropless = false\ncapacity_factor = 0.8",
                             steps: 30)
        let log = try assertSameOnOneTwoAndFourRanks(job, "capacity")
        let four = try String(contentsOfFile: "\(dir)/capacity4.out", encoding: .utf8)
        XCTAssertTrue(four.contains("experts (each MoE layer):\n  rank 0: expert 0\n  rank 1: expert 1\n  rank 2: expert 2\n  rank 3: expert 3"), four)
        XCTAssertTrue(log.contains("blocks.0.moe: tokens per expert"), log)
        XCTAssertFalse(log.contains("dropped 0.0%"), "capacity 0.8 must drop some assignments: \(log)")
    }

    /// The newer families train the same on 1, 2 and 4 ranks: a fast feedforward tree (its
    /// hardening and leaf-balance statistics are over the global batch), an hourglass with its
    /// lift frozen (which no rank may move), and σ-MoE with sigmoid routing, entropy
    /// regularization and expert dropout.
    func testModelFamiliesOnOneTwoAndFourRanksTrainTheSameModel() throws {
        for (label, model) in [("fff", ToyModel.fff), ("hourglass", .hourglass), ("sigma", .sigmaMoE)] {
            let text = Fixtures.job(dir: dir, model: model, settings: ["train.epochs": "3", "train.max_steps": "24"])
            let job = try writeJob(text)
            let config = try JobConfig.parse(text, source: job)
            let log = try assertSameOnOneTwoAndFourRanks((job, config), label)
            if label == "fff" { XCTAssertTrue(log.contains("(hard "), "FFF evaluation reports hard accuracy: \(log)") }
            if label == "hourglass" {
                // The lift is bitwise its initialization on every world size.
                let initial = Model(config.model, inputs: 64, classes: 4, maxRows: 1, seed: config.run.seed)
                for ranks in [1, 2, 4] {
                    let trained = try loadModel("\(dir)/runs/\(label)\(ranks)/model.h5", config)
                    for name in ["embed.weight", "embed.bias"] {
                        let a = initial.store[name]!, b = trained.store[name]!
                        XCTAssertEqual(Array(UnsafeBufferPointer(start: a.value, count: a.count)),
                                       Array(UnsafeBufferPointer(start: b.value, count: b.count)), "\(name) on \(ranks) ranks")
                    }
                }
            }
        }
    }

    /// Skewed routing: a zero router sends every token to expert 0 at first (top-1), leaving
    /// the other experts, and on several ranks whole ranks' worth of experts, without tokens;
    /// expert counts that do not divide the ranks (6 on 4) and fewer experts than ranks (2 on 4).
    func testMoEWithSkewedRoutingTrainsTheSameOnOneTwoAndFourRanks() throws {
        // (label, [moe] section, a line the first step's telemetry must show)
        let cases = [
            ("one expert", "experts = 4\ntop_k = 1\nhidden = 8\nrouter_init = \"zeros\"",
             "warning: blocks.0.moe: expert 0 took 100% of the assignments (router collapse?)"),
            ("six experts", "experts = 6\ntop_k = 2\nhidden = 8\nrouter_init = \"zeros\"\ndropless = false\ncapacity_factor = 1.5",
             "blocks.0.moe: tokens per expert 0–48, dropped 50.0%"),   // capacity ⌈1.5·96/6⌉ = 24 of 48
            ("two experts", "experts = 2\ntop_k = 1\nhidden = 8", "blocks.0.moe: tokens per expert"),
        ]
        for (label, moe, expected) in cases {
            let log = try assertSameOnOneTwoAndFourRanks(try moeJob(moe, steps: 12), label, settings: ["train.log_every=1"])
            XCTAssertTrue(log.contains(expected), "\(label): \(log)")
        }
    }

    /// A busy rank's experts run on an idle one for a pass (`ExpertBalance`): the runner does
    /// what the owner would, so moving changes no bit. A zero router sends every token to
    /// experts 0 and 1 at first, all on rank 0, so experts move from the first step. Without
    /// clipping, the experts that stay home are updated inside backward and the moved ones after
    /// it, on their owners: the same bits as updating every expert after backward.
    func testMovingExpertsBetweenRanksChangesNoBit() throws {
        let job = try moeJob("experts = 8\ntop_k = 2\nhidden = 8\nrouter_init = \"zeros\"", steps: 30)
        let settings = ["train.log_every=1", "optimizer.clip_norm=0"]
        for ranks in [2, 4] {
            let moving = try loadModel(try train(ranks: ranks, name: "move\(ranks)", job: job.path, settings: settings), job.config)
            let fixed = try loadModel(try train(ranks: ranks, name: "fixed\(ranks)", job: job.path,
                                                settings: settings + ["parallel.balance_experts=false"]), job.config)
            let late = try loadModel(try train(ranks: ranks, name: "late\(ranks)", job: job.path,
                                               settings: settings + ["optimizer.update_in_backward=false"]), job.config)
            for (label, other) in [("moving experts", fixed), ("updating in backward", late)] {
                assertBitwiseEqual(moving.store.values, other.store.values, "\(ranks) ranks: \(label) changed the parameters")
            }
            // The moving run moved experts, and said so; the fixed one did not.
            let metrics = try String(contentsOfFile: "\(dir)/runs/move\(ranks)/metrics.jsonl", encoding: .utf8)
            let moved = metrics.split(separator: "\n").compactMap { line -> Double? in
                guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else { return nil }
                return object["moe0_moved"] as? Double
            }
            XCTAssertEqual(moved.count, 30, metrics)
            XCTAssertGreaterThan(moved.first ?? 0, 0, "\(ranks) ranks: the first step must move an expert: \(metrics)")
            let log = try String(contentsOfFile: "\(dir)/move\(ranks).out", encoding: .utf8)
            XCTAssertTrue(log.contains("experts run off their rank per pass)"), log)
            let fixedMetrics = try String(contentsOfFile: "\(dir)/runs/fixed\(ranks)/metrics.jsonl", encoding: .utf8)
            XCTAssertFalse(fixedMetrics.contains("moe0_moved"), fixedMetrics)
        }
    }
}
