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
}

/// Loss and accuracy over a whole dataset.
public struct Evaluation: Sendable {
    public var loss: Double
    public var accuracy: Double
    public var samples: Int
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
    /// Reduce-scatters gradients bucket by bucket during backward, and allgathers the
    /// parameters each rank updated.
    public let gradientSync: ShardedSync

    /// The current epoch's sample order.
    var permutation: [Int32]
    var permutationEpoch = -1
    let x: Tensor
    var labels: [Int32]
    let dlogits: Tensor
    /// [lossSum, correct, Σ grad², save wanted, stop wanted] reduced across ranks in one call.
    var counts: [Double] = [0, 0, 0, 0, 0]
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
        let t = config.train
        // A rank holds at most ⌈B/P⌉ rows of a training batch, and evaluates in chunks.
        maxRows = max((t.batchSize + comm.size - 1) / comm.size, min(t.evalBatchSize, test.count))
        model = Model(config.model, inputs: train.width, classes: config.data.classes,
                      maxRows: maxRows, seed: config.run.seed)
        let o = config.optimizer
        switch o.kind {
        case .adamw:
            optimizer = AdamW(count: model.store.count, beta1: Float(o.beta1), beta2: Float(o.beta2), eps: Float(o.eps),
                              weightDecay: Float(o.weightDecay), decayBiasesAndNorms: o.decayBiasesAndNorms)
        case .sgd:
            optimizer = SGD(count: model.store.count, momentum: Float(o.momentum), nesterov: o.nesterov,
                            weightDecay: Float(o.weightDecay), decayBiasesAndNorms: o.decayBiasesAndNorms)
        }
        order = GlobalSampleOrder(count: train.count, batchSize: t.batchSize, seed: config.run.seed)
        schedule = LearningRateSchedule(base: o.lr, kind: config.schedule.kind, warmupSteps: config.schedule.warmupSteps,
                                        totalSteps: Self.totalSteps(config, order), finalFraction: config.schedule.finalFraction)
        permutation = [Int32](repeating: 0, count: train.count)
        x = Tensor(shape: [maxRows, train.width])
        labels = [Int32](repeating: 0, count: maxRows)
        dlogits = Tensor(shape: [maxRows, config.data.classes])
        moeSums = MoECollectives(comm)
        placement = model.moeLayers.first.map { ExpertPlacement(experts: $0.spec.experts, ranks: comm.size) }
        if comm.size > 1, let placement {
            moeSums.placement = placement
            moeSums.balances = config.parallel.balanceExperts
            for moe in model.moeLayers {
                moe.reduction = moeSums
                moe.attach(moeSums)
            }
        }
        comm.watchdog.deadline = config.parallel.watchdogSeconds
        let parameters = model.store.parameters
        let experts = Self.expertSpans(model, placement: placement, comm: comm)
        gradientSync = try ShardedSync(
            comm: comm, grads: model.store.grads.data, values: model.store.values.data, count: model.store.count,
            bucketBytes: config.parallel.bucketBytes, regions: experts.synced,
            label: { range in
                // The parameters a bucket touches, by global name.
                let inside = parameters.filter { $0.offset < range.upperBound && $0.offset + $0.count > range.lowerBound }
                return inside.count == 1 ? inside[0].name : "\(inside.first!.name) … \(inside.last!.name)"
            })
        updateRanges = gradientSync.ownedRanges + experts.own
        expertSpans = experts.all
        ownExpertSpans = experts.own
        syncedRegions = experts.synced ?? [0..<model.store.count]
        let wholeInBackward = comm.size == 1 || experts.synced != nil
        backwardUpdates = o.updateInBackward && o.clipNorm == 0 && wholeInBackward && !model.moeLayers.isEmpty
            ? BackwardUpdates(optimizer: optimizer, store: model.store) : nil
        for moe in model.moeLayers { moe.updateInBackward = backwardUpdates }
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
        if from < model.store.count { synced.append(from..<model.store.count) }
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

    static func totalSteps(_ c: JobConfig, _ order: GlobalSampleOrder) -> Int {
        let full = c.train.epochs * order.batchesPerEpoch
        return c.train.maxSteps > 0 ? min(full, c.train.maxSteps) : full
    }

    public var totalSteps: Int { schedule.totalSteps }

    /// One optimizer step on global batch `batch` of `epoch`: gather this rank's rows,
    /// forward, loss, backward, average gradients over ranks, clip, update.
    public func trainStep(epoch: Int, batch: Int) throws -> StepResult {
        if permutationEpoch != epoch {
            order.permutation(epoch: epoch, into: &permutation)
            permutationEpoch = epoch
        }
        let positions = order.batch(batch)
        let globalRows = positions.count
        let mine = GlobalSampleOrder.part(rows: globalRows, rank: comm.rank, ranks: comm.size)
        let rows = mine.count
        try permutation.withUnsafeBufferPointer { p in
            try labels.withUnsafeMutableBufferPointer { y in
                let slice = UnsafeBufferPointer(rebasing: p[(positions.lowerBound + mine.lowerBound)..<(positions.lowerBound + mine.upperBound)])
                try trainSet.gather(slice, into: x.data, labels: y.baseAddress!)
            }
        }
        comm.watchdog.step = step
        let context = ForwardContext(training: true, step: step, rowOffset: mine.lowerBound, globalRows: globalRows)
        let logits = model.forward(x.data, rows: rows, context: context)
        try moeSums.rethrow()
        // Gradients of the mean over the *global* batch, so summing over ranks averages.
        let local = labels.withUnsafeBufferPointer {
            softmaxCrossEntropy(logits: logits, labels: $0.baseAddress!, rows: rows, classes: model.classes,
                                smoothing: config.train.labelSmoothing, gradScale: 1 / Float(globalRows),
                                dlogits: dlogits.data)
        }
        let clip = config.optimizer.clipNorm
        let logged = isLoggedStep(step + 1, every: config.train.logEvery, total: totalSteps)
        let lr = schedule.rate(step)
        let early = backwardUpdates
        if let early {
            optimizer.begin(lr: Float(lr), gradScale: 1)
            early.measures = logged
        }
        gradientSync.begin()
        try model.backward(dlogits.data, rows: rows) { try gradientSync.gradientsFinal(from: $0) }
        try moeSums.rethrow()
        try gradientSync.finishReduceScatter()
        let store = model.store
        let owned = updateRanges

        // The global gradient norm costs a pass over this rank's shard of the gradients and
        // rides on the metrics' reduction: taken when clipping needs it or the step will be
        // logged, not otherwise.
        var squares = early?.squareSum ?? 0
        if clip > 0 || logged {
            for r in owned { squares += sumOfSquares(store.grads.data + r.lowerBound, count: r.count) }
        }
        counts[0] = local.lossSum
        counts[1] = Double(local.correct)
        counts[2] = squares
        counts[3] = wantsSave ? 1 : 0
        counts[4] = StopRequest.isRequested ? 1 : 0
        try counts.withUnsafeMutableBufferPointer { try comm.allreduceSum($0.baseAddress!, count: 5, "metrics and gradient norm") }
        let norm = clip > 0 || logged ? counts[2].squareRoot() : .nan
        let gradScale: Float = clip > 0 && norm > clip ? Float(clip / norm) : 1
        if early == nil { optimizer.begin(lr: Float(lr), gradScale: gradScale) }
        optimizer.finish(store, ranges: owned, skipping: early?.updated)
        early?.endStep()
        try gradientSync.gatherParameters()
        step += 1
        // The MoE auxiliary losses are already means over the global batch.
        let loss = counts[0] / Double(globalRows) + model.auxLoss
        lastLoss = loss
        return StepResult(step: step, epoch: epoch, loss: loss, correct: Int(counts[1]),
                          rows: globalRows, gradNorm: norm, lr: lr, saveRequested: counts[3] > 0, stopRequested: counts[4] > 0)
    }

    /// Loss (without label smoothing) and accuracy on `data`; each rank evaluates its part of
    /// every chunk of `evalBatchSize` samples, in dataset order.
    public func evaluate(_ data: Dataset) throws -> Evaluation {
        let chunk = config.train.evalBatchSize
        var lossSum = 0.0, correct = 0.0
        var start = 0
        var indices = [Int32](repeating: 0, count: maxRows)
        while start < data.count {
            let n = min(chunk, data.count - start)
            let mine = GlobalSampleOrder.part(rows: n, rank: comm.rank, ranks: comm.size)
            // A rank's part of a chunk may exceed maxRows: take it in pieces, as many on every
            // rank (the largest part decides), since an MoE forward pass is collective.
            let largest = (n + comm.size - 1) / comm.size
            var done = 0
            for _ in 0..<((largest + maxRows - 1) / maxRows) {
                let rows = min(maxRows, mine.count - done)
                for i in 0..<rows { indices[i] = Int32(start + mine.lowerBound + done + i) }
                try indices.withUnsafeBufferPointer { idx in
                    try labels.withUnsafeMutableBufferPointer { y in
                        try data.gather(UnsafeBufferPointer(rebasing: idx[0..<rows]), into: x.data, labels: y.baseAddress!)
                    }
                }
                let logits = model.forward(x.data, rows: rows, context: ForwardContext(training: false))
                try moeSums.rethrow()
                let out = labels.withUnsafeBufferPointer {
                    softmaxCrossEntropy(logits: logits, labels: $0.baseAddress!, rows: rows, classes: model.classes,
                                        smoothing: 0, gradScale: 0, dlogits: nil)
                }
                lossSum += out.lossSum
                correct += Double(out.correct)
                done += rows
            }
            start += n
        }
        counts[0] = lossSum
        counts[1] = correct
        counts[2] = 0
        try counts.withUnsafeMutableBufferPointer { try comm.allreduceSum($0.baseAddress!, count: 3, "evaluation") }
        let result = Evaluation(loss: counts[0] / Double(data.count), accuracy: counts[1] / Double(data.count), samples: data.count)
        lastEvaluation = result
        return result
    }
}

/// The MoE layers' collectives: sums for capacity order and auxiliary statistics, and the
/// expert exchange. A layer's forward and backward cannot throw, so an MPI error is kept and
/// thrown by the trainer right after (every rank then aborts); later calls do nothing.
final class MoECollectives: RankReduction, ExpertExchange {
    let comm: Communicator
    var placement = ExpertPlacement(experts: 1, ranks: 1)
    var error: (any Error)?

    init(_ comm: Communicator) { self.comm = comm }

    /// Set by the trainer: `parallel.balance_experts`.
    var balances = false

    var ranks: Int { comm.size }
    var rank: Int { comm.rank }
    var movesExperts: Bool { balances && placement.experts >= comm.size }

    func runner(of expert: Int, forTokensOf q: Int) -> Int { placement.runner(of: expert, forTokensOf: q) }

    func sum(_ data: UnsafeMutablePointer<Double>, count: Int) {
        guard error == nil else { return }
        do { try comm.allreduceSum(data, count: count, "MoE statistics") } catch { self.error = error }
    }

    func sumBelow(_ data: UnsafeMutablePointer<Double>, count: Int) {
        guard error == nil else { return }
        do { try comm.sumBelow(data, count: count, "MoE capacity order") } catch { self.error = error }
    }

    func allToAll(_ send: UnsafePointer<Int32>, _ receive: UnsafeMutablePointer<Int32>, perRank: Int) {
        guard error == nil else { return }
        do { try comm.allToAll(send, receive, perRank: perRank, "MoE token counts") } catch { self.error = error }
    }

    func allToAll(_ send: UnsafePointer<Float>, _ sendCounts: UnsafePointer<Int32>, _ sendOffsets: UnsafePointer<Int32>,
                  _ receive: UnsafeMutablePointer<Float>, _ receiveCounts: UnsafePointer<Int32>,
                  _ receiveOffsets: UnsafePointer<Int32>) {
        guard error == nil else { return }
        do {
            try comm.allToAll(send, sendCounts, sendOffsets, receive, receiveCounts, receiveOffsets, "MoE exchange")
        } catch { self.error = error }
    }

    func rethrow() throws {
        if let error { throw error }
    }
}
