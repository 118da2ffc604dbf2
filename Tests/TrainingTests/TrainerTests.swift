import TestSupport
import CAllocCounter
import Cluster
import Kernels
import Layers
import Storage
import XCTest
@testable import Training

final class TrainerTests: XCTestCase {
    var dir = ""
    override func setUp() {
        dir = Fixtures.temporaryDirectory()
        Fixtures.dataset(in: dir)
        BLAS.setThreads(1)
    }
    override func tearDown() { try? FileManager.default.removeItem(atPath: dir) }

    func trainer(_ extra: String = "") throws -> Trainer {
        let config = try JobConfig.parse(Fixtures.job(dir: dir, extra: extra), source: "toy.toml")
        let (train, test) = try config.data.load()
        return try Trainer(config: config, comm: try MPIWorld.start(), train: train, test: test)
    }

    /// Same config and seed: bitwise-identical parameters, optimizer state and metrics.
    func testTwoRunsAreBitwiseIdentical() throws {
        let a = try trainer(), b = try trainer()
        let ra = try a.run(folder: nil, progress: nil), rb = try b.run(folder: nil, progress: nil)
        assertBitwiseEqual(a.model.store.values, b.model.store.values, "parameters")
        assertBitwiseEqual((a.optimizer as! AdamW).v, (b.optimizer as! AdamW).v, "AdamW v")
        XCTAssertEqual(ra.finalEvaluation.loss, rb.finalEvaluation.loss)
        XCTAssertEqual(ra.steps, 2 * 11)   // 512 samples in batches of 48: 10 full and one of 32
        // A different seed gives a different model.
        let other = try JobConfig.parse(Fixtures.job(dir: dir), source: "t", overrides: ["run.seed=6"])
        let c = try Trainer(config: other, comm: a.comm, train: a.trainSet, test: a.testSet)
        _ = try c.run(folder: nil, progress: nil)
        XCTAssertNotEqual(c.model.store.values.array, a.model.store.values.array)
    }

    /// The toy problem is learnable: the loop, loss, backward and optimizer work together.
    func testLearnsTheToyProblem() throws {
        let t = try trainer()
        let before = try t.evaluate(t.testSet)
        let summary = try t.run(folder: nil, progress: nil)
        XCTAssertGreaterThan(summary.finalEvaluation.accuracy, 0.9, "accuracy \(summary.finalEvaluation.accuracy)")
        XCTAssertLessThan(summary.finalEvaluation.loss, before.loss)
    }

    func testMaxStepsStopsEarlyAndEvaluates() throws {
        let t = try trainer("")
        let config = try JobConfig.parse(Fixtures.job(dir: dir), source: "t", overrides: ["train.max_steps=3"])
        let u = try Trainer(config: config, comm: t.comm, train: t.trainSet, test: t.testSet)
        let s = try u.run(folder: nil, progress: nil)
        XCTAssertEqual(s.steps, 3)
        XCTAssertEqual(u.totalSteps, 3)
        XCTAssertEqual(s.finalEvaluation.samples, 128)
    }

    /// Without clipping the gradient norm is taken only on the steps that are logged.
    func testGradientNormIsTakenExactlyOnLoggedSteps() throws {
        let base = try trainer()
        let cfg = try JobConfig.parse(Fixtures.job(dir: dir), source: "t",
                                      overrides: ["optimizer.clip_norm=0", "train.log_every=4", "train.max_steps=9"])
        let t = try Trainer(config: cfg, comm: base.comm, train: base.trainSet, test: base.testSet)
        var finite: [Int] = []
        for b in 0..<9 {
            let r = try t.trainStep(epoch: 0, batch: b)
            if r.gradNorm.isFinite { XCTAssertGreaterThan(r.gradNorm, 0); finite.append(r.step) }
        }
        XCTAssertEqual(finite, [4, 8, 9])
        XCTAssertEqual(finite, (1...9).filter { isLoggedStep($0, every: 4, total: 9) })
    }

    /// After the first step, a training step makes no heap allocation on this thread, in fp32
    /// and bf16 (on this CPU's bf16 path, oneDNN's or emulated). BLAS runs at one thread; what
    /// the libraries allocate inside their products (oneDNN's execute, OpenBLAS's small-matrix
    /// kernels for AVX-512) is counted apart.
    func testTrainingStepAllocatesNothingAfterTheFirst() throws {
        #if DEBUG
        throw XCTSkip("allocation-free stepping is a property of the optimized build: run the suite as scripts/test does (release)")
        #endif
        let moe = ToyModel.moe("experts = 4\nhidden = 8\nz_loss = 0.001\ndropless = false\ncapacity_factor = 1.0")
        // A zero router and top-1 leave experts 1–3 without tokens at first.
        let skewed = ToyModel.moe("experts = 4\ntop_k = 1\nhidden = 8\nrouter_init = \"zeros\"")
        // (model, clip_norm): without clipping the experts are updated inside backward.
        let models = [(ToyModel.residual, 1), (.custom("kind = \"stack\"\nhidden = [16, 16]\nactivation = \"relu\""), 1), (moe, 1), (moe, 0), (skewed, 0),
                      (.fff, 1), (.hourglass, 1), (.lowRank, 1), (.sigmaMoE, 0)]
        // Heap allocations in the 11 steps after a job's first (the last in a new epoch, which
        // reshuffles in place).
        func allocations(_ text: String) throws -> UInt64 {
            let config = try JobConfig.parse(text, source: "t"), (train, test) = try config.data.load()
            let t = try Trainer(config: config, comm: try MPIWorld.start(), train: train, test: test)
            _ = try t.trainStep(epoch: 0, batch: 0)
            let before = sb_thread_allocations()
            for b in 1..<11 { _ = try t.trainStep(epoch: 0, batch: b) }
            _ = try t.trainStep(epoch: 1, batch: 0)
            return sb_thread_allocations() - before
        }
        for (model, clip) in models {
            for precision in Precision.requestable {
                let text = Fixtures.job(dir: dir, model: model, settings: ["optimizer.clip_norm": "\(clip)",
                                                                           "train.precision": "\"\(precision)\"",
                                                                           "train.bf16_emulation": "true"])
                let made = try allocations(text)
                XCTAssertEqual(made, 0, "\(made) heap allocations in 11 training steps (\(model), clip \(clip), \(precision))")
            }
        }
        // Micro-batches: passes of 12 rows, with the pre-pass of batch statistics (MoE, FFF)
        // or statistics per pass.
        for (model, statistics) in [(ToyModel.residual, "batch"), (moe, "batch"), (moe, "micro_batch"), (.fff, "batch"), (.sigmaMoE, "batch")] {
            var text = Fixtures.job(dir: dir, model: model, settings: ["train.micro_batch": "12"])
            if case .moe = model { text = Fixtures.set("moe.statistics", "\"\(statistics)\"", in: text) }
            let made = try allocations(text)
            XCTAssertEqual(made, 0, "\(made) heap allocations in 11 training steps of 4 passes (\(model), statistics \(statistics))")
        }
        // HDF5 input, in 3 files, read ahead on a thread of its own (whose allocations are not
        // this thread's): taking the rows read allocates nothing here.
        for (split, parts) in [("train", [0..<200, 200..<400, 400..<512]), ("test", [0..<128])] {
            let images = try IDXReader.read("\(dir)/\(split)-images", dimensions: 3).1, labels = try IDXReader.read("\(dir)/\(split)-labels", dimensions: 1).1
            for (f, part) in parts.enumerated() {
                let file = try HDF5File.create("\(dir)/\(split)-\(f).h5")
                try images.withUnsafeBufferPointer { try file.writeUInt8("x", shape: [part.count, 8, 8], $0.baseAddress! + part.lowerBound * 64, chunkBytes: 1024) }
                try labels.withUnsafeBufferPointer { try file.writeUInt8("y", shape: [part.count], $0.baseAddress! + part.lowerBound, chunkBytes: 1024) }
                try file.close()
            }
        }
        let hdf5 = Fixtures.job(dir: dir, settings: ["data.train_images": nil, "data.train_labels": nil, "data.test_images": nil,
                                                     "data.test_labels": nil, "data.format": "\"hdf5\"", "data.train_file": "\"train-*.h5\"",
                                                     "data.test_file": "\"test-0.h5\""])
        let made = try allocations(hdf5)
        XCTAssertEqual(made, 0, "\(made) heap allocations in 11 training steps from 3 HDF5 files")
        // Every load but the first found its rows read ahead (with micro-batches of 12, four a step).
        let micro = try JobConfig.parse(Fixtures.set("train.micro_batch", "12", in: hdf5), source: "t"), data = try micro.data.load()
        XCTAssertTrue(RowPrefetcher.isAvailable, "HDF5 is not thread-safe here: \(RowPrefetcher.isAvailableText)")
        let t = try Trainer(config: micro, comm: try MPIWorld.start(), train: data.train, test: data.test)
        for b in 0..<11 { _ = try t.trainStep(epoch: 0, batch: b) }
        _ = try t.trainStep(epoch: 1, batch: 0)
        XCTAssertEqual(data.train.gathersReadAhead, 10 * 4 + 3 + 4 - 1, "gathers of 12 steps, the 11th of 32 rows in 3 passes")
        print("allocations inside the libraries' products on this thread, all models: \(sb_thread_library_allocations())")
    }

    /// A frozen parameter (the hourglass lift) keeps its initial bits through training, has
    /// no gradient and no optimizer state; the others train.
    func testFrozenParametersKeepTheirValuesAndHaveNoState() throws {
        let config = try JobConfig.parse(Fixtures.job(dir: dir, model: .hourglass), source: "t")
        XCTAssertEqual(config.frozen, ["embed"])
        let base = try trainer()
        let t = try Trainer(config: config, comm: base.comm, train: base.trainSet, test: base.testSet)
        let store = t.model.store
        let initial = Model(config.model, inputs: 64, classes: 4, maxRows: 1, seed: config.run.seed)
        let lift = 64 * 32 + 32
        XCTAssertEqual(store.count - store.trainableCount, lift)
        XCTAssertEqual(store.grads.count, store.trainableCount)
        XCTAssertEqual(t.optimizer.state.map(\.values.count), [store.trainableCount, store.trainableCount])
        for b in 0..<12 { _ = try t.trainStep(epoch: 0, batch: b % 10) }
        for p in store.parameters {
            let now = Array(UnsafeBufferPointer(start: p.value, count: p.count))
            let q = initial.store[p.name]!
            let then = Array(UnsafeBufferPointer(start: q.value, count: q.count))
            if p.frozen {
                XCTAssertEqual(now, then, "\(p.name) is frozen")
                XCTAssertNil(p.grad)
            } else {
                XCTAssertNotEqual(now, then, "\(p.name) trains")
            }
        }
        XCTAssertEqual(store.parameters.filter(\.frozen).map(\.name), ["embed.weight", "embed.bias"])
    }

    /// An FFF model is evaluated soft (as trained) and hard (one leaf per sample); other
    /// models once.
    func testFFFEvaluationIsSoftAndHard() throws {
        let base = try trainer()
        for (model, hasHard) in [(ToyModel.fff, true), (.residual, false)] {
            let config = try JobConfig.parse(Fixtures.job(dir: dir, model: model), source: "t")
            let t = try Trainer(config: config, comm: base.comm, train: base.trainSet, test: base.testSet)
            for b in 0..<10 { _ = try t.trainStep(epoch: 0, batch: b) }
            // The FFF layers' telemetry, taken after a step as training takes it: each of the
            // last batch's 48 rows descends to one of the 4 leaves of each of the 2 layers, and
            // the balance is their entropy over log 4.
            let fields = t.telemetry().fields
            XCTAssertEqual(fields.map(\.0), hasHard ? ["fff0_leaves", "fff0_balance", "fff0_aux", "fff1_leaves", "fff1_balance", "fff1_aux"] : [])
            for layer in 0..<(hasHard && fields.count == 6 ? 2 : 0) {
                guard case .array(let leaves) = fields[3 * layer].1, case .double(let balance) = fields[3 * layer + 1].1 else {
                    XCTFail("fff\(layer) fields: \(fields)")
                    continue
                }
                let counts = leaves.compactMap { if case .int(let n) = $0 { n } else { nil } }
                guard counts.count == 4 else { XCTFail("fff\(layer) leaves: \(leaves)"); continue }
                XCTAssertEqual(counts.reduce(0, +), 48)
                XCTAssertEqual(balance, MoETelemetry.balance(counts), accuracy: 1e-12)
            }
            let e = try t.evaluate(t.testSet)
            XCTAssertEqual(e.hard != nil, hasHard)
            if let hard = e.hard {
                XCTAssertTrue(hard.loss.isFinite && (0...1).contains(hard.accuracy), "\(hard)")
                XCTAssertTrue(e.accuracyText.contains("(hard "), e.accuracyText)
            }
        }
    }

    /// Upcycling: an MoE model whose experts are all copies of the dense block's FFN, with a
    /// uniform router (zero at start) and gates that sum to 1, computes the dense model: its
    /// first evaluation has the dense model's accuracy, and its loss to rounding.
    func testAnUpcycledModelEvaluatesAsTheDenseModelAtStepZero() throws {
        let base = try trainer()
        for b in 0..<10 { _ = try base.trainStep(epoch: 0, batch: b) }
        let checkpoint = try XCTUnwrap(try base.saveCheckpoint(in: "\(dir)/dense", keepLast: 0, threads: 1))
        let dense = try base.evaluate(base.testSet)
        let text = Fixtures.job(dir: dir, model: .moe(width: 32, depth: 2, "experts = 4\ntop_k = 2\nhidden = 64\nrouter_init = \"zeros\""),
                                extra: "[init]\nfrom = \"\(checkpoint)\"\nupcycle = true\n")
        let config = try JobConfig.parse(text, source: "t")
        let moe = try Trainer(config: config, comm: base.comm, train: base.trainSet, test: base.testSet)
        let plan = try InitPlan(try XCTUnwrap(config.initialization), model: moe.model, source: "t")
        XCTAssertEqual(plan.fresh, ["blocks.0.moe.router.weight (the router starts as the job says)",
                                    "blocks.1.moe.router.weight (the router starts as the job says)"])
        XCTAssertEqual(plan.unused, [])
        try plan.apply(seed: config.run.seed)
        let w1 = moe.model.store["blocks.1.moe.experts.3.w1"]!, fc1 = base.model.store["blocks.1.fc1.weight"]!
        XCTAssertEqual(Array(UnsafeBufferPointer(start: w1.value, count: w1.count)), Array(UnsafeBufferPointer(start: fc1.value, count: fc1.count)))
        let upcycled = try moe.evaluate(moe.testSet)
        XCTAssertEqual(upcycled.accuracy, dense.accuracy)
        XCTAssertEqual(upcycled.loss, dense.loss, accuracy: 1e-5)
    }

    /// The MoE experts' update inside backward (`BackwardUpdates`) gives the same bits as the
    /// update after it: parameters and optimizer state after 14 steps, for AdamW and SGD, GELU
    /// and a gated activation, with and without biases, and with experts that get no tokens
    /// (a zero router, top-1: every token goes to expert 0, the others are updated after
    /// backward from zero gradients). The logged gradient norm agrees to float rounding (its
    /// sums of squares run in float lanes, over other chunks).
    func testUpdatingExpertsInBackwardChangesNoBit() throws {
        let base = try trainer()
        let cases: [(moe: String, optimizer: String)] = [
            ("experts = 4\ntop_k = 2\nhidden = 8", "adamw"),
            ("experts = 4\ntop_k = 2\nhidden = 8\nactivation = \"swiglu\"\nbias = false", "adamw"),
            ("experts = 4\ntop_k = 1\nhidden = 8\nrouter_init = \"zeros\"", "adamw"),
            ("experts = 3\ntop_k = 2\nhidden = 8\nactivation = \"geglu\"", "sgd"),
        ]
        for (moe, optimizer) in cases {
            let text = Fixtures.job(dir: dir, model: .moe(moe))
            func run(_ inBackward: Bool) throws -> (Trainer, [Double]) {
                let config = try JobConfig.parse(text, source: "t", overrides: [
                    "optimizer.name=\"\(optimizer)\"", "optimizer.clip_norm=0", "train.log_every=3",
                    "optimizer.update_in_backward=\(inBackward)"])
                let t = try Trainer(config: config, comm: base.comm, train: base.trainSet, test: base.testSet)
                XCTAssertEqual(t.updatesExpertsInBackward, inBackward)
                var norms: [Double] = []
                for b in 0..<14 { norms.append(try t.trainStep(epoch: b / 10, batch: b % 10).gradNorm) }
                return (t, norms)
            }
            let (early, earlyNorms) = try run(true), (late, lateNorms) = try run(false)
            let tensors = [("parameters", early.model.store.values, late.model.store.values)]
                + zip(early.optimizer.state, late.optimizer.state).map { ($0.name, $0.values, $1.values) }
            for (name, a, b) in tensors { assertBitwiseEqual(a, b, "\(name) (\(moe), \(optimizer))") }
            XCTAssertEqual(earlyNorms.map(\.isFinite), lateNorms.map(\.isFinite))
            for (a, b) in zip(earlyNorms, lateNorms) where a.isFinite {
                XCTAssertEqual(a, b, accuracy: 1e-6 * b, "gradient norm: \(moe), \(optimizer)")
            }
        }
        // Clipping needs every gradient before any update: then nothing is updated in backward.
        let clipped = try JobConfig.parse(Fixtures.job(dir: dir, model: .moe(depth: 1, "experts = 2\nhidden = 8")), source: "t")
        XCTAssertGreaterThan(clipped.optimizer.clipNorm, 0)
        XCTAssertFalse(try Trainer(config: clipped, comm: base.comm, train: base.trainSet, test: base.testSet).updatesExpertsInBackward)
    }

    /// A router that sends every token to one expert is reported as a collapse.
    func testMoETelemetryWarnsOfRouterCollapse() throws {
        let base = try trainer()
        let text = Fixtures.job(dir: dir, model: .moe(depth: 1, "experts = 4\ntop_k = 1\nhidden = 8"))
        let t = try Trainer(config: try JobConfig.parse(text, source: "t"), comm: base.comm, train: base.trainSet, test: base.testSet)
        let moe = t.model.moeLayers[0]
        moe.router.value.update(repeating: 0, count: moe.router.count)   // ties: expert 0 wins
        _ = try t.trainStep(epoch: 0, batch: 0)
        let report = t.telemetry()
        XCTAssertTrue(report.lines.contains("warning: blocks.0.moe: expert 0 took 100% of the assignments (router collapse?)"),
                      report.lines.joined(separator: "\n"))
        XCTAssertTrue(report.lines[0].hasPrefix("  blocks.0.moe: tokens per expert 0–48, dropped 0.0%, balance 0.000"), report.lines[0])
        XCTAssertEqual(report.fields.map(\.0), ["moe0_tokens", "moe0_dropped", "moe0_balance", "moe0_aux"])
    }

    /// The buffers of every layer are sized for a pass, not a batch: with micro-batches of 12
    /// a batch of 48 runs in passes of 12 rows, and evaluation's default chunk follows.
    func testBuffersAreSizedForTheMicroBatch() throws {
        let text = Fixtures.job(dir: dir, settings: ["train.micro_batch": "12", "train.eval_batch_size": nil])
        let config = try JobConfig.parse(text, source: "t")
        XCTAssertEqual(config.train.evalBatchSize, 12, "evaluation's chunk defaults to the micro-batch")
        let (train, test) = try config.data.load()
        let trainer = try Trainer(config: config, comm: try MPIWorld.start(), train: train, test: test)
        XCTAssertEqual(trainer.maxRows, 12)
        XCTAssertEqual(trainer.model.maxRows, 12)
        XCTAssertTrue(trainer.accumulates)
        let result = try trainer.trainStep(epoch: 0, batch: 0)
        XCTAssertEqual(result.rows, 48, "a step still trains on the whole batch")
        let explicit = try JobConfig.parse(Fixtures.set("train.eval_batch_size", "50", in: text), source: "t")
        XCTAssertEqual(explicit.train.evalBatchSize, 50, "an explicit eval_batch_size is kept")
    }
}
