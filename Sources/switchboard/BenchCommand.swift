import ArgumentParser
import Cluster
import Errors
import Foundation
import Kernels
import Layers
import Storage
import Training

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Run a benchmark workload exactly as docs/BENCHMARKS.md specifies.",
        discussion: """
            Prints steady-state training samples/s (median of repetitions, after warm-up steps), \
            achieved GFLOP/s, and the fraction of the OpenBLAS sgemm rate and of the oneDNN matmul \
            rate at the run's precision, measured in the same run (1024³ and the workload's own GEMM \
            shapes), for each thread count. Then trains the \
            workload for --epochs epochs and reports wall time and test accuracy.
            """)

    @Argument(help: "The workload: W1, W2, W3 or W4 (these two under mpirun -np P), W5 (checkpoint I/O), W6 (FFF inference against a dense FFN), input (the default job from HDF5 against in memory; mpirun or not), or kernels (elementwise kernels alone).")
    var workload: BenchTarget

    @Option(help: "BLAS thread counts to run, comma-separated.")
    var threads = PositiveIntegers([1, 2])

    @Option(help: "Warm-up steps not counted.")
    var warmup = 20

    @Option(help: "Steps per timed repetition.")
    var steps = 30

    @Option(help: "Timed repetitions (the median is reported).")
    var repeats = 5

    @Option(help: "Epochs of full training after the throughput runs (0 skips it).")
    var epochs = 5

    @Option(help: "Fashion-MNIST folder.")
    var data = "/usr/share/datasets/fashion-mnist"

    @Option(name: .customLong("bucket-kib"), help: "W3, W4: gradient bucket size for the training run (default: the config default).")
    var bucketKiB: Int?

    @Option(name: .customLong("sweep-kib"), help: "W3, W4: bucket sizes, comma-separated, for the gradient-sync-alone table.")
    var sweepKiB = PositiveIntegers([256, 512, 1024, 2048, 4096, 8192])

    @Flag(name: .customLong("fixed-experts"), help: "W4: run every expert on its own rank (parallel.balance_experts = false), to compare.")
    var fixedExperts = false

    @Flag(name: .customLong("update-after-backward"),
          help: "W2, W4: update the experts after backward with the other parameters (optimizer.update_in_backward = false), to compare.")
    var updateAfterBackward = false

    @Option(help: "W1, W2: the precision of the matrix products (fp32 or bf16).")
    var precision: Precision = .fp32

    @Option(help: "W1, W2: the global batch (default: the workload's, 256).")
    var batch: Int?

    @Option(name: .customLong("micro-batch"),
            help: "W1, W2: rows per pass ([train] micro_batch), comma-separated, each timed in turn; the epochs run the last (default: the whole batch in one pass).")
    var microBatch: PositiveIntegers?

    @Option(name: .customLong("moe-statistics"), help: "W2: [moe] statistics, batch or micro_batch.")
    var moeStatistics: JobConfig.MoEStatistics = .batch

    @Option(help: "W5, input: the folder to write in (made, and emptied of what the bench writes, after; input: checkpoints/bench-input by default).")
    var folder = Self.w5Folder
    static let w5Folder = "checkpoints/bench-w5"

    @Option(help: "input: the job whose model and training the input bench runs.")
    var job = "cluster/fashion-mlp.toml"

    @Flag(help: "W5: keep the last checkpoint written.")
    var keep = false

    /// Runs the timed steps of one thread count once more, under the allocation counter, and
    /// prints only the count: `bench` runs this in a child process (`allocationCounts`).
    @Flag(name: .customLong("count-allocations"), help: .hidden)
    var countAllocations = false

    func run() throws {
        if workload == .w6 { return FFFBench(threads: threads.values, repeats: repeats).run() }
        if workload == .input {
            return try InputBench(job: job, data: data, folder: folder == Self.w5Folder ? "checkpoints/bench-input" : folder,
                                  threads: threads.values, warmup: warmup, steps: steps, repeats: repeats).run()
        }
        guard let w = workload.workload else { return KernelBench.run() }
        if w == .w5 { return try CheckpointBench(directory: folder, repeats: repeats, keep: keep).run() }
        let threadCounts = threads.values
        guard repeats >= 1, steps >= 1, warmup >= 0, epochs >= 0 else { throw ValidationError("--repeats and --steps must be at least 1, --warmup and --epochs at least 0") }
        if w == .w3 || w == .w4 {
            if let bucketKiB, bucketKiB < 1 { throw ValidationError("--bucket-kib: \(bucketKiB) is not a positive integer") }
            return try ScalingBench(workload: w, data: data, warmup: warmup, steps: steps, repeats: repeats, bucketKiB: bucketKiB, sweepKiB: sweepKiB.values,
                                    fixedExperts: fixedExperts, updateAfterBackward: updateAfterBackward).run()
        }
        // Counted before MPI starts here: a child started by an MPI process inherits its
        // launcher's environment.
        let allocations = countAllocations ? [:] : try allocationCounts(w, threadCounts)
        let comm = try MPIWorld.start()
        var config = try w.config(dataDir: data, epochs: max(epochs, 1))
        if updateAfterBackward { config.optimizer.updateInBackward = false }
        config.train.precision = precision
        // bench measures what it is asked for: emulated bf16 too, where this CPU has no native bf16.
        config.train.bf16Emulation = true
        if let batch {
            guard batch >= 1 else { throw ValidationError("--batch: \(batch) is not a positive integer") }
            config.train.batchSize = batch
        }
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
        print("machine: \(Self.cpuModel()), \(ProcessInfo.processInfo.activeProcessorCount) cores; OpenBLAS \(BLAS.coreName) "
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
                                 "--repeats", "\(repeats)", "--data", data, "--precision", precision.rawValue,
                                 "--moe-statistics", moeStatistics.rawValue, "--count-allocations"]
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

    static func cpuModel() -> String {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
              let line = info.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
              let name = line.split(separator: ":", maxSplits: 1).last else { return "unknown CPU" }
        return name.trimmingCharacters(in: .whitespaces)
    }

}

/// The median of the benches' repetitions (0 of none).
func median(_ xs: [Double]) -> Double { xs.isEmpty ? 0 : xs.sorted()[xs.count / 2] }

/// A run of `bench` at one thread count and micro-batch (nil: one pass per step).
struct AllocationKey: Hashable {
    var threads: Int
    var micro: Int?
}

extension JobConfig.MoEStatistics: ExpressibleByArgument {}

/// A benchmark that could not run to the end.
struct BenchFailure: SwitchboardError {
    let message: String
    var exitCode: Int32 { 1 }
}

/// What `bench` runs: a workload of docs/BENCHMARKS.md, or the elementwise kernels alone.
extension Precision: ExpressibleByArgument {
    /// fp32 or bf16: how bf16 runs here is this CPU's choice (`onThisCPU`).
    public init?(argument: String) {
        guard let p = Precision(rawValue: argument), Precision.requestable.contains(p) else { return nil }
        self = p
    }
    public static var allValueStrings: [String] { requestable.map(\.rawValue) }
}

enum BenchTarget: String, CaseIterable, ExpressibleByArgument {
    case w1 = "W1", w2 = "W2", w3 = "W3", w4 = "W4", w5 = "W5", w6 = "W6", input, kernels

    /// Workload names in either case (`w1` or `W1`).
    init?(argument: String) {
        self.init(rawValue: argument == "kernels" || argument == "input" ? argument : argument.uppercased())
    }

    var workload: Workload? { Workload(rawValue: rawValue) }
}

/// A comma-separated list of positive integers (`1,2`); anything else is refused by the
/// parser, naming the option.
struct PositiveIntegers: ExpressibleByArgument {
    let values: [Int]
    init(_ values: [Int]) { self.values = values }

    init?(argument: String) {
        let parts = argument.split(separator: ",", omittingEmptySubsequences: false).map { Int($0.trimmingCharacters(in: .whitespaces)) }
        guard !parts.isEmpty, parts.allSatisfy({ ($0 ?? 0) > 0 }) else { return nil }
        values = parts.map { $0! }
    }

    var defaultValueDescription: String { values.map(String.init).joined(separator: ",") }
}

/// Times matrix products alone on given shapes at the current thread count: OpenBLAS's
/// `cblas_sgemm`, or oneDNN matmul primitives (fp32 or bf16) prepared as the layers prepare theirs.
enum GEMMProbe {
    /// Best-of-3 GFLOP/s of one shape, each trial running ≥ 0.1 s.
    static func rate(_ ta: Transpose, _ tb: Transpose, m: Int, n: Int, k: Int, library: MatmulLibrary = .openBLAS,
                     precision: Precision = .fp32) -> Double {
        rate(of: [(ta, tb, m, n, k)], library: library, precision: precision)
    }

    /// GFLOP/s over a list of shapes: total FLOPs over total time, so each shape weighs as
    /// much as it does in a training step.
    static func rate(of shapes: [(Transpose, Transpose, Int, Int, Int)], library: MatmulLibrary = .openBLAS,
                     precision: Precision = .fp32) -> Double {
        let size = shapes.map { max($0.2 * $0.4, $0.4 * $0.3, $0.2 * $0.3) }.max()!
        let a = Tensor(shape: [size]), b = Tensor(shape: [size]), c = Tensor(shape: [size])
        for i in 0..<size { a[i] = Float(i % 7) * 0.1; b[i] = Float(i % 5) * 0.1 }
        let a16 = precision.roundsToBFloat16 ? BFloat16Buffer(count: size, precision: precision) : nil
        let b16 = precision.roundsToBFloat16 ? BFloat16Buffer(count: size, precision: precision) : nil
        a16?.round(a.data, count: size)
        b16?.round(b.data, count: size)
        let products = shapes.map { (ta, tb, m, n, k) in
            Matmul(ta, tb, m: m, n: n, k: k, lda: ta == .none ? k : m, ldb: tb == .none ? n : k, ldc: n, rows: .m,
                   accumulate: false, precision: precision, library: library)
        }
        let flops = shapes.reduce(0.0) { $0 + 2 * Double($1.2 * $1.3 * $1.4) }
        var best = 0.0
        for _ in 0..<3 {
            var reps = 0
            let t0 = ContinuousClock.now
            var seconds = 0.0
            while seconds < 0.1 {
                for (p, shape) in zip(products, shapes) {
                    if let a16, let b16 {
                        p(rows: shape.2, a: a16.data, b: b16.data, c: c.data)
                    } else {
                        p(rows: shape.2, a: a.data, b: b.data, c: c.data)
                    }
                }
                reps += 1
                seconds = (ContinuousClock.now - t0).seconds
            }
            best = max(best, flops * Double(reps) / seconds / 1e9)
        }
        return best
    }
}
