import Kernels

/// What every layer is built with, in one place: the parameter store it registers its
/// parameters in, the most rows a pass holds (its buffers' size), the number format of its
/// products, and the run's seed (the store's: initialization, dropout and routing keys). A
/// layer takes its buffers, bf16 copies and prepared products from here, so how the model is
/// built is decided once, not threaded through every initializer.
///
/// A build allocates (the model that trains) or only counts (`counting`): the same layers are
/// declared either way, and a counting build records what they would hold and compute
/// (`BuildCount`) while handing out placeholders that trap when touched (`Placeholder`).
/// So the model's size, memory and FLOPs are whatever its layers declare, never a second
/// description of them.
public final class BuildContext {
    public let store: ParameterStore
    public let maxRows: Int
    public let precision: Precision
    public var seed: UInt64 { store.seed }
    /// Whether this build only counts: its tensors are placeholders, its products are not
    /// prepared, and its store is never finalized.
    public let counting: Bool
    /// What the layers built so far hold and compute.
    public private(set) var count = BuildCount()
    /// The share of a forward product's rows it runs on in inference (a layer whose inference
    /// takes another path than training sets it around what it builds: an FFF's soft tree
    /// is replaced by a descent, and counts that path itself).
    public var inferenceShare = 1.0
    /// Whether the parameters registered now may be frozen (`ParameterStore.register`): a
    /// layer whose parameters cannot stay fixed (an MoE layer, its shared expert included)
    /// turns it off around what it builds.
    public var freezable = true
    /// The ranks the model is built for and this process's place among them: what it holds.
    /// With one owner per expert (E ≥ P on several ranks) an expert lives on its owner alone
    /// (`ExpertPlacement`); everything else lives on every rank.
    public let ranks: Int, rank: Int
    /// The most rows a training pass holds (at most `maxRows`, which evaluation's chunks may
    /// set higher): what a buffer only backward uses needs room for.
    public let trainingRows: Int

    public init(store: ParameterStore, maxRows: Int, precision: Precision = .fp32, counting: Bool = false,
                ranks: Int = 1, rank: Int = 0, trainingRows: Int? = nil) {
        precondition(ranks >= 1 && rank >= 0 && rank < ranks)
        self.store = store
        self.maxRows = maxRows
        self.trainingRows = min(trainingRows ?? maxRows, maxRows)
        self.precision = precision
        self.counting = counting
        self.ranks = ranks
        self.rank = rank
    }

    /// A build with a store of its own (for layers without parameters, and tests).
    public convenience init(seed: UInt64, maxRows: Int, precision: Precision = .fp32, counting: Bool = false) {
        self.init(store: ParameterStore(seed: seed), maxRows: maxRows, precision: precision, counting: counting)
    }

    /// Whether expert `i` of a layer of `experts` lives in this process: each has one owner
    /// (E ≥ P on several ranks), or every rank holds every expert (one rank; replicas, E < P).
    public func holdsExpert(_ i: Int, of experts: Int) -> Bool {
        !Self.expertsOwnerOnly(experts: experts, ranks: ranks) || ExpertPlacement(experts: experts, ranks: ranks).experts(on: rank).contains(i)
    }

    /// Whether an expert of a layer of `experts` on `ranks` ranks lives on its owner alone.
    public static func expertsOwnerOnly(experts: Int, ranks: Int) -> Bool { ranks > 1 && experts >= ranks }

    /// A buffer of the layer's own (zeroed; see `Tensor`).
    public func tensor(_ shape: [Int]) -> Tensor {
        count.buffers += Self.elements(shape)
        return counting ? Tensor(placeholder: shape) : Tensor(shape: shape)
    }

    /// A flat buffer of `elements` floats, a sum that a counted model may carry past `Int`
    /// (every expert's parameters over many ranks): counted in `Double`; a built model's fits.
    public func tensor(elements: Double) -> Tensor {
        count.buffers += elements
        return counting ? Tensor(placeholder: [Int(min(elements, Double(Int.max / 2)))]) : Tensor(shape: [Int(elements)])
    }

    /// Per-row scratch that is not a buffer of floats (indices, row sums): small beside the
    /// buffers and not counted; empty in a counting build, whose rows may be far more than
    /// any machine holds.
    public func scratch<T>(repeating value: T, count: Int) -> [T] {
        counting ? [] : [T](repeating: value, count: count)
    }

    /// A bf16 copy of a product's input of `shape` where the products round to bf16
    /// (`precision`); nil in fp32.
    public func bf16(_ shape: [Int]) -> BFloat16Buffer? {
        guard precision.roundsToBFloat16 else { return nil }
        count.bf16Values += Self.elements(shape)
        let n = Placeholder.count(shape)
        return counting ? BFloat16Buffer(placeholder: n, precision: precision) : BFloat16Buffer(count: n, precision: precision)
    }

    /// What a product does in a step, for the FLOP counts.
    public enum Work {
        /// Training's forward and inference (inference on `inferenceShare` of the rows).
        case forward
        /// Training only: a backward product, or a forward one that inference replaces.
        case training
        /// Inference only (on `inferenceShare` of the rows): a product of a path that only
        /// inference takes.
        case inference
        /// Not counted: an alternative to a product that is (the same product, written to
        /// another place), or one that never runs in this model (a frozen weight's gradient).
        case uncounted
    }

    /// A product prepared for this build (`Matmul`), in the build's precision unless the
    /// layer keeps it fp32 (`precision`). Its FLOPs per sample are counted by `work`: the
    /// rows it is prepared for (m or k) over the rows a pass holds.
    public func product(_ ta: Transpose, _ tb: Transpose, m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int,
                        rows: Matmul.Rows, accumulate: Bool, precision: Precision? = nil, work: Work) -> Matmul {
        let perSample = 2 * Double(m) * Double(n) * Double(k) / Double(max(maxRows, 1))
        switch work {
        case .forward: countFLOPs(training: perSample, inference: perSample * inferenceShare)
        case .training: countFLOPs(training: perSample)
        case .inference: countFLOPs(inference: perSample * inferenceShare)
        case .uncounted: break
        }
        return Matmul(ta, tb, m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc, rows: rows, accumulate: accumulate,
                      precision: precision ?? self.precision, prepared: !counting)
    }

    /// FLOPs per sample of work a layer does without a prepared product (a loop of dot products).
    public func countFLOPs(training: Double = 0, inference: Double = 0) {
        count.trainingFLOPs += training
        count.inferenceFLOPs += inference
    }

    /// Where `parameter`'s values are: its own, or the placeholder in a counting build (the
    /// store is not finalized there).
    public func values(of parameter: Parameter) -> UnsafeMutablePointer<Float> {
        counting ? Placeholder.address.assumingMemoryBound(to: Float.self) : parameter.value
    }

    /// Where `parameter`'s gradient is, as `values(of:)`.
    public func grads(of parameter: Parameter) -> UnsafeMutablePointer<Float> {
        counting ? Placeholder.address.assumingMemoryBound(to: Float.self) : parameter.grad
    }

    static func elements(_ shape: [Int]) -> Double { shape.reduce(1.0) { $0 * Double($1) } }
}

/// What a build's layers hold and compute, beyond the parameter store (counted in `Double`:
/// a counted model may be larger than any machine).
public struct BuildCount: Sendable, Equatable {
    /// Floats of the layers' own buffers (activations, their gradients, routing).
    public var buffers = 0.0
    /// Values of the bf16 copies of the products' inputs (`BFloat16Buffer`); none in fp32.
    public var bf16Values = 0.0
    /// FLOPs of the matrix products for one sample: a training step's forward and backward,
    /// and an inference forward pass. Elementwise work (norms, activations, the optimizer) is
    /// not counted.
    public var trainingFLOPs = 0.0
    public var inferenceFLOPs = 0.0
}
