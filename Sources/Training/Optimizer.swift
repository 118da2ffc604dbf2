import Kernels
import Layers
import Foundation

/// Updates a parameter store from its gradients, then zeroes the gradients (fused into the
/// same pass, so the next backward can accumulate). An update is `begin`, then `update` for
/// parameters whose gradients were kept out of the store (`UpdateInBackward`), then `finish`
/// for the rest; `step` is the whole of it.
///
/// An optimizer updates the arena ranges of its `layout` (this rank's shard and its experts;
/// the whole arena on one process) and holds state for those alone.
public protocol Optimizer: AnyObject {
    /// Starts update `steps + 1` at learning rate `lr`; `gradScale` multiplies every gradient
    /// first (global-norm clipping).
    func begin(lr: Float, gradScale: Float)
    /// This update of `p` from `grads`: `p.count` floats outside the store, overwritten; `p`
    /// lies in one range of the layout. Thread-safe for different parameters.
    func update(_ p: Parameter, in store: ParameterStore, from grads: UnsafeMutablePointer<Float>)
    /// This update of the layout's ranges from the store's gradients, except the parameters
    /// whose `skipping[index]` is true (updated already).
    func finish(_ store: ParameterStore, skipping: UnsafePointer<Bool>?)
    /// The arena ranges this optimizer updates, and where their state lies.
    var layout: StateLayout { get }
    /// Updates taken so far (restored from a checkpoint).
    var steps: Int { get set }
    /// The name checkpoints record ("adamw", "sgd").
    var name: String { get }
    /// Per-parameter state laid out as `layout` says, by the name checkpoints give it (`m`,
    /// `v`; `momentum`).
    var state: [(name: String, values: Tensor)] { get }
}

/// Whether weight decay applies to `p`: weights always, biases and norms when the job says
/// so, a mixing coefficient never (decay would pull it toward one of the paths it mixes).
func decays(_ p: Parameter, _ biasesAndNorms: Bool) -> Bool {
    p.role == .weight || (biasesAndNorms && p.role != .coefficient)
}

extension Optimizer {
    /// One whole update of the layout's ranges from the store's gradients.
    public func step(_ store: ParameterStore, lr: Float, gradScale: Float) {
        begin(lr: lr, gradScale: gradScale)
        finish(store, skipping: nil)
    }

    /// Calls `body(p, lo, hi, at)` for each part `[lo, hi)` of a layout range inside one
    /// parameter `p` not marked in `skipping`; its state starts at `at`.
    func forEachPiece(of store: ParameterStore, skipping: UnsafePointer<Bool>?, _ body: (Parameter, Int, Int, Int) -> Void) {
        for (range, start) in zip(layout.ranges, layout.starts) {
            for p in store.parameters where p.resident && skipping?[p.index] != true {
                let lo = max(range.lowerBound, p.offset), hi = min(range.upperBound, p.offset + p.count)
                if lo < hi { body(p, lo, hi, start + lo - range.lowerBound) }
            }
        }
    }

    /// Where `p`'s state starts: it lies in one range of the layout (an expert updated inside
    /// backward).
    func stateIndex(of p: Parameter) -> Int {
        guard let at = layout.run(of: p.offset..<(p.offset + p.count)) else {
            preconditionFailure("\(p.name) is not whole in this rank's optimizer state")
        }
        return at
    }
}

/// AdamW (Loshchilov & Hutter 2019): Adam with weight decay decoupled from the gradient,
/// `p ← p·(1 − lr·wd) − lr/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + ε)`, as in PyTorch; computed as
/// `p·(1 − lr·wd) − α·m / (√v + ε̂)` with `α = lr·√(1 − β2ᵗ)/(1 − β1ᵗ)`, `ε̂ = ε·√(1 − β2ᵗ)`,
/// the same value with one division instead of two (the square root and the divisions share
/// one divider).
public final class AdamW: Optimizer, RangeTask {
    public let beta1: Float, beta2: Float, eps: Float, weightDecay: Float
    public let decayBiasesAndNorms: Bool
    public var steps = 0
    public let layout: StateLayout
    public let m: Tensor, v: Tensor
    public var name: String { "adamw" }
    public var state: [(name: String, values: Tensor)] { [("m", m), ("v", v)] }

    public init(layout: StateLayout, beta1: Float, beta2: Float, eps: Float, weightDecay: Float, decayBiasesAndNorms: Bool) {
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
        self.decayBiasesAndNorms = decayBiasesAndNorms
        self.layout = layout
        m = Tensor(shape: [layout.count])
        v = Tensor(shape: [layout.count])
    }

    /// AdamW over a whole arena of `count` floats.
    public convenience init(count: Int, beta1: Float, beta2: Float, eps: Float, weightDecay: Float, decayBiasesAndNorms: Bool) {
        self.init(layout: StateLayout(whole: count), beta1: beta1, beta2: beta2, eps: eps, weightDecay: weightDecay,
                  decayBiasesAndNorms: decayBiasesAndNorms)
    }

    // The update's constants, set by `begin` and read by `run` and `update` on the pool's
    // threads; `finish` sets the rest.
    private var lr: Float = 0, gradScale: Float = 1
    /// lr·√(1 − β2ᵗ)/(1 − β1ᵗ) and ε·√(1 − β2ᵗ): Adam's bias corrections folded into the
    /// constants, so the kernel divides once (`AdamWStep`).
    private var stepSize: Float = 0, epsHat: Float = 0
    private var store: ParameterStore?
    /// What `finish` updates, parameter by parameter, end to end, with where each piece's
    /// state starts: the pool splits this work (not the arena, where skipped parameters would
    /// leave one thread most of it).
    private var pieces: [(parameter: Parameter, range: Range<Int>, state: Int)] = []

    public func begin(lr: Float, gradScale: Float) {
        steps += 1
        let t = Double(steps)
        self.lr = lr
        self.gradScale = gradScale
        let rootBC2 = (1 - pow(Double(beta2), t)).squareRoot()
        stepSize = Float(Double(lr) * rootBC2 / (1 - pow(Double(beta1), t)))
        epsHat = Float(Double(eps) * rootBC2)
    }

    public func update(_ p: Parameter, in store: ParameterStore, from grads: UnsafeMutablePointer<Float>) {
        let at = stateIndex(of: p)
        update(store.values.data + p.offset, grads, m.data + at, v.data + at, p.count, shrink: shrink(p))
    }

    public func finish(_ store: ParameterStore, skipping: UnsafePointer<Bool>?) {
        self.store = store
        pieces.removeAll(keepingCapacity: true)
        pieces.reserveCapacity(store.parameters.count + layout.ranges.count)
        var total = 0
        forEachPiece(of: store, skipping: skipping) { p, lo, hi, at in
            pieces.append((p, lo..<hi, at))
            total += hi - lo
        }
        // Elementwise, so the result does not depend on the split.
        WorkerPool.shared.run(self, count: total)
    }

    /// Updates elements `part` of the pieces laid end to end.
    public func run(_ part: Range<Int>) {
        guard let store else { return }
        var at = 0
        for (p, r, state) in pieces {
            let lo = max(part.lowerBound - at, 0), hi = min(part.upperBound - at, r.count)
            at += r.count
            guard lo < hi else { continue }
            let i = r.lowerBound + lo, j = state + lo
            update(store.values.data + i, store.grads.data + i, m.data + j, v.data + j, hi - lo,
                   shrink: shrink(p))
        }
    }

    /// `1 − lr·wd`, or 1 for a parameter that does not decay.
    func shrink(_ p: Parameter) -> Float { 1 - lr * (decays(p, decayBiasesAndNorms) ? weightDecay : 0) }

    @inline(__always)
    func update(_ p: UnsafeMutablePointer<Float>, _ g: UnsafeMutablePointer<Float>,
                _ m: UnsafeMutablePointer<Float>, _ v: UnsafeMutablePointer<Float>, _ n: Int,
                shrink: Float) {
        adamw(p, g, m, v, count: n, AdamWStep(beta1: beta1, beta2: beta2, eps: epsHat, shrink: shrink, stepSize: stepSize,
                                               gradScale: gradScale))
    }
}

/// SGD with momentum (PyTorch's form: `b ← μ·b + g`, step `b`, or `g + μ·b` with Nesterov)
/// and L2 weight decay added to the gradient.
public final class SGD: Optimizer {
    public let momentum: Float, nesterov: Bool, weightDecay: Float, decayBiasesAndNorms: Bool
    public var steps = 0
    public let layout: StateLayout
    public let buffer: Tensor
    public var name: String { "sgd" }
    public var state: [(name: String, values: Tensor)] { [("momentum", buffer)] }

    public init(layout: StateLayout, momentum: Float, nesterov: Bool, weightDecay: Float, decayBiasesAndNorms: Bool) {
        self.momentum = momentum
        self.nesterov = nesterov
        self.weightDecay = weightDecay
        self.decayBiasesAndNorms = decayBiasesAndNorms
        self.layout = layout
        buffer = Tensor(shape: [layout.count])
    }

    /// SGD over a whole arena of `count` floats.
    public convenience init(count: Int, momentum: Float, nesterov: Bool, weightDecay: Float, decayBiasesAndNorms: Bool) {
        self.init(layout: StateLayout(whole: count), momentum: momentum, nesterov: nesterov, weightDecay: weightDecay,
                  decayBiasesAndNorms: decayBiasesAndNorms)
    }

    private var lr: Float = 0, gradScale: Float = 1

    public func begin(lr: Float, gradScale: Float) {
        steps += 1
        self.lr = lr
        self.gradScale = gradScale
    }

    public func update(_ p: Parameter, in store: ParameterStore, from grads: UnsafeMutablePointer<Float>) {
        update(p, store.values.data + p.offset, grads, buffer.data + stateIndex(of: p), p.count)
    }

    public func finish(_ store: ParameterStore, skipping: UnsafePointer<Bool>?) {
        forEachPiece(of: store, skipping: skipping) { p, lo, hi, at in
            update(p, store.values.data + lo, store.grads.data + lo, buffer.data + at, hi - lo)
        }
    }

    /// Updates n elements of parameter `p`: values `w`, gradients `g` (zeroed), momentum `b`.
    func update(_ p: Parameter, _ w: UnsafeMutablePointer<Float>, _ g: UnsafeMutablePointer<Float>,
                _ b: UnsafeMutablePointer<Float>, _ n: Int) {
        let wd = decays(p, decayBiasesAndNorms) ? weightDecay : 0
        let mu = momentum, first = steps == 1
        for i in 0..<n {
            let gi = g[i] * gradScale + wd * w[i]
            // PyTorch starts the buffer at the first gradient rather than at 0.
            b[i] = first ? gi : mu * b[i] + gi
            w[i] -= lr * (nesterov ? gi + mu * b[i] : b[i])
            g[i] = 0
        }
    }
}
