import ArgumentParser
import Cluster
import Errors
import Foundation
import Kernels
import Layers
import Storage
import Training

/// `switchboard evaluate`: a checkpoint's model on a split of its data (or other data of the
/// same shape), on one process or under mpirun.
struct EvaluateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "evaluate",
        abstract: "Evaluate a checkpoint's model: loss, accuracy, per-class accuracy and the confusion matrix.",
        discussion: """
            Loads the parameters only (no optimizer state) into the model of the checkpoint's own \
            config, and evaluates it in chunks of its [train] eval_batch_size samples, in dataset \
            order, like training's evaluation: the same accuracy on any number of ranks. Under \
            mpirun each rank takes its part of every chunk, and MoE experts run on the ranks that \
            own them. An FFF model is evaluated soft (every leaf, as trained) and hard (one leaf \
            per sample).
            """)

    @Argument(help: "The checkpoint: a step-NNNNNN folder or its checkpoint.h5.") var checkpoint: String
    @Option(help: "A data folder to use instead of the config's [data] dir (same file names and format).") var data: String?
    @Option(help: "The split: test or train.") var split: JobConfig.Data.Split = .test
    @Option(name: .customLong("top-k"), parsing: .unconditional,
            help: "MoE models: experts per token (1 to the number of experts; default: as trained).")
    var topK: Int?
    @OptionGroup var products: PrecisionOption
    @OptionGroup var threads: ThreadsOption
    @Flag(help: "Print JSON instead of tables.") var json = false

    func run() throws {
        let reader = try openCheckpoint(checkpoint)
        let source = "\(reader.mainPath) (its config)"
        var config = try JobConfig.parse(reader.manifest.config, source: source,
                                         overrides: data.map { ["data.dir=" + ConfigValue.string($0).toml] } ?? [])
        config = products.applied(to: config)
        if let topK {
            guard case .moe(let trunk, var spec) = config.model else {
                throw ConfigError("--top-k applies to MoE models; the model of \(reader.folder) is not one")
            }
            guard (1...spec.experts).contains(topK) else {
                throw ConfigError("--top-k \(topK): a token can use from 1 to the \(spec.experts) experts of this model")
            }
            spec.topK = topK
            config.model = .moe(trunk, spec)
        }
        let comm = try CommandStart.world("evaluate")
        try CommandStart.threads(threads.threads, comm: comm)

        let dataset = try config.data.load(split)
        try checkFeatures(dataset.width, of: config.data.file(split), fit: reader)
        let chunk = min(config.train.evalBatchSize, dataset.count)
        let evaluator = try Evaluator(config: config, comm: comm, inputs: dataset.width, maxRows: max(1, (chunk + comm.size - 1) / comm.size))
        try evaluator.load(reader)
        let e = try evaluator.evaluate(dataset)
        guard comm.isCoordinator else { return }
        let m = reader.manifest
        if json {
            var fields: [(String, JSONValue)] = [
                ("checkpoint", .string(reader.folder)), ("step", .int(m.position.step)), ("split", .string(split.rawValue)),
                ("data", .string(config.data.file(split))), ("samples", .int(e.samples)), ("ranks", .int(comm.size)),
            ]
            if case .moe(_, let spec) = config.model { fields.append(("top_k", .int(spec.topK))) }
            fields += Self.json(loss: e.loss, accuracy: e.accuracy, confusion: e.confusion!, classes: config.data.classes)
            fields.append(("samples_per_s", .double(e.samplesPerSecond.rounded())))
            if let tokens = e.expertTokens { fields.append(("expert_tokens", .array(tokens.map { .array($0.map { .int($0) }) }))) }
            if let hard = e.hard {
                fields.append(("hard", .object(Self.json(loss: hard.loss, accuracy: hard.accuracy, confusion: e.hardConfusion!,
                                                         classes: config.data.classes)
                                               + [("samples_per_s", .double(hard.samplesPerSecond.rounded()))])))
            }
            print(JSONValue.object(fields).text)
            return
        }
        var topKText = ""
        if case .moe(_, let spec) = config.model { topKText = ", top-\(spec.topK) of \(spec.experts) experts" }
        print("checkpoint \(reader.folder): step \(m.position.step), \(evaluator.model.store.count.formatted()) parameters\(topKText); "
              + "\(config.train.products) products")
        print("data: \(split.rawValue) split, \(e.samples) samples of \(dataset.width) features (\(config.data.file(split))); "
              + "\(comm.size) rank\(comm.size == 1 ? "" : "s"); \(Int(e.samplesPerSecond)) samples/s")
        for (l, tokens) in (e.expertTokens ?? []).enumerated() {
            print("block \(l): tokens per expert \(tokens.map(String.init).joined(separator: " "))")
        }
        let blocks = [("", e.loss, e.accuracy, e.confusion!)] + (e.hard.map { [("hard decisions: ", $0.loss, $0.accuracy, e.hardConfusion!)] } ?? [])
        for (label, loss, accuracy, confusion) in blocks {
            print("")
            print("\(label)loss \(fixed(loss, 4)), accuracy \(fixed(100 * accuracy, 2))% (\(Int((accuracy * Double(e.samples)).rounded())) of \(e.samples))")
            print(Self.tables(confusion, classes: config.data.classes))
        }
    }

    /// Per-class accuracy and the confusion matrix, as aligned tables.
    static func tables(_ confusion: [Int], classes c: Int) -> String {
        var perClass = TextTable(["class", "samples", "correct", "accuracy"], right: [0, 1, 2, 3])
        for t in 0..<c {
            let n = (0..<c).reduce(0) { $0 + confusion[t * c + $1] }
            perClass.add([String(t), String(n), String(confusion[t * c + t]),
                          n == 0 ? "-" : fixed(100 * Double(confusion[t * c + t]) / Double(n), 2) + "%"])
        }
        var matrix = TextTable(["true \\ predicted"] + (0..<c).map(String.init), right: Set(0...c))
        for t in 0..<c { matrix.add([String(t)] + (0..<c).map { String(confusion[t * c + $0]) }) }
        return perClass.text + "\n\nconfusion (rows: true class, columns: predicted class)\n" + matrix.text
    }

    static func json(loss: Double, accuracy: Double, confusion: [Int], classes c: Int) -> [(String, JSONValue)] {
        let perClass: [JSONValue] = (0..<c).map { t in
            let n = (0..<c).reduce(0) { $0 + confusion[t * c + $1] }
            return .object([("class", .int(t)), ("samples", .int(n)), ("correct", .int(confusion[t * c + t])),
                            ("accuracy", .double(n == 0 ? .nan : Double(confusion[t * c + t]) / Double(n)))])
        }
        return [("loss", .double(loss)), ("accuracy", .double(accuracy)), ("per_class", .array(perClass)),
                ("confusion", .array((0..<c).map { t in .array((0..<c).map { .int(confusion[t * c + $0]) }) }))]
    }
}

extension JobConfig.Data.Split: ExpressibleByArgument {}
