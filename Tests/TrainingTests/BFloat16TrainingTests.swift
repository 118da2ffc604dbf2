import Foundation
import Kernels
import Layers
import Storage
import TestSupport
import XCTest
@testable import Training

/// bf16 training by the real binary, on this CPU's bf16 path (oneDNN's from AVX-512 on,
/// emulated below it): bitwise repeatable and resumable at a fixed world size and thread
/// count, close across world sizes and across the two paths, and its checkpoints (fp32
/// master weights) move between precisions.
final class BFloat16TrainingTests: ToyDataTestCase {
    /// Across world sizes the ranks sum weight gradients in another order than one process
    /// does (in fp32 that alone stays under `MultiRankTests.tolerance`, 1e-5), and in bf16 a
    /// difference that small moves some roundings of weights and activations by a whole bf16
    /// step (2⁻⁸ relative), which training carries on. So the bound is set by bf16 itself:
    /// another world size must move the model less than half as far as bf16 moves it from the
    /// fp32 run of the same job (4e-3 to 6e-2 after 24 steps here), and never past 3e-3.
    static let tolerance = 3e-3

    func job(_ model: ToyModel, precision: Precision, steps: Int = 24, every: Int = 12) throws -> (path: String, config: JobConfig) {
        let text = Fixtures.job(dir: dir, model: model,
                                settings: ["train.epochs": "4", "train.max_steps": "\(steps)", "train.precision": "\"\(precision)\"",
                                           "train.bf16_emulation": "true"],
                                extra: "[checkpoint]\nevery_steps = \(every)\nkeep_last = 0\n")
        let path = try writeJob(text)
        return (path, try JobConfig.parse(text, source: path))
    }

    func checksums(_ path: String) throws -> [String: String] {
        let main = try HDF5File.open("\(path)/\(CheckpointManifest.mainFile)")
        let m = try CheckpointManifest.decode(try main.readBytes(CheckpointManifest.manifestDataset, limit: 1 << 24), source: path)
        return Dictionary(uniqueKeysWithValues: m.tensors.map { ($0.name, $0.checksum) })
    }

    /// Twice the same bf16 run gives the same bits; resumed from its middle it ends on them
    /// too; and it is not the fp32 run (the products really are bf16) but close to it.
    func testRunsRepeatAndResumeBitwise() throws {
        for (label, model) in [("residual", ToyModel.residual), ("sigma", .sigmaMoE), ("fff", .fff),
                               ("moe", .moe("experts = 4\ntop_k = 2\nhidden = 16\nbalance_loss = 0.01"))] {
            let (path, config) = try job(model, precision: .bf16)
            let first = try train(ranks: 1, name: "\(label)a", job: path)
            let output = try String(contentsOfFile: "\(dir)/\(label)a.out", encoding: .utf8)
            XCTAssertTrue(output.contains(Precision.bf16.onThisCPU == .bf16 ? "products: bf16 on oneDNN" : "products: bf16 emulated on"), output)
            _ = try train(ranks: 1, name: "\(label)b", job: path)
            let final = CheckpointFolder.name(step: 24), middle = "\(dir)/runs/\(label)a/\(CheckpointFolder.name(step: 12))"
            XCTAssertEqual(try checksums("\(dir)/runs/\(label)a/\(final)"), try checksums("\(dir)/runs/\(label)b/\(final)"),
                           "\(label): two bf16 runs")
            let again = try mpirun(ranks: 1, name: "\(label)c", job: path, extraArguments: ["--resume", middle])
            XCTAssertEqual(again.code, 0, again.output)
            XCTAssertEqual(try checksums("\(dir)/runs/\(label)a/\(final)"), try checksums("\(dir)/runs/\(label)c/\(final)"),
                           "\(label): resumed from step 12")
            let fp32 = try train(ranks: 1, name: "\(label)f", job: path, settings: ["train.precision=\"fp32\""])
            let worst = Self.maxRelativeDifference(try loadModel(fp32, config), try loadModel(first, config))
            XCTAssertGreaterThan(worst.0, 1e-6, "\(label): the bf16 run is the fp32 run: are its products bf16?")
            XCTAssertLessThan(worst.0, 0.1, "\(label): bf16 far from fp32 in \(worst.1)")
            print("\(label): bf16 vs fp32 after 24 steps: max relative L2 difference \(worst.0) (\(worst.1))")
        }
    }

    func testOneTwoAndFourRanksTrainTheSameModel() throws {
        for (label, model) in [("residual", ToyModel.residual), ("moe", .moe("experts = 4\ntop_k = 2\nhidden = 16\nbalance_loss = 0.01"))] {
            let (path, config) = try job(model, precision: .bf16, steps: 30, every: 30)
            let one = try loadModel(try train(ranks: 1, name: "\(label)1", job: path), config)
            let fp32 = try loadModel(try train(ranks: 1, name: "\(label)fp32", job: path, settings: ["train.precision=\"fp32\""]), config)
            let precisionEffect = Self.maxRelativeDifference(fp32, one).0
            let bound = min(Self.tolerance, precisionEffect / 2)
            for ranks in [2, 4] {
                let other = try loadModel(try train(ranks: ranks, name: "\(label)\(ranks)", job: path), config)
                let worst = Self.maxRelativeDifference(one, other)
                XCTAssertLessThanOrEqual(worst.0, bound, "\(label), \(ranks) ranks: max relative L2 difference \(worst.0) in \(worst.1) "
                                         + "(bf16 against fp32: \(precisionEffect))")
                print("bf16 \(label), \(ranks) ranks vs 1: max relative L2 difference \(worst.0) (\(worst.1)); bf16 vs fp32 \(precisionEffect)")
            }
        }
    }

    /// Where oneDNN multiplies bf16, a run capped to AVX2 (ONEDNN_MAX_CPU_ISA, read as the CPU)
    /// takes the emulated path, whose products differ from oneDNN's only in the order of their
    /// fp32 sums: it must train the model the oneDNN path trains as closely as another world
    /// size does. Where oneDNN has no bf16 matmul there is only the emulated path: bf16 is
    /// refused unless the job accepts emulation, and then says it is emulated.
    func testTheEmulatedPathTrainsTheModelOfOneDNNsBFloat16() throws {
        for (label, model) in [("residual", ToyModel.residual), ("moe", .moe("experts = 4\ntop_k = 2\nhidden = 16\nbalance_loss = 0.01"))] {
            let (path, config) = try job(model, precision: .bf16, steps: 30, every: 30)
            guard OneDNN.supportsBFloat16 else {
                let refused = try mpirun(ranks: 1, name: "\(label)r", job: path, settings: ["train.bf16_emulation=false"])
                XCTAssertEqual(refused.code, 2, refused.output)
                XCTAssertTrue(refused.output.contains("this CPU has no native bf16 arithmetic (oneDNN runs \(OneDNN.isa) here"), refused.output)
                _ = try train(ranks: 1, name: "\(label)e", job: path)
                let output = try String(contentsOfFile: "\(dir)/\(label)e.out", encoding: .utf8)
                XCTAssertTrue(output.contains("products: bf16 emulated on"), output)
                continue
            }
            let oneDNN = try loadModel(try train(ranks: 1, name: "\(label)n", job: path), config)
            let emulated = try loadModel(try train(ranks: 1, name: "\(label)e", job: path,
                                                   environment: ["ONEDNN_MAX_CPU_ISA": "AVX2"]), config)
            let output = try String(contentsOfFile: "\(dir)/\(label)e.out", encoding: .utf8)
            XCTAssertTrue(output.contains("products: bf16 emulated on"), output)
            let fp32 = try loadModel(try train(ranks: 1, name: "\(label)fp32", job: path, settings: ["train.precision=\"fp32\""]), config)
            let precisionEffect = Self.maxRelativeDifference(fp32, oneDNN).0
            let worst = Self.maxRelativeDifference(oneDNN, emulated)
            XCTAssertGreaterThan(Self.maxRelativeDifference(fp32, emulated).0, 1e-6, "\(label): the emulated run is the fp32 run")
            XCTAssertLessThanOrEqual(worst.0, min(Self.tolerance, precisionEffect / 2),
                                     "\(label): emulated against oneDNN's bf16: max relative L2 difference \(worst.0) in \(worst.1) "
                                     + "(bf16 against fp32: \(precisionEffect))")
            print("bf16 \(label), emulated vs oneDNN: max relative L2 difference \(worst.0) (\(worst.1)); bf16 vs fp32 \(precisionEffect)")
        }
    }

    /// fp32 → bf16 → fp32: each run continues the other's checkpoint. A bf16 run saves fp32
    /// master weights (not rounded to bf16) and AdamW state in the same tensors as an fp32
    /// run, and what continues from it does so deterministically.
    func testCheckpointsMoveBetweenPrecisions() throws {
        let (path, config) = try job(.residual, precision: .fp32, steps: 36, every: 12)
        let fp32 = "\(dir)/runs/fp32/\(CheckpointFolder.name(step: 12))"
        _ = try train(ranks: 1, name: "fp32", job: path, settings: ["train.max_steps=12"])
        let bf16 = "\(dir)/runs/bf16/\(CheckpointFolder.name(step: 24))"
        let b = try mpirun(ranks: 1, name: "bf16", job: path, settings: ["train.precision=\"bf16\"", "train.max_steps=24"],
                           extraArguments: ["--resume", fp32])
        XCTAssertEqual(b.code, 0, b.output)
        XCTAssertTrue(b.output.contains("resumed from \(fp32): step 12"), b.output)
        XCTAssertEqual(Set(try checksums(fp32).keys), Set(try checksums(bf16).keys), "the same tensors in either precision")
        let verify = try Launcher.run(binary, ["inspect", "verify", bf16])
        XCTAssertEqual(verify.code, 0, verify.output)

        let m = Model(config.model, inputs: 64, classes: 4, maxRows: 1, seed: 999)
        try ModelFile.read(m, from: "\(dir)/runs/bf16/model.h5")
        let values = m.store.values.array
        let rounded = roundedToBFloat16(values)
        let exact = zip(values, rounded).filter { $0.bitPattern == $1.bitPattern }.count
        XCTAssertLessThan(exact, values.count / 2, "\(exact) of \(values.count) weights are bf16 values: masters must stay fp32")

        var ends: [[String: String]] = []
        for name in ["back", "backAgain"] {
            let r = try mpirun(ranks: 1, name: name, job: path, extraArguments: ["--resume", bf16])
            XCTAssertEqual(r.code, 0, r.output)
            XCTAssertTrue(r.output.contains("resumed from \(bf16): step 24"), r.output)
            XCTAssertTrue(r.output.contains("products: fp32"), r.output)
            ends.append(try checksums("\(dir)/runs/\(name)/\(CheckpointFolder.name(step: 36))"))
        }
        XCTAssertEqual(ends[0], ends[1], "fp32 continued from a bf16 checkpoint, twice")
    }
}
