import Cluster
import Foundation
import Kernels
import Training

/// `bench memory` (docs/BENCHMARKS.md), under `mpirun -np P`: each rank's peak resident memory
/// while training (a) the expert-heavy model of 256 experts and (b) a dense-heavy residual MLP
/// of about the same size, beside the ideal of a model whose state is sharded whole (a rank's
/// 1/P of the values, gradients and optimizer state, plus what the process held before the
/// model: libraries, the data; the layers' buffers come on top), and the step's samples/s; on several
/// ranks each model again with `[parallel] shard_parameters`. Run it at several P: per-rank
/// memory should fall as P grows.
struct MemoryBench {
    let options: MemoryBenchOptions

    /// The two models, as job files and overrides of them.
    static let models: [(name: String, job: String, settings: [String])] = [
        ("expert-heavy", "fashion-moe.toml", ["moe.experts=256"]),
        ("dense-heavy", "fashion-mlp.toml", ["model.width=2048", "model.expansion=4", "model.depth=4"]),
    ]

    /// Each model as it is, then with `shard_parameters` (on several ranks: on one it changes nothing).
    func runs(ranks: Int) -> [(name: String, job: String, settings: [String])] {
        Self.models.flatMap { m in
            [m] + (ranks > 1 ? [(m.name + ", shard_parameters", m.job, m.settings + ["parallel.shard_parameters=true"])] : [])
        }
    }

    func run() throws {
        let world = try MPIWorld.start()
        BLAS.setThreads(1)
        let say: (String) -> Void = { if world.isCoordinator { print($0); fflush(nil) } }
        say("switchboard \(Switchboard.version) bench memory; \(world.size) rank\(world.size == 1 ? "" : "s") × 1 BLAS thread; "
            + "\(options.steps) steps per model (samples/s over all but the first); machine: \(cpuModel())")
        for model in runs(ranks: world.size) {
            let path = "\(options.jobs)/\(model.job)"
            let text = try String(contentsOfFile: path, encoding: .utf8)
            let config = try JobConfig.parse(text, source: path, overrides: model.settings + [
                "train.threads=1", "data.dir=\"\(options.data.data)\""])
            let (train, test) = try config.data.load()
            // What the process holds before the model: libraries, MPI, the data.
            MachineMemory.resetPeak()
            let before = MachineMemory.peak ?? 0
            let trainer = try Trainer(config: config, comm: world, train: train, test: test)
            let estimate = MemoryEstimate(config: config, train: train, test: test, maxRows: trainer.maxRows, ranks: world.size, threads: 1)
            let clock = ContinuousClock()
            var start = clock.now
            for step in 0..<options.steps {
                if step == 1 { start = clock.now }
                _ = try trainer.trainStep(epoch: 0, batch: step % trainer.order.batchesPerEpoch)
            }
            let rate = Double(config.train.batchSize * (options.steps - 1)) / max((clock.now - start).seconds, 1e-9)
            var peaks = [Double](repeating: 0, count: world.size)
            peaks[world.rank] = MachineMemory.peak ?? 0
            try peaks.withUnsafeMutableBufferPointer { try world.allreduceSum($0.baseAddress!, count: $0.count, "bench: peak memory") }
            let store = trainer.model.store
            let stateFloats = Double(store.declaredCount) * Double(2 + trainer.optimizer.state.count)
            let ideal = before + 4 * stateFloats / Double(world.size)
            say("")
            say("\(model.name): \(path) --set \(model.settings.joined(separator: " --set ")) "
                + "(\(store.declaredCount.formatted()) parameters, batch \(config.train.batchSize))")
            for (r, peak) in peaks.enumerated() {
                say("  rank \(r): peak \(MemoryEstimate.text(peak))")
            }
            let most = peaks.max()!
            say("  largest \(MemoryEstimate.text(most)); ideal \(MemoryEstimate.text(ideal)) (before the model "
                + "\(MemoryEstimate.text(before)) + all model state / \(world.size)); estimate (model: line) "
                + "\(MemoryEstimate.text(estimate.total)); \(Int(rate)) samples/s")
        }
    }
}
