import Cluster
import Kernels
import Layers
import Storage

/// What one optimizer step did, reduced over all ranks.
public struct StepResult: Sendable {
    public var step: Int
    public var epoch: Int
    /// Mean loss over the global batch (cross-entropy with label smoothing), plus the MoE
    /// layers' auxiliary losses.
    public var loss: Double
    public var correct: Int
    public var rows: Int
    /// Global L2 norm of the averaged gradient before clipping; NaN on steps that neither
    /// clip nor log.
    public var gradNorm: Double
    public var lr: Double
    /// Some rank asked for a checkpoint after this step (the coordinator's timer), or to stop
    /// (SIGTERM or SIGINT): every rank learns it from the same reduction, at the same step.
    public var saveRequested = false
    public var stopRequested = false
    /// Seconds this rank's step waited for its rows to be read (HDF5 input).
    public var inputWait = 0.0
}

/// Trains a model on a dataset following a job config. Every rank runs one; all buffers are
/// made here, so `trainStep` allocates nothing.
public final class Trainer {
    public let config: JobConfig
    public let comm: Communicator
    public let model: Model
    public let optimizer: any Optimizer
    public let schedule: LearningRateSchedule
    public let trainSet: Dataset
    public let testSet: Dataset
    public let order: GlobalSampleOrder
    public let maxRows: Int
    /// Rows this rank holds in one training pass: its share of a batch, or the micro-batch.
    public let passRows: Int
    /// Whether a full batch takes several passes (gradient accumulation).
    public let accumulates: Bool
    /// MoE capacity and batch statistics over the whole global batch (`[moe] statistics`).
    let statisticsOverBatch: Bool
    /// Whether a step of several passes starts with a pre-pass that gathers the batch
    /// statistics (`BatchStatistics.gather`): only when some gradient depends on them.
    let gathersStatistics: Bool
    /// Reduce-scatters gradients bucket by bucket during backward, and allgathers the
    /// parameters each rank updated.
    public let gradientSync: ShardedSync
    /// With `[parallel] shard_parameters` on several ranks: each layer's values gathered when
    /// it runs (ZeRO stage 3); nil when every rank keeps every synced parameter.
    let shards: ParameterShards?

    /// This rank's rows of each pass (`BatchLoader`).
    let loader: BatchLoader
    let dlogits: Tensor
    /// Set on the coordinator when a checkpoint is due by time; rides on the next step's
    /// reduction so every rank saves after the same step.
    public var wantsSave = false

    public internal(set) var step = 0
    /// For the checkpoint's metrics summary.
    var lastLoss: Double?
    var lastEvaluation: Evaluation?
    var lastExpertTokens: [[Int]] = []
    /// Coordinator, after a resume: what the HDF5 library could not reach in the checkpoint
    /// read (its values came from the shards, verified; the checkpoint is not healthy).
    public internal(set) var resumeWarning: String?
    /// The MoE layers' collectives inside forward and backward.
    let moeSums: MoECollectives
    /// The test hook `SWITCHBOARD_ROUTING_TRACE` (`RoutingTrace`), nil when unset.
    let routingTrace: RoutingTrace?
    /// Evaluation's passes and buffers.
    let evaluation: EvaluationLoop
    /// Which ranks run which experts (MoE models).
    public let placement: ExpertPlacement?
    /// Whether a busy rank's experts may run on another rank for a pass (`ExpertBalance`).
    public var movesExperts: Bool { moeSums.movesExperts }
    /// What this rank's optimizer updates (and holds state for, `StateLayout`): its shard of
    /// the synced parameters, and the experts it alone owns (wherever they ran); in the sync's
    /// order, which the gradient norm sums in.
    let updateRanges: [Range<Int>]
    /// Per MoE layer, the span of the experts this rank owns, when each expert lives on its
    /// owner alone (E ≥ P on several ranks); empty otherwise.
    let ownExpertSpans: [Range<Int>]
    /// The experts' update inside backward, when their gradients are whole there: no clip
    /// (it needs every gradient first) and one runner per expert (replicated experts are
    /// summed by the sync). Nil otherwise.
    let backwardUpdates: BackwardUpdates?
    /// Whether the MoE experts this rank owns and runs are updated inside backward.
    public var updatesExpertsInBackward: Bool { backwardUpdates != nil }

    /// Collective: every rank of `comm` makes its trainer together.
    public init(config: JobConfig, comm: Communicator, train: Dataset, test: Dataset) throws {
        self.config = config
        self.comm = comm
        trainSet = train
        testSet = test
        maxRows = Self.maxRows(config, ranks: comm.size, testCount: test.count)
        try config.train.checkPrecision()
        try config.train.checkMicroBatch(ranks: comm.size)
        passRows = config.train.passRows(ranks: comm.size)
        accumulates = passRows < config.train.share(ranks: comm.size)
        // Each rank holds the experts it owns only (E ≥ P on several ranks).
        model = Model(config.model, inputs: train.width, classes: config.data.classes,
                      maxRows: maxRows, seed: config.run.seed, frozen: config.frozen, precision: config.train.products,
                      ranks: comm.size, rank: comm.rank, trainingRows: passRows)
        // `JobConfig.parse` checked the names already; a config made another way is checked here.
        if let problem = model.frozenProblems.first { throw ConfigError("[model] frozen: \(problem)") }
        let trainable = model.store.trainableCount
        let o = config.optimizer
        order = GlobalSampleOrder(count: train.count, batchSize: config.train.batchSize, seed: config.run.seed)
        schedule = LearningRateSchedule(base: o.lr, kind: config.schedule.kind, warmupSteps: config.schedule.warmupSteps,
                                        totalSteps: Self.totalSteps(config, order), finalFraction: config.schedule.finalFraction)
        loader = BatchLoader(order: order, data: train, rank: comm.rank, ranks: comm.size, passRows: passRows, maxRows: maxRows)
        dlogits = Tensor(shape: [maxRows, config.data.classes])
        (moeSums, placement) = MoECollectives.attach(to: model, comm: comm, balanceExperts: config.parallel.balanceExperts)
        evaluation = EvaluationLoop(model: model, comm: comm, collectives: moeSums, maxRows: maxRows, width: train.width)
        comm.watchdog.deadline = config.parallel.watchdogSeconds
        let parameters = model.store.parameters
        let experts = Self.expertSpans(model, placement: placement, comm: comm)
        let sharded = config.parallel.shardParameters && comm.size > 1
        gradientSync = try ShardedSync(
            comm: comm, grads: model.store.grads.data, values: model.store.values.data, count: trainable,
            bucketBytes: config.parallel.bucketBytes, regions: experts.synced,
            shards: sharded ? (model.gatheringUnits, model.store.grads, model.store.values) : nil,
            label: { range in
                // The parameters a bucket touches, by global name.
                let inside = parameters.filter { $0.resident && $0.offset < range.upperBound && $0.offset + $0.count > range.lowerBound }
                return inside.count == 1 ? inside[0].name : "\(inside.first!.name) … \(inside.last!.name)"
            })
        updateRanges = gradientSync.ownedRanges + experts.own
        shards = sharded ? ParameterShards(sync: gradientSync) : nil
        model.gathering = shards
        evaluation.shards = shards
        // Optimizer state for what this rank updates only (ZeRO-1): the frozen parameters lie
        // after the trainable ones and have none.
        let layout = StateLayout(updateRanges)
        switch o.kind {
        case .adamw:
            optimizer = AdamW(layout: layout, beta1: Float(o.beta1), beta2: Float(o.beta2), eps: Float(o.eps),
                              weightDecay: Float(o.weightDecay), decayBiasesAndNorms: o.decayBiasesAndNorms)
        case .sgd:
            optimizer = SGD(layout: layout, momentum: Float(o.momentum), nesterov: o.nesterov,
                            weightDecay: Float(o.weightDecay), decayBiasesAndNorms: o.decayBiasesAndNorms)
        }
        ownExpertSpans = experts.own
        // With accumulation a gradient is whole only in the step's last backward.
        let wholeInBackward = (comm.size == 1 || experts.synced != nil) && !accumulates
        backwardUpdates = o.updateInBackward && o.clipNorm == 0 && wholeInBackward && !model.layers((any ExpertLayer).self).isEmpty
            ? BackwardUpdates(optimizer: optimizer, model: model, threads: WorkerPool.shared.threads) : nil
        statisticsOverBatch = config.train.moeStatistics == .batch
        gathersStatistics = statisticsOverBatch && model.gradientsUseBatchStatistics
        routingTrace = RoutingTrace.open(rank: comm.rank)
        train.preparePrefetch(rows: passRows)
    }

    /// With one owner per expert (E ≥ P), an expert lives on its owner alone (the model holds
    /// no other), which updates it: experts stay out of the sync (`synced` is the rest of this
    /// rank's arena) and each rank updates its own (`own`, per MoE layer). Replicated experts
    /// (E < P) are summed by the sync like dense parameters (zero where not run): then
    /// `synced` is nil and `own` empty.
    static func expertSpans(_ model: Model, placement: ExpertPlacement?, comm: Communicator)
        -> (synced: [Range<Int>]?, own: [Range<Int>]) {
        guard comm.size > 1, let placement, placement.experts >= comm.size else { return (nil, []) }
        let own = model.layers((any ExpertLayer).self).map { $0.parameterSpan(placement.experts(on: comm.rank)) }
        var from = 0
        var synced: [Range<Int>] = []
        for x in own.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if x.lowerBound > from { synced.append(from..<x.lowerBound) }
            from = x.upperBound
        }
        if from < model.store.trainableCount { synced.append(from..<model.store.trainableCount) }
        return (synced, own)
    }

    /// The most rows a rank holds in one pass: ⌈B/P⌉ of a training batch or the micro-batch,
    /// or a chunk of evaluation.
    public static func maxRows(_ config: JobConfig, ranks: Int, testCount: Int) -> Int {
        let t = config.train
        return max(t.passRows(ranks: ranks), min(t.evalBatchSize, testCount))
    }

    static func totalSteps(_ c: JobConfig, _ order: GlobalSampleOrder) -> Int {
        let full = c.train.epochs * order.batchesPerEpoch
        return c.train.maxSteps > 0 ? min(full, c.train.maxSteps) : full
    }

    public var totalSteps: Int { schedule.totalSteps }

    /// One optimizer step on global batch `batch` of `epoch`, as ARCHITECTURE's "One training
    /// step" tells it: the batch statistics first where a step of several passes needs them;
    /// forward and backward of each pass (one, or several micro-batches), the gradients adding
    /// up, the last backward reduce-scattering gradient buckets as it finishes them; one
    /// reduction of the step's sums; then clip, update this rank's shard, allgather.
    public func trainStep(epoch: Int, batch: Int) throws -> StepResult {
        let global = order.batch(batch).count
        let passes = passes(rows: global)
        comm.watchdog.step = step
        let logged = isLoggedStep(step + 1, every: config.train.logEvery, total: totalSteps)
        let lr = schedule.rate(step)
        let gathered = passes > 1 && gathersStatistics
        gradientSync.startStep()
        if gathered { try gatherStatistics(epoch: epoch, batch: batch, passes: passes, global: global) }
        var tally = PassTally()
        for pass in 0..<passes {
            tally.add(try forwardBackward(pass, epoch: epoch, batch: batch, global: global, statistics: gathered ? .held : .pass,
                                          last: pass == passes - 1 ? (lr, logged) : nil))
        }
        try gradientSync.finishReduceScatter()
        let clip = config.optimizer.clipNorm
        let (sums, norm) = try reduceStep(tally, gradientNorm: clip > 0 || logged)
        update(lr: lr, scale: clip > 0 && norm > clip ? Float(clip / norm) : 1)
        try gradientSync.gatherParameters()
        try shards?.invalidate()
        step += 1
        // The auxiliary losses are already means over the global batch (each pass's part).
        let loss = sums.lossSum / Double(global) + tally.aux
        lastLoss = loss
        return StepResult(step: step, epoch: epoch, loss: loss, correct: Int(sums.correct), rows: global, gradNorm: norm,
                          lr: lr, saveRequested: sums.saveRequests > 0, stopRequested: sums.stopRequests > 0,
                          inputWait: trainSet.takeInputWait().seconds)
    }

    /// Throws what failed in the collectives inside the last forward or backward: the MoE
    /// layers' exchanges, the layers' gathers.
    func rethrowCollectives() throws {
        try moeSums.rethrow()
        try shards?.rethrow()
    }

    /// After parameters were written whole (a checkpoint loaded, `[init]` applied): with the
    /// parameters in shards, this rank gives back what it does not own.
    public func parametersWritten() throws { try shards?.invalidate(all: true) }

    /// The passes a global batch of `rows` rows takes: passes of `passRows` on every rank.
    public func passes(rows: Int) -> Int { loader.passes(rows: rows) }

    /// What a step's passes add up on this rank.
    struct PassTally {
        var lossSum = 0.0, correct = 0, aux = 0.0
        mutating func add(_ other: PassTally) {
            lossSum += other.lossSum
            correct += other.correct
            aux += other.aux
        }
    }

    /// The forward context of pass `pass` of a step over `global` rows.
    func context(_ rows: BatchLoader.PassRows, _ pass: Int, global: Int, _ statistics: BatchStatistics) -> ForwardContext {
        ForwardContext(training: true, step: step, rowOffset: rows.offset, globalRows: global, microBatch: pass,
                       passRows: rows.pass, capacityOverStep: statisticsOverBatch, statistics: statistics)
    }

    /// The pre-pass: a forward over every micro-batch, as far as the batch statistics that
    /// some gradient depends on (`Model.gatherStatistics`), which the passes then hold.
    func gatherStatistics(epoch: Int, batch: Int, passes: Int, global: Int) throws {
        for pass in 0..<passes {
            let rows = try loader.load(pass, epoch: epoch, batch: batch, gathering: true)
            model.gatherStatistics(loader.x.data, rows: rows.mine, context: context(rows, pass, global: global, .gather))
            try rethrowCollectives()
        }
    }

    /// One pass: load this rank's rows, forward, the loss and its gradient (of the mean over the
    /// *global* batch, so summing over passes and ranks averages), backward adding into the
    /// gradients. The `last` pass's backward (with the step's rate and whether it is logged)
    /// hands finished gradients to the sync, and the experts' updates inside backward run there.
    func forwardBackward(_ pass: Int, epoch: Int, batch: Int, global: Int, statistics: BatchStatistics,
                         last: (lr: Double, logged: Bool)?) throws -> PassTally {
        let rows = try loader.load(pass, epoch: epoch, batch: batch)
        let logits = model.forward(loader.x.data, rows: rows.mine, context: context(rows, pass, global: global, statistics))
        try rethrowCollectives()
        routingTrace?.record(model, step: step, samples: { self.loader.sample(epoch: epoch, batch: batch, row: rows.offset + $0) })
        let local = loader.labels.withUnsafeBufferPointer {
            softmaxCrossEntropy(logits: logits, labels: $0.baseAddress!, rows: rows.mine, classes: model.classes,
                                smoothing: config.train.labelSmoothing, gradScale: 1 / Float(global), dlogits: dlogits.data)
        }
        let tally = PassTally(lossSum: local.lossSum, correct: local.correct, aux: model.auxLoss)
        if let last {
            backwardUpdates?.begin(lr: Float(last.lr), measuring: last.logged)
            gradientSync.begin()
            try model.backward(dlogits.data, rows: rows.mine) { try gradientSync.gradientsFinal(from: $0) }
        } else {
            model.backward(dlogits.data, rows: rows.mine)
        }
        try rethrowCollectives()
        return tally
    }

    /// The step's one reduction over the ranks: loss, accuracy, save and stop requests, and the
    /// global gradient norm, which costs a pass over this rank's shard of the gradients and is
    /// taken only when clipping needs it or the step will be logged (NaN otherwise).
    func reduceStep(_ tally: PassTally, gradientNorm: Bool) throws -> (StepSums, norm: Double) {
        var sums = StepSums(lossSum: tally.lossSum, correct: Double(tally.correct),
                            squaredGradients: gradientNorm ? squaredGradientNorm() : 0,
                            saveRequests: wantsSave ? 1 : 0, stopRequests: StopRequest.isRequested ? 1 : 0)
        try sums.reduce(over: comm, "metrics and gradient norm")
        return (sums, gradientNorm ? sums.squaredGradients.squareRoot() : .nan)
    }

    /// Clips (`scale`: 1, or clip / norm) and updates this rank's shard of the parameters; the
    /// experts updated inside backward are skipped (they were clipped by nothing: no clip is
    /// set when they are).
    func update(lr: Double, scale: Float) {
        if backwardUpdates == nil { optimizer.begin(lr: Float(lr), gradScale: scale) }
        optimizer.finish(model.store, skipping: backwardUpdates?.updated)
        backwardUpdates?.endStep()
    }

    /// Σ gradient² over what this rank updates: its shard of the synced gradients, plus the
    /// experts' gradients already consumed by the update inside backward.
    func squaredGradientNorm() -> Double {
        var squares = backwardUpdates?.squareSum ?? 0
        for r in updateRanges { squares += sumOfSquares(model.store.grads.data + r.lowerBound, count: r.count) }
        return squares
    }

    /// Loss (without label smoothing) and accuracy on `data` (`EvaluationLoop`); a model with
    /// fast feedforward layers is evaluated twice: soft (as trained) and hard (as deployed).
    public func evaluate(_ data: Dataset) throws -> Evaluation {
        let result = try evaluation.run(data, chunk: config.train.evalBatchSize)
        lastEvaluation = result
        return result
    }
}
