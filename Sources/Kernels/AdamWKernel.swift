import CKernels

/// The constants of one AdamW step, with Adam's bias corrections folded in (see `AdamW` in
/// Training): the update is `lr·m̂ / (√v̂ + ε)` with m̂ = m/(1 − β1ᵗ) and v̂ = v/(1 − β2ᵗ),
/// written as `stepSize·m / (√v + eps)`.
public struct AdamWStep: Sendable {
    public var beta1: Float, beta2: Float
    /// ε·√(1 − β2ᵗ).
    public var eps: Float
    /// 1 − lr·wd (1 for parameters without weight decay).
    public var shrink: Float
    /// lr·√(1 − β2ᵗ) / (1 − β1ᵗ).
    public var stepSize: Float
    /// Multiplies every gradient first (global-norm clipping; 1 otherwise).
    public var gradScale: Float

    public init(beta1: Float, beta2: Float, eps: Float, shrink: Float, stepSize: Float, gradScale: Float) {
        (self.beta1, self.beta2, self.eps) = (beta1, beta2, eps)
        (self.shrink, self.stepSize, self.gradScale) = (shrink, stepSize, gradScale)
    }

    var c: sb_adamw_step {
        sb_adamw_step(beta1: beta1, beta2: beta2, eps: eps, shrink: shrink, step_size: stepSize, grad_scale: gradScale)
    }
}

/// AdamW over n elements, then zeroes g:
///   g' = g·gradScale; m = β1·m + (1−β1)·g'; v = β2·v + (1−β2)·g'·g';
///   p = p·shrink − stepSize·m / (√v + eps).
/// Each operation is one IEEE float operation in this order (no fused multiply-add), so every
/// instruction-set path (`CKernels/AdamW.c`: AVX-512, AVX, SSE, chosen at run time) gives the
/// same bits.
public func adamw(_ p: UnsafeMutablePointer<Float>, _ g: UnsafeMutablePointer<Float>, _ m: UnsafeMutablePointer<Float>,
                  _ v: UnsafeMutablePointer<Float>, count n: Int, _ step: AdamWStep) {
    var constants = step.c
    sb_adamw(p, g, m, v, n, &constants)
}

/// The same on the widest path up to `isa` that the CPU has: 0 SSE, 1 AVX, 2 AVX-512 (for
/// tests of every path).
public func adamw(_ p: UnsafeMutablePointer<Float>, _ g: UnsafeMutablePointer<Float>, _ m: UnsafeMutablePointer<Float>,
                  _ v: UnsafeMutablePointer<Float>, count n: Int, _ step: AdamWStep, isa: Int) {
    var constants = step.c
    sb_adamw_isa(p, g, m, v, n, &constants, Int32(isa))
}
