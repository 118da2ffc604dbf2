import ArgumentParser
import Errors
import Foundation
import Kernels
import Training

/// `switchboard bench`: each workload of docs/BENCHMARKS.md is a subcommand with only the
/// options it takes (its runner is a file of its own in this folder).
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Run a benchmark workload exactly as docs/BENCHMARKS.md specifies.",
        discussion: """
            W1 and W2 print steady-state training samples/s (median of repetitions, after warm-up \
            steps), achieved GFLOP/s, and the fraction of the OpenBLAS sgemm rate and of the oneDNN \
            matmul rate at the run's precision, measured in the same run (1024³ and the workload's own \
            GEMM shapes), for each thread count; then they train the workload for --epochs epochs and \
            report wall time and test accuracy. W3 and W4 run under mpirun -np P. Each workload's \
            options: switchboard bench help W1 (or W2, …).
            """,
        subcommands: [W1Bench.self, W2Bench.self, W3Bench.self, W4Bench.self, W5Bench.self, W6Bench.self,
                      InputBenchCommand.self, KernelsBench.self, MemoryBenchCommand.self])
}

// MARK: - Options shared by several workloads

/// How a timed bench repeats its steps.
struct BenchTiming: ParsableArguments {
    @Option(help: "Warm-up steps not counted.")
    var warmup = 20

    @Option(help: "Steps per timed repetition.")
    var steps = 30

    @Option(help: "Timed repetitions (the median is reported).")
    var repeats = 5

    func validate() throws {
        guard repeats >= 1, steps >= 1, warmup >= 0 else { throw ValidationError("--repeats and --steps must be at least 1, --warmup at least 0") }
    }
}

struct BenchThreads: ParsableArguments {
    @Option(help: "BLAS thread counts to run, comma-separated.")
    var threads = PositiveIntegers([1, 2])
}

struct BenchData: ParsableArguments {
    @Option(help: "Fashion-MNIST folder.")
    var data = "/usr/share/datasets/fashion-mnist"
}

/// W1's and W2's options.
struct ThroughputOptions: ParsableArguments {
    @OptionGroup var threads: BenchThreads
    @OptionGroup var timing: BenchTiming
    @OptionGroup var data: BenchData

    @Option(help: "Epochs of full training after the throughput runs (0 skips it).")
    var epochs = 5

    @Option(help: "The precision of the matrix products (fp32 or bf16).")
    var precision: Precision = .fp32

    @Option(help: "The global batch (default: the workload's, 256).")
    var batch: Int?

    @Option(name: .customLong("micro-batch"),
            help: "Rows per pass ([train] micro_batch), comma-separated, each timed in turn; the epochs run the last (default: the whole batch in one pass).")
    var microBatch: PositiveIntegers?

    /// Runs the timed steps of one thread count once more, under the allocation counter, and
    /// prints only the count: the bench runs this in a child process (`allocationCounts`).
    @Flag(name: .customLong("count-allocations"), help: .hidden)
    var countAllocations = false

    func validate() throws {
        guard epochs >= 0 else { throw ValidationError("--epochs must be at least 0") }
        if let batch, batch < 1 { throw ValidationError("--batch: \(batch) is not a positive integer") }
    }
}

/// W3's and W4's options.
struct ScalingOptions: ParsableArguments {
    @OptionGroup var timing: BenchTiming
    @OptionGroup var data: BenchData

    @Option(name: .customLong("bucket-kib"), help: "The gradient bucket size for the training run (default: the config default).")
    var bucketKiB: Int?

    @Option(name: .customLong("sweep-kib"), help: "Bucket sizes, comma-separated, for the gradient-sync-alone table.")
    var sweepKiB = PositiveIntegers([256, 512, 1024, 2048, 4096, 8192])

    @Flag(name: .customLong("shard-parameters"),
          help: "Train the P-rank run with [parallel] shard_parameters (each rank keeps 1/P of the synced parameters).")
    var shardParameters = false

    func validate() throws {
        if let bucketKiB, bucketKiB < 1 { throw ValidationError("--bucket-kib: \(bucketKiB) is not a positive integer") }
    }
}

// MARK: - The workloads

struct W1Bench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "W1", abstract: "Dense MLP training throughput.", aliases: ["w1"])
    @OptionGroup var options: ThroughputOptions

    func run() throws { try ThroughputBench(workload: .w1, options: options).run() }
}

struct W2Bench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "W2", abstract: "MoE training throughput.", aliases: ["w2"])
    @OptionGroup var options: ThroughputOptions

    @Option(name: .customLong("moe-statistics"), help: "[moe] statistics, batch or micro_batch.")
    var moeStatistics: JobConfig.MoEStatistics = .batch

    @Flag(name: .customLong("update-after-backward"),
          help: "Update the experts after backward with the other parameters (optimizer.update_in_backward = false), to compare.")
    var updateAfterBackward = false

    func run() throws {
        try ThroughputBench(workload: .w2, options: options, moeStatistics: moeStatistics, updateAfterBackward: updateAfterBackward).run()
    }
}

struct W3Bench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "W3", abstract: "W1 data-parallel under mpirun -np P.", aliases: ["w3"])
    @OptionGroup var options: ScalingOptions

    func run() throws { try ScalingBench(workload: .w3, options: options, fixedExperts: false, updateAfterBackward: false).run() }
}

struct W4Bench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "W4", abstract: "W2 expert-parallel under mpirun -np P.", aliases: ["w4"])
    @OptionGroup var options: ScalingOptions

    @Flag(name: .customLong("fixed-experts"), help: "Run every expert on its own rank (parallel.balance_experts = false), to compare.")
    var fixedExperts = false

    @Flag(name: .customLong("update-after-backward"),
          help: "Update the experts after backward with the other parameters (optimizer.update_in_backward = false), to compare.")
    var updateAfterBackward = false

    func run() throws {
        try ScalingBench(workload: .w4, options: options, fixedExperts: fixedExperts, updateAfterBackward: updateAfterBackward).run()
    }
}

/// `bench memory`'s options.
struct MemoryBenchOptions: ParsableArguments {
    @OptionGroup var data: BenchData

    @Option(help: "The folder of the job files the two models come from.")
    var jobs = "cluster"

    @Option(help: "Training steps per model (at least 2: the first is not timed).")
    var steps = 4

    func validate() throws {
        guard steps >= 2 else { throw ValidationError("--steps must be at least 2") }
    }
}

struct MemoryBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "memory", abstract: "Each rank's peak memory for an expert-heavy and a dense-heavy model, under mpirun -np P.")
    @OptionGroup var options: MemoryBenchOptions

    func run() throws { try MemoryBench(options: options).run() }
}

struct W5Bench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "W5", abstract: "Checkpoint save and load.", aliases: ["w5"])

    @Option(help: "Timed repetitions (the median is reported).")
    var repeats = 5

    @Option(help: "The folder to write in (made, and emptied of what the bench writes, after).")
    var folder = "checkpoints/bench-w5"

    @Flag(help: "Keep the last checkpoint written.")
    var keep = false

    func validate() throws { guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1") } }

    func run() throws { try CheckpointBench(directory: folder, repeats: repeats, keep: keep).run() }
}

struct W6Bench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "W6", abstract: "FFF inference against a dense FFN.", aliases: ["w6"])
    @OptionGroup var threads: BenchThreads

    @Option(help: "Timed repetitions (the median is reported).")
    var repeats = 5

    func validate() throws { guard repeats >= 1 else { throw ValidationError("--repeats must be at least 1") } }

    func run() throws { FFFBench(threads: threads.threads.values, repeats: repeats).run() }
}

struct InputBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "input", abstract: "The default job from HDF5 against in memory (mpirun or not).")
    @OptionGroup var threads: BenchThreads
    @OptionGroup var timing: BenchTiming
    @OptionGroup var data: BenchData

    @Option(help: "The job whose model and training the bench runs.")
    var job = "cluster/fashion-mlp.toml"

    @Option(help: "The folder to write the HDF5 copy of the data in (made, and emptied of what the bench writes, after).")
    var folder = "checkpoints/bench-input"

    func run() throws {
        try InputBench(job: job, data: data.data, folder: folder, threads: threads.threads.values,
                       warmup: timing.warmup, steps: timing.steps, repeats: timing.repeats).run()
    }
}

struct KernelsBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "kernels", abstract: "The elementwise kernels alone.")

    func run() throws { KernelBench.run() }
}

// MARK: - Shared by the runners

/// The median of the benches' repetitions (0 of none).
func median(_ xs: [Double]) -> Double { xs.isEmpty ? 0 : xs.sorted()[xs.count / 2] }

/// The CPU's model name, for the benches' first lines.
func cpuModel() -> String {
    guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
          let line = info.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
          let name = line.split(separator: ":", maxSplits: 1).last else { return "unknown CPU" }
    return name.trimmingCharacters(in: .whitespaces)
}

/// A benchmark that could not run to the end.
struct BenchFailure: SwitchboardError {
    let message: String
    var exitCode: Int32 { 1 }
}

extension JobConfig.MoEStatistics: ExpressibleByArgument {}

extension Precision: ExpressibleByArgument {
    /// fp32 or bf16: how bf16 runs here is this CPU's choice (`onThisCPU`).
    public init?(argument: String) {
        guard let p = Precision(rawValue: argument), Precision.requestable.contains(p) else { return nil }
        self = p
    }
    public static var allValueStrings: [String] { requestable.map(\.rawValue) }
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
