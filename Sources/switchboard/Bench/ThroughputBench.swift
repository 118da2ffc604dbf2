import ArgumentParser
import Cluster
import Errors
import Foundation
import Kernels
import Layers
import Storage
import Training

/// `bench W1` and `bench W2` (docs/BENCHMARKS.md): the workload's training steps timed at each
/// thread count (and micro-batch), beside the matmul rates measured in the same run, their
/// peak memory and heap allocations; then, with `--epochs`, the workload trained.
struct ThroughputBench {
    let workload: Workload
    let options: ThroughputOptions
    /// W2: `[moe] statistics`, and the experts updated after backward to compare.
    var moeStatistics: JobConfig.MoEStatistics = .batch
    var updateAfterBackward = false

    var threads: PositiveIntegers { options.threads.threads }
    var warmup: Int { options.timing.warmup }
    var steps: Int { options.timing.steps }
    var repeats: Int { options.timing.repeats }
    var epochs: Int { options.epochs }
    var data: String { options.data.data }
    var precision: Precision { options.precision }
    var batch: Int? { options.batch }
    var microBatch: PositiveIntegers? { options.microBatch }
    var countAllocations: Bool { options.countAllocations }

    func run() throws {
        let w = workload
        let threadCounts = threads.values
        // Counted before MPI starts here: a child started by an MPI process inherits its
        // launcher's environment.
        let allocations = countAllocations ? [:] : try allocationCounts(w, threadCounts)
        let comm = try MPIWorld.start()
        var config = try w.config(dataDir: data, epochs: max(epochs, 1))
        if updateAfterBackward { config.optimizer.updateInBackward = false }
        config.train.precision = precision
        // bench measures what it is asked for: emulated bf16 too, where this CPU has no native bf16.
        config.train.bf16Emulation = true
        if let batch { config.train.batchSize = batch }
        config.train.moeStatistics = moeStatistics
        try config.train.checkPrecision()
        let microBatches: [Int?] = microBatch?.values ?? [nil]
        for m in microBatches {
            var c = config
            c.train.microBatch = m
            try c.train.checkMicroBatch(ranks: 1)
        }
        let (train, test) = try config.data.load()
        if countAllocations {
            config.train.microBatch = microBatches[0]
            return try count(config, comm: comm, train: train, test: test, threads: threadCounts[0])
        }

        print("switchboard \(Switchboard.version) bench \(w.rawValue); \(BLAS.config); \(MPIWorld.libraryVersion)")
        print("machine: \(cpuModel()), \(ProcessInfo.processInfo.activeProcessorCount) cores; OpenBLAS \(BLAS.coreName) "
              + "(thread timeout 2^\(getenv("OPENBLAS_THREAD_TIMEOUT").map { String(cString: $0) } ?? "28") cycles); ranks \(comm.size)")
        // What decides these numbers besides the CPU, so runs on different machines compare.
        print("products: \(MatmulLibrary.summary(config.train.products))")
        if w == .w2 { print("MoE statistics over the \(moeStatistics == .batch ? "batch" : "micro-batch")") }
        for t in threadCounts {
            for micro in microBatches {
                var run = config
                run.train.microBatch = micro
                // As a job file's default: evaluation's chunk at most the micro-batch.
                if let micro { run.train.evalBatchSize = min(run.train.evalBatchSize, micro) }
                try measure(run, threads: t, comm: comm, train: train, test: test,
                            allocations: allocations[AllocationKey(threads: t, micro: micro)])
            }
        }
        if epochs > 0 {
            BLAS.setThreads(threadCounts.max()!)
            config.train.microBatch = microBatches.last!
            if let micro = microBatches.last! { config.train.evalBatchSize = min(config.train.evalBatchSize, micro) }
            let trainer = try Trainer(config: config, comm: comm, train: train, test: test)
            let summary = try trainer.run(folder: nil, run: nil, threads: threadCounts.max()!, progress: nil)
            print("")
            print("\(epochs) epochs at \(threadCounts.max()!) threads: training loop \(fixed(summary.trainSeconds, 1)) s "
                  + "(\(Int(summary.samplesPerSecond)) samples/s, evaluation excluded), "
                  + "test accuracy \(fixed(100 * summary.finalEvaluation.accuracy, 2))%")
        }
    }

    /// Times `config`'s training steps at `threads`, with the same-run matmul rates, the peak
    /// resident memory of its steps, and `allocations` (counted apart) when there are.
    func measure(_ config: JobConfig, threads t: Int, comm: Communicator, train: Dataset, test: Dataset,
                 allocations counted: (ours: Int, libraries: Int, products: Int)?) throws {
        BLAS.setThreads(t)
        // Peak memory from here: this trainer's buffers and steps, not an earlier run's.
        let peakReset = MachineMemory.resetPeak()
        let trainer = try Trainer(config: config, comm: comm, train: train, test: test)
        let flops = config.model.size(inputs: train.width, classes: config.data.classes, maxRows: 1,
                                      frozen: config.frozen).trainingFlops
        let products = config.train.products
        for i in 0..<warmup { _ = try trainer.trainStep(epoch: 0, batch: i % trainer.order.batchesPerEpoch) }
        // Each repetition times the training steps, then the sgemm probes right after, so
        // both sides of the fraction see the same machine conditions; medians are reported.
        let shapes = Workload.gemmShapes(trainer.model, rows: trainer.passRows)
        var rates: [Double] = [], peaks: [Double] = [], owns: [Double] = [], dnnlPeaks: [Double] = [], dnnlOwns: [Double] = []
        var memory: Double?
        var batch = warmup
        for _ in 0..<repeats {
            let t0 = ContinuousClock.now
            var samples = 0
            for _ in 0..<steps {
                samples += try trainer.trainStep(epoch: 0, batch: batch % trainer.order.batchesPerEpoch).rows
                batch += 1
            }
            let seconds = (ContinuousClock.now - t0).seconds
            // Before the probes, whose matrices are not training's.
            if memory == nil { memory = peakReset ? MachineMemory.peak : nil }
            rates.append(Double(samples) / seconds)
            owns.append(GEMMProbe.rate(of: shapes))
            peaks.append(GEMMProbe.rate(.none, .none, m: 1024, n: 1024, k: 1024))
            dnnlOwns.append(GEMMProbe.rate(of: shapes, library: .oneDNN, precision: products))
            dnnlPeaks.append(GEMMProbe.rate(.none, .none, m: 1024, n: 1024, k: 1024, library: .oneDNN, precision: products))
        }
        let rate = median(rates), peak = median(peaks), own = median(owns)
        let dnnlPeak = median(dnnlPeaks), dnnlOwn = median(dnnlOwns)
        let achieved = rate * flops / 1e9
        let rows = trainer.passRows, batchSize = config.train.batchSize, passes = trainer.passes(rows: batchSize)
        let runs = rates.map { String(Int($0)) }.joined(separator: ", ")
        print("")
        print("threads \(t), batch \(batchSize) in \(passes) pass\(passes == 1 ? "" : "es") of \(rows) rows: \(Int(rate)) samples/s "
              + "(median of \(repeats) × \(steps) steps; runs \(runs))")
        if !trainer.model.layers((any ExpertLayer).self).isEmpty {
            print("  experts updated \(trainer.updatesExpertsInBackward ? "inside" : "after") backward")
        }
        let resident = memory.map { MemoryEstimate.text($0) } ?? "unknown (no /proc/self/clear_refs to start it over)"
        print("  peak resident memory of the process from the trainer's construction through its steps: \(resident)")
        print("  \(fixed(flops / 1e6, 2)) MFLOP/sample → \(fixed(achieved, 1)) GFLOP/s")
        print("  sgemm 1024³: \(fixed(peak, 1)) GFLOP/s → fraction \(fixed(achieved / peak, 3))")
        print("  sgemm on the workload's shapes: \(fixed(own, 1)) GFLOP/s → fraction \(fixed(achieved / own, 3))")
        print("  oneDNN \(products) matmul 1024³: \(fixed(dnnlPeak, 1)) GFLOP/s → fraction \(fixed(achieved / dnnlPeak, 3))")
        print("  oneDNN \(products) matmul on the workload's shapes: \(fixed(dnnlOwn, 1)) GFLOP/s → fraction \(fixed(achieved / dnnlOwn, 3))")
        // OpenBLAS 0.3.21's threaded sgemm allocates its job array on every call, and its
        // small-matrix kernels for AVX-512 a packing buffer; oneDNN's execute builds its
        // argument list and memory objects on the heap. Those are counted apart.
        if let counted {
            print("  heap allocations in \(repeats * steps) steps (the same steps, counted in a run of their own): \(counted.ours); "
                  + "inside the libraries' products (\(counted.products) on oneDNN, the rest on OpenBLAS): \(counted.libraries)")
        } else {
            print("  heap allocations: not counted (\(LaunchEnvironment.allocationCounterFile) is not beside the binary; `swift build -c release` builds it)")
        }
        fflush(nil)
    }

    /// Heap allocations in the timed steps at each thread count, counted by a child process
    /// of this program under the allocation counter (`--count-allocations`): the counter
    /// interposes malloc, which would slow the timed runs themselves. Empty without it.
    func allocationCounts(_ w: Workload, _ threadCounts: [Int]) throws -> [AllocationKey: (ours: Int, libraries: Int, products: Int)] {
        guard LaunchEnvironment.allocationCounterLibrary != nil else { return [:] }
        var counts: [AllocationKey: (ours: Int, libraries: Int, products: Int)] = [:]
        for t in threadCounts {
            for micro in microBatch?.values ?? [nil] as [Int?] {
                let child = Process()
                child.executableURL = URL(fileURLWithPath: "/proc/self/exe")
                var arguments = ["bench", w.rawValue, "--threads", "\(t)", "--warmup", "\(warmup)", "--steps", "\(steps)",
                                 "--repeats", "\(repeats)", "--data", data, "--precision", precision.rawValue, "--count-allocations"]
                if w == .w2 { arguments += ["--moe-statistics", moeStatistics.rawValue] }
                if updateAfterBackward { arguments.append("--update-after-backward") }
                if let batch { arguments += ["--batch", "\(batch)"] }
                if let micro { arguments += ["--micro-batch", "\(micro)"] }
                child.arguments = arguments
                let out = Pipe()
                child.standardOutput = out
                try child.run()
                let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
                child.waitUntilExit()
                let fields = text.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }
                guard child.terminationStatus == 0, fields.count == 3 else {
                    throw BenchFailure(message: "bench: counting allocations at \(t) threads failed (the child exited with \(child.terminationStatus))")
                }
                counts[AllocationKey(threads: t, micro: micro)] = (fields[0], fields[1], fields[2])
            }
        }
        return counts
    }

    /// The child's part: the warm-up and the timed steps at `threads`, counting allocations.
    func count(_ config: JobConfig, comm: Communicator, train: Dataset, test: Dataset, threads: Int) throws {
        guard let read = AllocationCounter.read else { throw ValidationError("--count-allocations: the allocation counter is not loaded") }
        BLAS.setThreads(threads)
        let trainer = try Trainer(config: config, comm: comm, train: train, test: test)
        for i in 0..<warmup { _ = try trainer.trainStep(epoch: 0, batch: i % trainer.order.batchesPerEpoch) }
        let inside = AllocationCounter.readLibraries ?? { 0 }
        let before = read(), insideBefore = inside(), runsBefore = Matmul.oneDNNRuns
        for i in 0..<(repeats * steps) { _ = try trainer.trainStep(epoch: 0, batch: (warmup + i) % trainer.order.batchesPerEpoch) }
        // Read before print, whose variadic array is allocated first.
        let after = read(), insideAfter = inside(), runs = Matmul.oneDNNRuns - runsBefore
        print(after - before, insideAfter - insideBefore, runs)
    }


}


/// A run of the bench at one thread count and micro-batch (nil: one pass per step).
struct AllocationKey: Hashable {
    var threads: Int
    var micro: Int?
}
