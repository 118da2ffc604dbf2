import CKernels
import Kernels
import Layers
import Foundation

/// Updates a parameter store from its gradients, then zeroes the gradients (fused into the
/// same pass, so the next backward can accumulate).
public protocol Optimizer: AnyObject {
    /// Updates the flat arena ranges `ranges` (this rank's shard; the whole arena on one
    /// process). `gradScale` multiplies every gradient first (global-norm clipping).
    func step(_ store: ParameterStore, ranges: [Range<Int>], lr: Float, gradScale: Float)
    /// Updates taken so far (restored from a checkpoint).
    var steps: Int { get set }
    /// The name checkpoints record ("adamw", "sgd").
    var name: String { get }
    /// Per-parameter state laid out like the parameter arena, by the name checkpoints give it
    /// (`m`, `v`; `momentum`).
    var state: [(name: String, values: Tensor)] { get }
}

/// AdamW (Loshchilov & Hutter 2019): Adam with weight decay decoupled from the gradient,
/// `p ← p·(1 − lr·wd) − lr/(1 − β1ᵗ) · m / (√v/√(1 − β2ᵗ) + ε)`, as in PyTorch.
public final class AdamW: Optimizer, RangeTask {
    public let beta1: Float, beta2: Float, eps: Float, weightDecay: Float
    public let decayBiasesAndNorms: Bool
    public var steps = 0
    public let m: Tensor, v: Tensor
    public var name: String { "adamw" }
    public var state: [(name: String, values: Tensor)] { [("m", m), ("v", v)] }

    public init(count: Int, beta1: Float, beta2: Float, eps: Float, weightDecay: Float, decayBiasesAndNorms: Bool) {
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
        self.decayBiasesAndNorms = decayBiasesAndNorms
        m = Tensor(shape: [count])
        v = Tensor(shape: [count])
    }

    // The step's constants, set by `step` and read by `run` on the pool's threads.
    private var store: ParameterStore?
    private var lr: Float = 0, stepSize: Float = 0, rootBC2: Float = 1, gradScale: Float = 1
    private var span = 0..<0

    public func step(_ store: ParameterStore, ranges: [Range<Int>], lr: Float, gradScale: Float) {
        steps += 1
        let t = Double(steps)
        self.store = store
        self.lr = lr
        self.gradScale = gradScale
        stepSize = lr / Float(1 - pow(Double(beta1), t))
        rootBC2 = Float((1 - pow(Double(beta2), t)).squareRoot())
        // One pass over each range, split over the pool's threads: elementwise, so the result
        // does not depend on the split.
        for r in ranges {
            span = r
            WorkerPool.shared.run(self, count: r.count)
        }
    }

    /// Updates `range` of the current span, parameter by parameter.
    public func run(_ part: Range<Int>) {
        guard let store else { return }
        let range = (span.lowerBound + part.lowerBound)..<(span.lowerBound + part.upperBound)
        for p in store.parameters {
            let lo = max(range.lowerBound, p.offset), hi = min(range.upperBound, p.offset + p.count)
            guard lo < hi else { continue }
            let decays = decayBiasesAndNorms || p.role == .weight
            update(store.values.data + lo, store.grads.data + lo, m.data + lo, v.data + lo, hi - lo,
                   shrink: 1 - lr * (decays ? weightDecay : 0), stepSize: stepSize, rootBC2: rootBC2,
                   gradScale: gradScale)
        }
    }

    @inline(__always)
    func update(_ p: UnsafeMutablePointer<Float>, _ g: UnsafeMutablePointer<Float>,
                _ m: UnsafeMutablePointer<Float>, _ v: UnsafeMutablePointer<Float>, _ n: Int,
                shrink: Float, stepSize: Float, rootBC2: Float, gradScale: Float) {
        var constants = sb_adamw_step(beta1: beta1, beta2: beta2, eps: eps, shrink: shrink, step_size: stepSize,
                                      root_bc2: rootBC2, grad_scale: gradScale)
        sb_adamw(p, g, m, v, n, &constants)
    }
}

/// SGD with momentum (PyTorch's form: `b ← μ·b + g`, step `b`, or `g + μ·b` with Nesterov)
/// and L2 weight decay added to the gradient.
public final class SGD: Optimizer {
    public let momentum: Float, nesterov: Bool, weightDecay: Float, decayBiasesAndNorms: Bool
    public var steps = 0
    public let buffer: Tensor
    public var name: String { "sgd" }
    public var state: [(name: String, values: Tensor)] { [("momentum", buffer)] }

    public init(count: Int, momentum: Float, nesterov: Bool, weightDecay: Float, decayBiasesAndNorms: Bool) {
        self.momentum = momentum
        self.nesterov = nesterov
        self.weightDecay = weightDecay
        self.decayBiasesAndNorms = decayBiasesAndNorms
        buffer = Tensor(shape: [count])
    }

    public func step(_ store: ParameterStore, ranges: [Range<Int>], lr: Float, gradScale: Float) {
        steps += 1
        let mu = momentum, first = steps == 1
        for range in ranges {
            for p in store.parameters {
                let lo = max(range.lowerBound, p.offset), hi = min(range.upperBound, p.offset + p.count)
                guard lo < hi else { continue }
                update(p, lo, hi, store: store, lr: lr, gradScale: gradScale, mu: mu, first: first)
            }
        }
    }

    /// Updates `[lo, hi)` of the arena, all inside parameter `p`.
    func update(_ p: Parameter, _ lo: Int, _ hi: Int, store: ParameterStore, lr: Float, gradScale: Float, mu: Float, first: Bool) {
        let wd = decayBiasesAndNorms || p.role == .weight ? weightDecay : 0
        let w = store.values.data, g = store.grads.data, b = buffer.data
        for i in lo..<hi {
            let gi = g[i] * gradScale + wd * w[i]
            // PyTorch starts the buffer at the first gradient rather than at 0.
            b[i] = first ? gi : mu * b[i] + gi
            w[i] -= lr * (nesterov ? gi + mu * b[i] : b[i])
            g[i] = 0
        }
    }
}
