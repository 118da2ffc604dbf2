import Cluster
import Foundation
import Kernels
import Layers
import Storage
import Training

/// `bench W3` and `bench W4` (docs/BENCHMARKS.md): W1 data-parallel with 128 samples per rank per
/// step, or W2 expert-parallel with 256, one BLAS
/// thread per rank, run under `mpirun -np P`. Measures, in one run:
/// 1. one rank alone (the others sleep), its per-rank batch: the weak-scaling reference, and
/// 2. all P ranks, global batch P times that: samples/s, efficiency, and time per step in
///    communication — the two alternating, repetition by repetition, so that both see the
///    same machine (this VM's speed drifts by 20% over a minute);
/// 3. the sync alone (gradient reduce-scatter and parameter allgather, which together move
///    what an allreduce of the gradients moves), at several bucket sizes, beside a blocking
///    `MPI_Allreduce` of the same bytes: in one call, and in calls of the bucket size.
struct ScalingBench {
    /// W3 (W1 on P ranks) or W4 (W2 on P ranks, experts spread over them).
    let workload: Workload
    let options: ScalingOptions
    /// W4: every expert runs on its owner (no `ExpertBalance`).
    let fixedExperts: Bool
    /// W4 and its one-rank baseline: every parameter updated after backward.
    let updateAfterBackward: Bool

    var data: String { options.data.data }
    var warmup: Int { options.timing.warmup }
    var steps: Int { options.timing.steps }
    var repeats: Int { options.timing.repeats }
    /// Bucket size for the training run; nil takes the config default.
    var bucketKiB: Int? { options.bucketKiB }
    /// Bucket sizes for the sync-alone table.
    var sweepKiB: [Int] { options.sweepKiB.values }

    func run() throws {
        let world = try MPIWorld.start()
        BLAS.setThreads(1)
        let say: (String) -> Void = { if world.isCoordinator { print($0); fflush(nil) } }
        var one = try workload.config(dataDir: data, epochs: 1, ranks: 1)
        var all = try workload.config(dataDir: data, epochs: 1, ranks: world.size)
        if updateAfterBackward {
            one.optimizer.updateInBackward = false
            all.optimizer.updateInBackward = false
        }
        let per = workload.samplesPerRank
        if let bucketKiB { all.parallel.bucketBytes = bucketKiB * 1024 }
        if fixedExperts { all.parallel.balanceExperts = false }
        all.parallel.shardParameters = options.shardParameters
        let (train, test) = try one.data.load()
         say("switchboard \(Switchboard.version) bench \(workload.rawValue); \(BLAS.config); \(MPIWorld.libraryVersion)")
        say("machine: \(cpuModel()), \(ProcessInfo.processInfo.activeProcessorCount) cores; "
            + "ranks \(world.size) × 1 BLAS thread; OpenBLAS \(BLAS.coreName)")

        // 1 and 2, alternating: one rank alone (the others asleep in a barrier), then all.
        let single = world.isCoordinator ? try Trainer(config: one, comm: try MPIWorld.alone(), train: train, test: test) : nil
        let trainer = try Trainer(config: all, comm: world, train: train, test: test)
        try single.map { try warm($0) }
        try world.barrier("bench: one rank alone", idle: true)
        try warm(trainer)
        var alone = Timing(), timing = Timing()
        for _ in 0..<repeats {
            if let single { try timeSteps(single, into: &alone) }
            try world.barrier("bench: one rank alone", idle: true)
            try timeSteps(trainer, into: &timing)
        }
        timing.finish(steps: repeats * steps)
        // Moves over the warm-up and timed steps of the P-rank trainer.
        let moved = trainer.model.layers((any ExpertLayer).self).map { layer in
            (layer as? any ReportsTelemetry)?.takeReport(rankLoad: { _ in (0, 0) }).number("moved") ?? 0
        }
        let rate = median(timing.rates), base = world.isCoordinator ? median(alone.rates) : 0
        let buckets = trainer.gradientSync.buckets.count
        // The model's gradients, the same on every rank (a rank's arena holds its own experts only).
        let trainable = trainer.model.store.parameters.reduce(0) { $0 + ($1.frozen ? 0 : $1.count) }
        let bytes = trainable * 4
        say("")
        say("1 rank alone, batch \(per): \(Int(base)) samples/s (median of \(repeats) × \(steps) steps; runs \(list(alone.rates)))")
        if let placement = trainer.placement, world.size > 1 {
            say("experts (each MoE layer): " + placement.description.replacingOccurrences(of: "\n", with: "; "))
            say(trainer.movesExperts
                ? "  run elsewhere when their rank is busier (ExpertBalance): " + moved.map { fixed($0, 2) }.joined(separator: " and ")
                  + " experts per pass in the MoE layers"
                : "  each always run by its own rank")
        }
        say("\(world.size) ranks, global batch \(per * world.size)\(options.shardParameters ? ", shard_parameters" : ""): "
            + "\(Int(rate)) samples/s (median; runs \(list(timing.rates)))")
        say("  weak-scaling efficiency: \(Int(rate)) / (\(world.size) × \(Int(base))) = \(fixed(rate / (Double(world.size) * base), 3))")
        let synced = trainer.gradientSync.buckets.reduce(0) { $0 + $1.count } * 4
        say("  gradients synced: \(fixed(Double(synced) / 1e6, 2)) MB in \(buckets) bucket\(buckets == 1 ? "" : "s")"
            + (options.shardParameters ? " (one per layer)" : " of \(all.parallel.bucketBytes / 1024) KiB")
            + (synced < bytes ? " (of \(fixed(Double(bytes) / 1e6, 2)) MB: each expert's gradient stays with its owner)" : ""))
        say("  communication per step (rank 0), of a \(fixed(1000 * timing.secondsPerStep, 1)) ms step: "
            + "\(fixed(1000 * timing.progressPerStep, 2)) ms reduce-scattering buckets between layers, "
            + "\(fixed(1000 * timing.scatterPerStep, 2)) ms finishing that after backward, "
            + "\(fixed(1000 * timing.gatherPerStep, 2)) ms \(options.shardParameters ? "waiting before layers for their gathers (and in backward the reduce-scatter before)" : "allgathering parameters"); "
            + "\(fixed(1000 * timing.waitPerStep, 2)) ms of all collectives spent waiting on other ranks")
        say("  the sync's ring sent \(fixed(timing.bytesPerStep / 1e6, 2)) MB per step from rank 0 "
            + "(\(fixed(timing.bytesPerStep / Double(synced), 2)) × the synced gradients)")

        // 3. The sync alone against MPI_Allreduce of the same bytes.
        guard world.size > 1 else { return }
        say("")
        say("sync alone, \(fixed(Double(bytes) / 1e6, 2)) MB (reduce-scatter + allgather; best of 5 × 10; GB/s = gradient bytes / time):")
        say("  bucket KiB  buckets  bucketed sync  MPI_Allreduce in bucket-size calls  MPI_Allreduce whole  sync ÷ whole")
        let buffer = Tensor(shape: [trainable]), values = Tensor(shape: [buffer.count])
        let whole = try bandwidth(buffer, world) { try world.referenceAllreduceSum(buffer.data, count: buffer.count) }
        for kib in sweepKiB {
            let sync = try ShardedSync(comm: world, grads: buffer.data, values: values.data, count: buffer.count, bucketBytes: kib * 1024)
            let bucketed = try bandwidth(buffer, world) {
                sync.begin()
                try sync.gradientsFinal(from: 0)
                try sync.finishReduceScatter()
                try sync.gatherParameters()
            }
            let calls = try bandwidth(buffer, world) {
                for r in sync.buckets { try world.referenceAllreduceSum(buffer.data + r.lowerBound, count: r.count) }
            }
            say("  " + [pad(String(kib), 10), pad(String(sync.buckets.count), 7), pad(fixed(bucketed, 2) + " GB/s", 13),
                        pad(fixed(calls, 2) + " GB/s", 34), pad(fixed(whole, 2) + " GB/s", 19),
                        pad(fixed(bucketed / whole, 3), 12)].joined(separator: "  "))
        }
    }

    /// Samples/s of each timed run, and this rank's time in communication over all of them
    /// (totals, then per step after `finish`).
    struct Timing {
        var rates: [Double] = []
        var waitPerStep = 0.0, progressPerStep = 0.0, scatterPerStep = 0.0, gatherPerStep = 0.0, secondsPerStep = 0.0
        /// Bytes rank 0 sent in the sync's ring.
        var bytesPerStep = 0.0

        mutating func finish(steps: Int) {
            let n = Double(steps)
            waitPerStep /= n
            progressPerStep /= n
            scatterPerStep /= n
            gatherPerStep /= n
            secondsPerStep /= n
            bytesPerStep /= n
        }
    }

    func warm(_ trainer: Trainer) throws {
        for i in 0..<warmup { _ = try trainer.trainStep(epoch: 0, batch: i % trainer.order.batchesPerEpoch) }
    }

    /// One timed run of `steps` steps.
    func timeSteps(_ trainer: Trainer, into timing: inout Timing) throws {
        let batches = trainer.order.batchesPerEpoch
        try trainer.comm.barrier("bench: start of a timed run")
        trainer.comm.watchdog.resetWaitTime()
        let t0 = ContinuousClock.now
        var samples = 0
        for _ in 0..<steps {
            samples += try trainer.trainStep(epoch: 0, batch: trainer.step % batches).rows
            timing.progressPerStep += trainer.gradientSync.lastProgressSeconds
            timing.scatterPerStep += trainer.gradientSync.lastScatterSeconds
            timing.gatherPerStep += trainer.gradientSync.lastGatherSeconds
            timing.bytesPerStep += Double(trainer.gradientSync.bytesSent)
        }
        let seconds = (ContinuousClock.now - t0).seconds
        timing.secondsPerStep += seconds
        timing.waitPerStep += trainer.comm.watchdog.waitSeconds
        timing.rates.append(Double(samples) / seconds)
    }

    /// Best GB/s of `body` over `buffer`'s bytes, 5 trials of 10 calls, ranks aligned by a
    /// barrier before each trial. The buffer is refilled so that repeated sums stay finite.
    func bandwidth(_ buffer: Tensor, _ world: Communicator, _ body: () throws -> Void) throws -> Double {
        var best = Double.infinity
        for _ in 0..<5 {
            buffer.data.update(repeating: 1e-3, count: buffer.count)
            try world.barrier("bench: sync rate")
            let t0 = ContinuousClock.now
            for _ in 0..<10 { try body() }
            best = min(best, (ContinuousClock.now - t0).seconds / 10)
        }
        // Every rank must report the same number: take rank 0's through a sum.
        var seconds = [world.isCoordinator ? best : 0]
        try seconds.withUnsafeMutableBufferPointer { try world.allreduceSum($0.baseAddress!, count: 1, "bench: rate") }
        return Double(buffer.count * 4) / seconds[0] / 1e9
    }

    func list(_ xs: [Double]) -> String { xs.map { String(Int($0)) }.joined(separator: ", ") }
    func pad(_ s: String, _ width: Int) -> String { String(repeating: " ", count: max(0, width - s.count)) + s }
}
