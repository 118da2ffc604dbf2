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

    /// The sample orders of two epochs, in slot epoch % 2: the current one, and the next
    /// one once the input reads ahead into it.
    var permutations: [[Int32]]
    var permutationEpochs = [-1, -1]
    let x: Tensor
    var labels: [Int32]
    let dlogits: Tensor
    /// Set on the coordinator when a checkpoint is due by time; rides on the next step's
    /// reduction so every rank saves after the same step.
    public var wantsSave = false

    public internal(set) var step = 0
    /// For the checkpoint's metrics summary.
    var lastLoss: Double?
    var lastEvaluation: Evaluation?
    var lastExpertTokens: [[Int]] = []
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
    /// What this rank's optimizer updates: its shard of the synced parameters, and the
    /// experts it alone owns (wherever they ran).
    let updateRanges: [Range<Int>]
    /// Per MoE layer, all of its experts' parameters and those this rank runs (when experts
    /// live on their runners only).
    let expertSpans: [Range<Int>], ownExpertSpans: [Range<Int>]
    /// The parts of the arena every rank holds and the gradient sync covers.
    let syncedRegions: [Range<Int>]
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
        model = Model(config.model, inputs: train.width, classes: config.data.classes,
                      maxRows: maxRows, seed: config.run.seed, frozen: config.frozen, precision: config.train.products)
        // `JobConfig.parse` checked the names already; a config made another way is checked here.
        if let problem = model.frozenProblems.first { throw ConfigError("[model] frozen: \(problem)") }
        // Optimizer state for the trainable parameters only: the frozen ones lie after them.
        let trainable = model.store.trainableCount
        let o = config.optimizer
        switch o.kind {
        case .adamw:
            optimizer = AdamW(count: trainable, beta1: Float(o.beta1), beta2: Float(o.beta2), eps: Float(o.eps),
                              weightDecay: Float(o.weightDecay), decayBiasesAndNorms: o.decayBiasesAndNorms)
        case .sgd:
            optimizer = SGD(count: trainable, momentum: Float(o.momentum), nesterov: o.nesterov,
                            weightDecay: Float(o.weightDecay), decayBiasesAndNorms: o.decayBiasesAndNorms)
        }
        order = GlobalSampleOrder(count: train.count, batchSize: config.train.batchSize, seed: config.run.seed)
        schedule = LearningRateSchedule(base: o.lr, kind: config.schedule.kind, warmupSteps: config.schedule.warmupSteps,
                                        totalSteps: Self.totalSteps(config, order), finalFraction: config.schedule.finalFraction)
        permutations = [[Int32](repeating: 0, count: train.count), [Int32](repeating: 0, count: train.count)]
        x = Tensor(shape: [maxRows, train.width])
        labels = [Int32](repeating: 0, count: maxRows)
        dlogits = Tensor(shape: [maxRows, config.data.classes])
        (moeSums, placement) = MoECollectives.attach(to: model, comm: comm, balanceExperts: config.parallel.balanceExperts)
        evaluation = EvaluationLoop(model: model, comm: comm, collectives: moeSums, maxRows: maxRows, width: train.width)
        comm.watchdog.deadline = config.parallel.watchdogSeconds
        let parameters = model.store.parameters
        let experts = Self.expertSpans(model, placement: placement, comm: comm)
        gradientSync = try ShardedSync(
            comm: comm, grads: model.store.grads.data, values: model.store.values.data, count: trainable,
            bucketBytes: config.parallel.bucketBytes, regions: experts.synced,
            label: { range in
                // The parameters a bucket touches, by global name.
                let inside = parameters.filter { $0.offset < range.upperBound && $0.offset + $0.count > range.lowerBound }
                return inside.count == 1 ? inside[0].name : "\(inside.first!.name) … \(inside.last!.name)"
            })
        updateRanges = gradientSync.ownedRanges + experts.own
        expertSpans = experts.all
        ownExpertSpans = experts.own
        syncedRegions = experts.synced ?? [0..<trainable]
        // With accumulation a gradient is whole only in the step's last backward.
        let wholeInBackward = (comm.size == 1 || experts.synced != nil) && !accumulates
        backwardUpdates = o.updateInBackward && o.clipNorm == 0 && wholeInBackward && !model.moeLayers.isEmpty
            ? BackwardUpdates(optimizer: optimizer, model: model, threads: WorkerPool.shared.threads) : nil
        statisticsOverBatch = config.train.moeStatistics == .batch
        gathersStatistics = statisticsOverBatch && model.gradientsUseBatchStatistics
        routingTrace = RoutingTrace.open(rank: comm.rank)
        train.preparePrefetch(rows: passRows)
    }

    /// With one runner per expert (E ≥ P), an expert's gradient and update live on its runner
    /// alone: experts stay out of the sync (`synced` is the rest of the arena) and each rank
    /// updates its own (`own`, per MoE layer; `all` is each layer's whole expert span).
    /// Replicated experts (E < P) are summed by the sync like dense parameters (zero where
    /// not run): then `synced` is nil and the lists are empty.
    static func expertSpans(_ model: Model, placement: ExpertPlacement?, comm: Communicator)
        -> (synced: [Range<Int>]?, all: [Range<Int>], own: [Range<Int>]) {
        guard comm.size > 1, let placement, placement.experts >= comm.size else { return (nil, [], []) }
        var all: [Range<Int>] = [], own: [Range<Int>] = []
        for moe in model.moeLayers {
            func span(_ experts: Range<Int>) -> Range<Int> {
                let last = moe.b2[experts.upperBound - 1] ?? moe.w2[experts.upperBound - 1]
                return moe.w1[experts.lowerBound].offset..<(last.offset + last.count)
            }
            all.append(span(0..<moe.spec.experts))
            own.append(span(placement.experts(on: comm.rank)))
        }
        var from = 0
        var synced: [Range<Int>] = []
        for x in all.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if x.lowerBound > from { synced.append(from..<x.lowerBound) }
            from = x.upperBound
        }
        if from < model.store.trainableCount { synced.append(from..<model.store.trainableCount) }
        return (synced, all, own)
    }

    /// Copies every expert's parameters from the rank that runs it to every rank, so that the
    /// whole model can be written or evaluated anywhere (each rank otherwise holds current
    /// values only for its own experts). Collective; nothing to do when experts are synced.
    public func collectExperts() throws {
        for (span, own) in zip(expertSpans, ownExpertSpans) {
            let values = model.store.values.data
            // Zero the experts run elsewhere; the sum over ranks is then the runners' values.
            (values + span.lowerBound).update(repeating: 0, count: own.lowerBound - span.lowerBound)
            (values + own.upperBound).update(repeating: 0, count: span.upperBound - own.upperBound)
            try comm.allreduceSum(values + span.lowerBound, count: span.count, "expert collection")
        }
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

    /// One optimizer step on global batch `batch` of `epoch`: for each of its passes (one, or
    /// several micro-batches), load this rank's rows, forward, loss, backward, the gradients
    /// adding up; the last backward reduce-scatters gradient buckets as it finishes them. Then
    /// one reduction of the step's sums, update this rank's shard, allgather the parameters.
    /// With several passes and batch statistics that gradients depend on, a forward pre-pass
    /// over every micro-batch gathers those statistics first.
    public func trainStep(epoch: Int, batch: Int) throws -> StepResult {
        let global = order.batch(batch).count
        let passes = passes(rows: global)
        comm.watchdog.step = step
        func context(_ rows: PassRows, _ pass: Int, _ statistics: BatchStatistics) -> ForwardContext {
            ForwardContext(training: true, step: step, rowOffset: rows.offset, globalRows: global, microBatch: pass,
                           passRows: rows.pass, capacityOverStep: statisticsOverBatch, statistics: statistics)
        }
        let gathered = passes > 1 && gathersStatistics
        if gathered {
            for pass in 0..<passes {
                let rows = try loadPass(pass, epoch: epoch, batch: batch, gathering: true)
                model.gatherStatistics(x.data, rows: rows.mine, context: context(rows, pass, .gather))
                try moeSums.rethrow()
            }
        }
        let clip = config.optimizer.clipNorm
        let logged = isLoggedStep(step + 1, every: config.train.logEvery, total: totalSteps)
        let lr = schedule.rate(step)
        var lossSum = 0.0, correct = 0, aux = 0.0
        for pass in 0..<passes {
            let rows = try loadPass(pass, epoch: epoch, batch: batch)
            let logits = model.forward(x.data, rows: rows.mine, context: context(rows, pass, gathered ? .held : .pass))
            try moeSums.rethrow()
            routingTrace?.record(model, step: step, samples: {
                self.permutations[epoch % 2][self.order.batch(batch).lowerBound + rows.offset + $0]
            })
            // Gradients of the mean over the *global* batch, so summing over passes and ranks averages.
            let local = labels.withUnsafeBufferPointer {
                softmaxCrossEntropy(logits: logits, labels: $0.baseAddress!, rows: rows.mine, classes: model.classes,
                                    smoothing: config.train.labelSmoothing, gradScale: 1 / Float(global), dlogits: dlogits.data)
            }
            lossSum += local.lossSum
            correct += local.correct
            aux += model.auxLoss
            if pass < passes - 1 {
                model.backward(dlogits.data, rows: rows.mine)
            } else {
                backwardUpdates?.begin(lr: Float(lr), measuring: logged)
                gradientSync.begin()
                try model.backward(dlogits.data, rows: rows.mine) { try gradientSync.gradientsFinal(from: $0) }
            }
            try moeSums.rethrow()
        }
        try gradientSync.finishReduceScatter()

        // The global gradient norm costs a pass over this rank's shard of the gradients and
        // rides on the step's reduction: taken when clipping needs it or the step will be
        // logged, not otherwise.
        var sums = StepSums(lossSum: lossSum, correct: Double(correct),
                            squaredGradients: clip > 0 || logged ? squaredGradientNorm() : 0,
                            saveRequests: wantsSave ? 1 : 0, stopRequests: StopRequest.isRequested ? 1 : 0)
        try sums.reduce(over: comm, "metrics and gradient norm")
        let norm = clip > 0 || logged ? sums.squaredGradients.squareRoot() : .nan
        if backwardUpdates == nil { optimizer.begin(lr: Float(lr), gradScale: clip > 0 && norm > clip ? Float(clip / norm) : 1) }
        optimizer.finish(model.store, ranges: updateRanges, skipping: backwardUpdates?.updated)
        backwardUpdates?.endStep()
        try gradientSync.gatherParameters()
        step += 1
        // The auxiliary losses are already means over the global batch (each pass's part).
        let loss = sums.lossSum / Double(global) + aux
        lastLoss = loss
        return StepResult(step: step, epoch: epoch, loss: loss, correct: Int(sums.correct), rows: global, gradNorm: norm,
                          lr: lr, saveRequested: sums.saveRequests > 0, stopRequested: sums.stopRequests > 0,
                          inputWait: trainSet.takeInputWait().seconds)
    }

    /// The passes a global batch of `rows` rows takes: passes of `passRows` on every rank.
    public func passes(rows: Int) -> Int { (rows + comm.size * passRows - 1) / (comm.size * passRows) }

    /// This rank's rows of one training pass: `mine` rows, the first at `offset` within the
    /// global batch, of `pass` rows over all ranks.
    struct PassRows {
        var mine: Int, offset: Int, pass: Int
    }

    /// Gathers this rank's rows of pass `pass` of global batch `batch` of `epoch` into `x` and
    /// `labels`. Pass m holds rows [m·G, (m+1)·G) of the batch, G = P · `passRows`, split
    /// among the ranks as a whole batch is: global row order runs pass by pass, then rank by
    /// rank, the same order as one pass over the batch.
    /// Then names the rows of the load after it to the input (`Dataset.prefetch`), which reads
    /// them meanwhile: the next pass, the first again after a `gathering` pre-pass's last, or
    /// the next step's first.
    func loadPass(_ pass: Int, epoch: Int, batch: Int, gathering: Bool = false) throws -> PassRows {
        let rows = try passSamples(pass, epoch: epoch, batch: batch) { samples in
            try labels.withUnsafeMutableBufferPointer { y in try trainSet.gather(samples, into: x.data, labels: y.baseAddress!) }
        }
        guard trainSet.prefetches else { return rows }
        var next = (pass: pass + 1, epoch: epoch, batch: batch)
        if next.pass == passes(rows: order.batch(batch).count) {
            next.pass = 0
            if !gathering { next.batch += 1 }
            if next.batch == order.batchesPerEpoch { (next.epoch, next.batch) = (epoch + 1, 0) }
        }
        _ = try passSamples(next.pass, epoch: next.epoch, batch: next.batch) { trainSet.prefetch($0) }
        return rows
    }

    /// Calls `body` with the samples this rank takes in pass `pass` of global batch `batch` of
    /// `epoch` (as `loadPass` describes them); returns where they lie.
    func passSamples(_ pass: Int, epoch: Int, batch: Int, _ body: (UnsafeBufferPointer<Int32>) throws -> Void) throws -> PassRows {
        let slot = epoch % 2
        if permutationEpochs[slot] != epoch {
            order.permutation(epoch: epoch, into: &permutations[slot])
            permutationEpochs[slot] = epoch
        }
        let positions = order.batch(batch)
        let size = comm.size * passRows, first = pass * size
        let rows = min(size, positions.count - first)
        let part = GlobalSampleOrder.part(rows: rows, rank: comm.rank, ranks: comm.size)
        let from = positions.lowerBound + first + part.lowerBound
        try permutations[slot].withUnsafeBufferPointer { p in try body(UnsafeBufferPointer(rebasing: p[from..<(from + part.count)])) }
        return PassRows(mine: part.count, offset: first + part.lowerBound, pass: rows)
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
