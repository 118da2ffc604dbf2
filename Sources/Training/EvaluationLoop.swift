import Cluster
import Foundation
import Kernels
import Layers
import Storage

/// Loss and accuracy over a whole dataset.
public struct Evaluation: Sendable {
    public var loss: Double
    public var accuracy: Double
    public var samples: Int
    /// For a model with fast feedforward layers: the same with hard decisions (one leaf per
    /// sample, as deployed); `loss` and `accuracy` are then the soft mixture's, as trained.
    public var hard: (loss: Double, accuracy: Double, samplesPerSecond: Double)?
    /// Samples evaluated per second: forward passes of `eval_batch_size` rows, the data's
    /// gather and the loss included (no backward, no optimizer).
    public var samplesPerSecond: Double
    /// When asked for: `confusion[t * classes + p]` samples of true class t predicted as p
    /// (the soft model's, for an FFF model; `hardConfusion` the hard one's).
    public var confusion: [Int]?
    public var hardConfusion: [Int]?
    /// With the confusion matrix, for an MoE model: per MoE layer, the tokens routed to each
    /// expert over the whole pass (k per token).
    public var expertTokens: [[Int]]?

    public init(loss: Double, accuracy: Double, samples: Int, samplesPerSecond: Double = .nan,
                hard: (loss: Double, accuracy: Double, samplesPerSecond: Double)? = nil) {
        self.loss = loss
        self.accuracy = accuracy
        self.samples = samples
        self.samplesPerSecond = samplesPerSecond
        self.hard = hard
    }

    /// "85.12%", or "85.12% (hard 84.90%)".
    public var accuracyText: String {
        String(format: "%.2f%%", 100 * accuracy) + (hard.map { String(format: " (hard %.2f%%)", 100 * $0.accuracy) } ?? "")
    }
}

/// Evaluates a model on a dataset: each rank takes its part of every chunk of `chunk`
/// samples, in dataset order, and the sums are reduced over the ranks, so every world size
/// evaluates the same rows in the same chunks. Owns its buffers (made once).
final class EvaluationLoop {
    let model: Model
    let comm: Communicator
    let collectives: MoECollectives
    /// The layers' gathers, with the parameters in shards (set by the trainer).
    var shards: ParameterShards?
    let maxRows: Int
    let x: Tensor
    var labels: [Int32]
    var indices: [Int32]

    init(model: Model, comm: Communicator, collectives: MoECollectives, maxRows: Int, width: Int) {
        self.model = model
        self.comm = comm
        self.collectives = collectives
        self.maxRows = maxRows
        x = Tensor(shape: [maxRows, width])
        labels = [Int32](repeating: 0, count: maxRows)
        indices = [Int32](repeating: 0, count: maxRows)
    }

    /// Soft, then (for a model with hard inference, `HardInference`) hard; with `confusion`,
    /// the confusion matrices too.
    func run(_ data: Dataset, chunk: Int, confusion: Bool = false) throws -> Evaluation {
        var result = try pass(data, chunk: chunk, hardDecisions: false, confusion: confusion)
        if model.hasHardInference {
            let hard = try pass(data, chunk: chunk, hardDecisions: true, confusion: confusion)
            result.hard = (hard.loss, hard.accuracy, hard.samplesPerSecond)
            result.hardConfusion = hard.confusion
        }
        return result
    }

    func pass(_ data: Dataset, chunk: Int, hardDecisions: Bool, confusion: Bool) throws -> Evaluation {
        let started = ContinuousClock.now
        let classes = model.classes
        var lossSum = 0.0, correct = 0.0
        var counts = [Double](repeating: 0, count: confusion ? classes * classes : 0)
        let expertLayers = model.layers((any ExpertLayer).self)
        let experts = expertLayers.first?.experts ?? 0
        var routed = [Double](repeating: 0, count: confusion ? expertLayers.count * experts : 0)
        var start = 0
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
                let logits = model.forward(x.data, rows: rows, context: ForwardContext(training: false, hardDecisions: hardDecisions))
                try collectives.rethrow()
                try shards?.rethrow()
                let out = labels.withUnsafeBufferPointer {
                    softmaxCrossEntropy(logits: logits, labels: $0.baseAddress!, rows: rows, classes: classes,
                                        smoothing: 0, gradScale: 0, dlogits: nil)
                }
                lossSum += out.lossSum
                correct += Double(out.correct)
                if confusion {
                    for (l, layer) in expertLayers.enumerated() {
                        for i in 0..<experts { routed[l * experts + i] += Double(layer.routed[i]) }
                    }
                    for r in 0..<rows {
                        let z = logits + r * classes
                        var argmax = 0
                        for j in 1..<classes where z[j] > z[argmax] { argmax = j }
                        counts[Int(labels[r]) * classes + argmax] += 1
                    }
                }
                done += rows
            }
            start += n
        }
        var sums = StepSums(lossSum: lossSum, correct: correct)
        try sums.reduce(over: comm, "evaluation")
        if confusion {
            counts += routed
            try counts.withUnsafeMutableBufferPointer { try comm.allreduceSum($0.baseAddress!, count: $0.count, "evaluation: confusion") }
            routed = Array(counts[(classes * classes)...])
            counts.removeLast(routed.count)
        }
        var e = Evaluation(loss: sums.lossSum / Double(data.count), accuracy: sums.correct / Double(data.count), samples: data.count,
                           samplesPerSecond: Double(data.count) / (ContinuousClock.now - started).seconds)
        if confusion {
            e.confusion = counts.map { Int($0) }
            if experts > 0 { e.expertTokens = expertLayers.indices.map { l in (0..<experts).map { Int(routed[l * experts + $0]) } } }
        }
        return e
    }
}
