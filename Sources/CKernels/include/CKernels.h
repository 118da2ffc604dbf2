#pragma once
#include <stddef.h>

/// The constants of one AdamW step (see `AdamW` in Training/Optimizer.swift), with the bias
/// corrections folded in: the update is Adam's, `lr·m̂ / (√v̂ + ε)` with m̂ = m/(1 − β1ᵗ) and
/// v̂ = v/(1 − β2ᵗ), written as `step_size·m / (√v + eps)` (Kingma & Ba's "efficient" form).
typedef struct {
    float beta1, beta2;
    /// ε·√(1 − β2ᵗ).
    float eps;
    /// 1 − lr·wd (1 for parameters without weight decay).
    float shrink;
    /// lr·√(1 − β2ᵗ) / (1 − β1ᵗ).
    float step_size;
    /// Multiplies every gradient first (global-norm clipping; 1 otherwise).
    float grad_scale;
} sb_adamw_step;

/// AdamW over n elements, then zeroes g:
///   g' = g·grad_scale; m = β1·m + (1−β1)·g'; v = β2·v + (1−β2)·g'·g';
///   p = p·shrink − step_size·m / (√v + eps).
/// Each operation is one IEEE float operation in this order (no fused multiply-add), so the
/// AVX-512 and AVX paths (chosen at run time), the SSE path and the scalar tail agree bit for
/// bit.
void sb_adamw(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s);

/// The same, on the widest path up to `isa` that the CPU has: 0 SSE, 1 AVX, 2 AVX-512 (tests
/// run every path).
void sb_adamw_isa(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s, int isa);

/// GELU, erf form, on `rows × cols`: `z += bias` (per column, when bias is not NULL), then
/// `y = z·Φ(z)`; y must not alias z. Bit for bit the Swift `Activation.gelu` (GELU.c).
void sb_gelu_forward(float *z, const float *bias, float *y, size_t rows, size_t cols);

/// `dz = dy · (Φ(z) + z·φ(z))` over n elements; dz may alias dy.
void sb_gelu_backward(const float *z, const float *dy, float *dz, size_t n);

/// The same, with AVX2 only if `avx` is non-zero and the CPU has it (tests run both paths).
void sb_gelu_forward_isa(float *z, const float *bias, float *y, size_t rows, size_t cols, int avx);
void sb_gelu_backward_isa(const float *z, const float *dy, float *dz, size_t n, int avx);

/// `y = x·wᵀ` (no accumulation) for an MoE expert's small products (ExpertGEMM.c): x is
/// `n × k` (row stride ldx), w is `m × k` stored by rows (row stride ldw = k), y is `n × m`
/// (row stride ldy). Returns 1 when done; 0, touching nothing, when this CPU lacks AVX2 and
/// FMA or the shape does not fit (n ≤ 1024, m a multiple of 4, k of 8): the caller uses BLAS
/// then.
int sb_gemm_nt(size_t n, size_t m, size_t k, const float *x, size_t ldx, const float *w, size_t ldw,
               float *y, size_t ldy);

/// Whether this CPU runs `sb_gemm_nt` (AVX2 and FMA).
int sb_gemm_nt_usable(void);

/// Brackets a library call (1 before, 0 after) for the test suite's allocation counter, which
/// counts the library's own heap allocations apart from ours; nothing where it is not loaded.
void sb_inside_library(int inside);
