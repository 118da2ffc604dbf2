#if canImport(Glibc)
import Glibc
#endif
import Kernels
import Layers
import Storage

/// A training job: every setting typed, validated and resolved (defaults filled in).
public struct JobConfig: Sendable {
    public struct Run: Sendable {
        public var name: String
        public var seed: UInt64
        /// Folder under which the run folder `<output>/<name>` is made.
        public var output: String
    }

    public struct Data: Sendable {
        public enum Format: Sendable {
            /// IDX image and label files (gzip or plain), held in memory.
            case idx(trainImages: String, trainLabels: String, testImages: String, testLabels: String)
            /// HDF5 files per split, each with datasets `x` and `y`, their samples one after
            /// another (`SampleFiles`), read a batch at a time. Each entry is a path or a glob.
            case hdf5(train: [String], test: [String], x: String, y: String)
        }
        public var dir: String
        public var format: Format
        public var classes: Int
        public func path(_ file: String) -> String { file.hasPrefix("/") ? file : dir + "/" + file }

        public enum Split: String, Sendable, CaseIterable { case train, test }

        /// Opens the training and test splits and checks they have the same features.
        public func load() throws -> (train: Dataset, test: Dataset) {
            let train = try load(.train), test = try load(.test)
            guard test.width == train.width else {
                throw DataError(file(.test), "has \(test.width) features per sample, the training data \(train.width)")
            }
            return (train, test)
        }

        /// Opens one split.
        public func load(_ split: Split) throws -> Dataset {
            switch format {
            case let .idx(trainImages, trainLabels, testImages, testLabels):
                let (images, labels) = split == .train ? (trainImages, trainLabels) : (testImages, testLabels)
                return try Dataset.idx(images: path(images), labels: path(labels), classes: classes)
            case let .hdf5(train, test, x, y):
                return try Dataset(hdf5: try Self.expand((split == .train ? train : test).map(path)), x: x, y: y, classes: classes)
            }
        }

        /// The file that holds a split's features.
        public func file(_ split: Split) -> String {
            switch format {
            case let .idx(trainImages, _, testImages, _): path(split == .train ? trainImages : testImages)
            case let .hdf5(train, test, _, _): (split == .train ? train : test).map(path).joined(separator: ", ")
            }
        }

        /// The files `patterns` name, in order: a pattern with `*`, `?` or `[` is a glob,
        /// expanded in name order, and must match something; any other is a path.
        static func expand(_ patterns: [String]) throws -> [String] {
            try patterns.flatMap { pattern -> [String] in
                guard pattern.contains(where: { "*?[".contains($0) }) else { return [pattern] }
                var found = glob_t()
                defer { globfree(&found) }
                guard glob(pattern, 0, nil, &found) == 0, found.gl_pathc > 0 else { throw DataError(pattern, "matches no file") }
                return (0..<Int(found.gl_pathc)).compactMap { found.gl_pathv[$0].map { String(cString: $0) } }.sorted()
            }
        }
    }

    public struct Train: Sendable {
        public var epochs: Int
        public var batchSize: Int
        public var evalBatchSize: Int
        public var labelSmoothing: Float
        /// OpenBLAS threads per process; 0 means every core of the machine.
        public var threads: Int
        public var logEvery: Int
        /// Stop after this many optimizer steps (0: no limit), for tests and quick checks.
        public var maxSteps: Int
        /// The number format of the matrix products (`Precision`): fp32, or bf16 inputs with
        /// fp32 accumulation. Weights, optimizer state and checkpoints are fp32 either way.
        public var precision: Precision
        /// Run bf16 on a CPU without native bf16 arithmetic (emulated: no faster than fp32)
        /// instead of refusing to start.
        public var bf16Emulation: Bool
        /// How this CPU runs the products `precision` asks for (`Precision.onThisCPU`).
        public var products: Precision { precision.onThisCPU }
        /// Rows per rank per pass: a step's gradients are summed over passes of this many rows
        /// before the sync (gradient accumulation). Nil, or at least the rank's share of the
        /// batch: one pass per step.
        public var microBatch: Int?
        /// MoE models: routing statistics and capacity over the whole global batch, or (as
        /// other systems do) over each pass.
        public var moeStatistics: MoEStatistics
    }

    /// `[moe] statistics`.
    public enum MoEStatistics: String, Sendable, CaseIterable {
        /// Load-balancing statistics and capacity over the whole global batch, as one pass
        /// over it would take them (a routing pre-pass when a step takes several passes).
        case batch
        /// Over each pass's rows (on every rank); the step's auxiliary loss is their mean.
        case microBatch = "micro_batch"
    }

    public enum OptimizerKind: String, Sendable { case adamw, sgd }

    public struct Optimizer: Sendable {
        public var kind: OptimizerKind
        public var lr: Double
        public var beta1: Double, beta2: Double, eps: Double
        public var weightDecay: Double
        /// Apply weight decay to biases and norm gains/shifts too (false exempts them).
        public var decayBiasesAndNorms: Bool
        public var momentum: Double
        public var nesterov: Bool
        /// Global gradient-norm clipping threshold; 0 turns clipping off.
        public var clipNorm: Double
        /// Update the MoE experts inside backward where their gradients are whole there (no
        /// clipping, one runner per expert): the same bits, less memory traffic. Off to compare.
        public var updateInBackward: Bool
    }

    public enum ScheduleKind: String, Sendable { case constant, cosine, linear }

    public struct Schedule: Sendable {
        public var kind: ScheduleKind
        public var warmupSteps: Int
        /// The learning rate at the end of decay, as a fraction of `lr`.
        public var finalFraction: Double
    }

    /// How ranks work together.
    public struct Parallel: Sendable {
        /// Size of a gradient bucket: each is summed over the ranks as soon as backward has
        /// finished it, while backward goes on.
        public var bucketBytes: Int
        /// Seconds a rank may wait in one collective before the watchdog declares a hang.
        public var watchdogSeconds: Double
        /// Whether a busy rank's experts may run on an idle rank for a pass (`ExpertBalance`);
        /// the results are the same bits either way.
        public var balanceExperts: Bool
        /// Each rank keeps 1/P of the synced parameters, gathering a layer's whole weights
        /// (`Model.gatheringUnits`) just before its forward and its backward and giving them
        /// back after (ZeRO stage 3, FSDP); off: every rank keeps all of them.
        public var shardParameters: Bool
        /// Chosen by measurement (`bench W3`, 2 ranks): the sync runs fastest from 512 KiB to
        /// 2 MiB, and slower at 4 and 8 MiB (docs/BENCHMARKS.md).
        public static let defaultBucketKiB = 1024
    }

    /// When checkpoints are saved and how many are kept.
    public struct Checkpoint: Sendable {
        /// Save after every this many steps (0: not by step count).
        public var everySteps: Int
        /// Save when this many minutes have passed since the last save (0: not by time); the
        /// coordinator's clock decides, for every rank at the same step.
        public var everyMinutes: Double
        /// Checkpoints kept in the run folder (the newest; 0 keeps all).
        public var keepLast: Int
        /// Save when training ends.
        public var atEnd: Bool
    }

    /// Starting a new run from another run's weights (`[init]`).
    public struct Initialization: Sendable {
        /// A checkpoint folder or its main file.
        public var from: String
        /// Refuse to start unless every parameter comes from the checkpoint, with its shape,
        /// and every parameter of the checkpoint is used.
        public var strict: Bool
        /// Dense → MoE: every expert of block b starts as a copy of the dense block b's FFN.
        public var upcycle: Bool
        /// Upcycling: noise added to each expert's copy, as a fraction of the copied tensor's
        /// RMS, drawn from the run's seed (0: exact copies).
        public var noise: Double
    }

    public var run: Run
    public var checkpoint: Checkpoint
    public var parallel: Parallel
    public var data: Data
    public var model: Architecture
    /// Parameters kept at their initial values, by name or prefix (`[model] frozen`).
    public var frozen: [String]
    public var train: Train
    public var optimizer: Optimizer
    public var schedule: Schedule
    public var initialization: Initialization?
    /// The resolved config as TOML, printed at start and saved in the run folder.
    public var resolvedTOML: String

    /// The `[model]` section (with `[moe]`, or a block kind's section: `BlockKinds`): the
    /// architecture, and what is frozen.
    static func modelSection(_ r: ConfigReader, source: String) throws -> (Architecture, [String]) {
        let kind = try r.string("model", "kind", "residual", oneOf: ["residual", "stack", "moe"])
        let model: Architecture
        var frozen: [String] = []
        func trunk(width fallback: Int) throws -> Trunk {
            Trunk(width: try r.int("model", "width", fallback, min: 1, max: Architecture.largestDimension),
                  depth: try r.int("model", "depth", 2, min: 0, max: 10_000),
                  norm: NormKind(rawValue: try r.string("model", "norm", "layernorm", oneOf: NormKind.allCases.map(\.rawValue)))!,
                  depthScaledNorm: try r.bool("model", "depth_scaled_norm", false))
        }
        var block = "mlp"
        switch kind {
        case "stack":
            let hidden = try r.intArray("model", "hidden", [1024, 1024, 1024], min: 1, max: Architecture.largestDimension)
            guard hidden.count <= 10_000 else { throw ConfigError("\(source): [model] hidden lists \(hidden.count) layers, at most 10000") }
            let activation = try r.string("model", "activation", "gelu", oneOf: ["relu", "gelu", "gelu_tanh", "silu"])
            model = .stack(hidden: hidden, activation: Activation(rawValue: activation)!)
        case "moe":
            let t = try trunk(width: 256)
            model = .moe(t, try MoEBlock.read(r, trunk: t, source: source))
        default:
            let t = try trunk(width: 512)
            block = try r.string("model", "block", "mlp", oneOf: BlockKinds.names)
            let (ffn, freezes) = try BlockKinds.named(block).read(r, trunk: t, source: source)
            frozen += freezes
            model = .residual(t, ffn)
        }
        if kind != "moe", r.hasSection(MoEBlock.section) {
            throw ConfigError("\(source): [moe] applies to [model] kind = \"moe\", not \"\(kind)\"")
        }
        // A block kind's own section applies to that kind only.
        for other in BlockKinds.all where other.name != block || kind != "residual" {
            guard let section = other.section, r.hasSection(section) else { continue }
            throw ConfigError("\(source): [\(section)] applies to [model] block = \"\(other.name)\", not "
                              + (kind == "residual" ? "block = \"\(block)\"" : "kind = \"\(kind)\""))
        }
        let listed = try r.stringArray("model", "frozen", [])
        frozen += listed
        // Parameter names do not depend on the data's widths.
        let probe = model.size(inputs: 1, classes: 2, maxRows: 1, frozen: frozen)
        for f in listed where !probe.frozenMatched.contains(f) {
            throw ConfigError("\(source): [model] frozen lists \"\(f)\", which names no parameter of this model "
                              + "(a global name such as \"embed.weight\", or a prefix of whole components such as \"embed\")")
        }
        if let f = probe.unfreezable.first {
            throw ConfigError("\(source): [model] frozen lists \"\(f)\", which names MoE parameters; an MoE layer cannot be frozen")
        }
        return (model, frozen)
    }

    /// The `[init]` section, read only when the job has one.
    static func initSection(_ r: ConfigReader, model: Architecture, source: String) throws -> Initialization {
        let from = try r.string("init", "from", "")
        guard !from.isEmpty else {
            throw ConfigError("\(source): [init] from must name a checkpoint (a step-NNNNNN folder or its checkpoint.h5)")
        }
        let upcycle = try r.bool("init", "upcycle", false)
        if upcycle, case .moe = model {} else if upcycle {
            throw ConfigError("\(source): [init] upcycle = true turns a dense model into a mixture of experts; [model] kind must be \"moe\"")
        }
        let noise = try r.double("init", "noise", 0, min: 0)
        guard noise == 0 || upcycle else { throw ConfigError("\(source): [init] noise applies to upcycle = true") }
        return Initialization(from: from, strict: try r.bool("init", "strict", true), upcycle: upcycle, noise: noise)
    }

    /// Reads and validates a job file's text, with `section.key=value` overrides applied.
    public static func parse(_ text: String, source: String, overrides: [String] = []) throws -> JobConfig {
        let r = try ConfigReader(text: text, source: source)
        for o in overrides { try r.override(o) }

        let run = Run(
            name: try r.string("run", "name", "run"),
            seed: UInt64(try r.int("run", "seed", 1, min: 0)),
            output: try r.string("run", "output", "checkpoints"))
        guard !run.name.isEmpty, !run.name.contains("/"), run.name != ".", run.name != ".." else {
            throw ConfigError("\(source): [run] name must be a plain folder name, got \"\(run.name)\"")
        }

        let checkpoint = Checkpoint(
            everySteps: try r.int("checkpoint", "every_steps", 0, min: 0),
            everyMinutes: try r.double("checkpoint", "every_minutes", 30, min: 0),
            keepLast: try r.int("checkpoint", "keep_last", 3, min: 0),
            atEnd: try r.bool("checkpoint", "at_end", true))

        let parallel = Parallel(
            bucketBytes: 1024 * (try r.int("parallel", "bucket_kib", Parallel.defaultBucketKiB, min: 1, max: 1 << 20)),
            watchdogSeconds: try r.double("parallel", "watchdog_seconds", 300, above: 0),
            balanceExperts: try r.bool("parallel", "balance_experts", true),
            shardParameters: try r.bool("parallel", "shard_parameters", false))

        let dataDir = try r.string("data", "dir", "/usr/share/datasets/fashion-mnist")
        let format: Data.Format
        if try r.string("data", "format", "idx", oneOf: ["idx", "hdf5"]) == "hdf5" {
            format = .hdf5(train: try r.strings("data", "train_file", "train.h5"), test: try r.strings("data", "test_file", "test.h5"),
                           x: try r.string("data", "x_name", "x"), y: try r.string("data", "y_name", "y"))
        } else {
            format = .idx(trainImages: try r.string("data", "train_images", "train-images-idx3-ubyte.gz"),
                          trainLabels: try r.string("data", "train_labels", "train-labels-idx1-ubyte.gz"),
                          testImages: try r.string("data", "test_images", "t10k-images-idx3-ubyte.gz"),
                          testLabels: try r.string("data", "test_labels", "t10k-labels-idx1-ubyte.gz"))
        }
        let data = Data(dir: dataDir, format: format, classes: try r.int("data", "classes", 10, min: 2, max: 65536))

        let (model, frozen) = try modelSection(r, source: source)

        let batch = try r.int("train", "batch_size", 256, min: 1, max: Architecture.largestDimension)
        // Unset means one pass per step; the resolved config then shows no key.
        let microBatch = r.has("train", "micro_batch") ? try r.int("train", "micro_batch", 0, min: 1, max: Architecture.largestDimension) : nil
        var moeStatistics = MoEStatistics.batch
        if case .moe = model {
            moeStatistics = MoEStatistics(rawValue: try r.string("moe", "statistics", "batch", oneOf: MoEStatistics.allCases.map(\.rawValue)))!
        }
        let train = Train(
            epochs: try r.int("train", "epochs", 10, min: 1, max: 1_000_000),
            batchSize: batch,
            // A micro-batch caps the rows a pass holds; evaluation's passes too, unless set.
            evalBatchSize: try r.int("train", "eval_batch_size", min(1000, microBatch ?? 1000), min: 1, max: Architecture.largestDimension),
            labelSmoothing: Float(try r.double("train", "label_smoothing", 0, min: 0, below: 1)),
            threads: try r.int("train", "threads", 0, min: 0, max: 1024),
            logEvery: try r.int("train", "log_every", 50, min: 1),
            maxSteps: try r.int("train", "max_steps", 0, min: 0),
            precision: Precision(rawValue: try r.string("train", "precision", "fp32", oneOf: Precision.requestable.map(\.rawValue)))!,
            bf16Emulation: try r.bool("train", "bf16_emulation", false),
            microBatch: microBatch, moeStatistics: moeStatistics)

        let optimizer = Optimizer(
            kind: OptimizerKind(rawValue: try r.string("optimizer", "name", "adamw", oneOf: ["adamw", "sgd"]))!,
            lr: try r.double("optimizer", "lr", 1e-3, above: 0),
            beta1: try r.double("optimizer", "beta1", 0.9, min: 0, below: 1),
            beta2: try r.double("optimizer", "beta2", 0.999, min: 0, below: 1),
            eps: try r.double("optimizer", "eps", 1e-8, above: 0),
            weightDecay: try r.double("optimizer", "weight_decay", 0.01, min: 0),
            decayBiasesAndNorms: try r.bool("optimizer", "decay_biases_and_norms", true),
            momentum: try r.double("optimizer", "momentum", 0.9, min: 0, below: 1),
            nesterov: try r.bool("optimizer", "nesterov", false),
            clipNorm: try r.double("optimizer", "clip_norm", 0, min: 0),
            updateInBackward: try r.bool("optimizer", "update_in_backward", true))

        let schedule = Schedule(
            kind: ScheduleKind(rawValue: try r.string("schedule", "kind", "constant", oneOf: ["constant", "cosine", "linear"]))!,
            warmupSteps: try r.int("schedule", "warmup_steps", 0, min: 0),
            finalFraction: try r.double("schedule", "final_fraction", 0, min: 0, max: 1))

        let initialization = r.hasSection("init") ? try initSection(r, model: model, source: source) : nil

        try r.finish()
        return JobConfig(run: run, checkpoint: checkpoint, parallel: parallel, data: data, model: model, frozen: frozen,
                         train: train, optimizer: optimizer,
                         schedule: schedule, initialization: initialization, resolvedTOML: r.resolvedTOML)
    }

    /// Checks the job against its training data: a batch cannot be larger than the training
    /// set (every step would silently train on the whole set, a different job).
    public func check(trainingSamples count: Int, source: String) throws {
        guard train.batchSize <= count else {
            throw ConfigError("\(source): [train] batch_size = \(train.batchSize) is larger than the training set "
                              + "(\(count) samples); set it to at most \(count)")
        }
    }
}

extension JobConfig.Train {
    /// The most rows of a batch one of `ranks` ranks takes, ⌈B/P⌉.
    public func share(ranks: Int) -> Int { (batchSize + ranks - 1) / ranks }

    /// Rows each of `ranks` ranks holds in one training pass: the micro-batch, or its whole
    /// share of a batch.
    public func passRows(ranks: Int) -> Int { min(microBatch ?? share(ranks: ranks), share(ranks: ranks)) }

    /// A micro-batch smaller than a rank's share must divide it, and every rank's share must
    /// be the same: each pass then holds the same rows on every rank, and the step's passes
    /// the whole batch.
    public func checkMicroBatch(ranks: Int) throws {
        guard let micro = microBatch, micro < share(ranks: ranks) else { return }
        guard batchSize % ranks == 0 else {
            throw ConfigError("[train] micro_batch = \(micro) needs batch_size = \(batchSize) to split evenly over the \(ranks) ranks "
                              + "(each takes \(batchSize / ranks) or \(batchSize / ranks + 1) rows)")
        }
        let share = batchSize / ranks
        guard share % micro == 0 else {
            let divisor = stride(from: micro, through: 1, by: -1).first { share % $0 == 0 }!
            throw ConfigError("[train] micro_batch = \(micro) does not divide the \(share) rows of batch_size = \(batchSize) that each of "
                              + "\(ranks) rank\(ranks == 1 ? "" : "s") takes; use a divisor of \(share), such as \(divisor)")
        }
    }

    /// bf16 on a CPU that would only emulate it is refused unless the job accepts emulation:
    /// emulated bf16 (oneDNN's on AVX-512 without BF16, ours below AVX-512) is no faster than
    /// fp32, not a speed-up.
    public func checkPrecision() throws {
        guard precision == .bf16, !OneDNN.nativeBFloat16, !bf16Emulation else { return }
        throw ConfigError(
            "[train] precision = \"bf16\": this CPU has no native bf16 arithmetic (oneDNN runs \(OneDNN.isa) here; "
            + "bf16 needs AVX512-BF16 or AMX-BF16); use precision = \"fp32\", or set [train] bf16_emulation = true to run it emulated")
    }
}
