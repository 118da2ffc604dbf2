import Cluster
import Kernels
import Layers
import Storage

/// A trained model run on data, without training (`switchboard evaluate`): the model of a
/// checkpoint's config, its parameters loaded by global name (no optimizer state), on one
/// process or every rank of `comm` (rows split over the ranks, MoE experts placed as in
/// training).
public final class Evaluator {
    public let config: JobConfig
    public let comm: Communicator
    public let model: Model
    let loop: EvaluationLoop

    /// `maxRows`: the most rows a rank holds in one pass (its share of an evaluation chunk).
    public init(config: JobConfig, comm: Communicator, inputs: Int, maxRows: Int) throws {
        self.config = config
        self.comm = comm
        try config.train.checkPrecision()
        // Each rank holds the experts it owns only, as in training.
        model = Model(config.model, inputs: inputs, classes: config.data.classes, maxRows: maxRows, seed: config.run.seed,
                      frozen: config.frozen, precision: config.train.products, ranks: comm.size, rank: comm.rank)
        let (collectives, _) = MoECollectives.attach(to: model, comm: comm, balanceExperts: config.parallel.balanceExperts)
        loop = EvaluationLoop(model: model, comm: comm, collectives: collectives, maxRows: maxRows, width: inputs)
    }

    /// Loads every parameter from `checkpoint` by global name, after checking that each is
    /// there with this model's shape (every mismatch named at once).
    public func load(_ checkpoint: CheckpointReader) throws {
        var problems: [String] = []
        for p in model.store.parameters {
            let name = CheckpointNames.parameter(p.name)
            guard let t = checkpoint.tensors[name] else { problems.append("\(name) is missing"); continue }
            if t.shape != p.shape { problems.append("\(name) has shape \(t.shape), the model \(p.shape)") }
        }
        guard problems.isEmpty else {
            throw CheckpointError(checkpoint.mainPath, "does not fit its own config's model: " + problems.prefix(20).joined(separator: "; "))
        }
        for p in model.store.parameters where p.resident { try checkpoint.read(CheckpointNames.parameter(p.name), into: p.value) }
    }

    /// Loss, accuracy and the confusion matrix on `data` (soft and hard for an FFF model).
    public func evaluate(_ data: Dataset) throws -> Evaluation {
        try loop.run(data, chunk: config.train.evalBatchSize, confusion: true)
    }
}
