#pragma once
#include <stddef.h>

/// The constants of one AdamW step (see `AdamW` in Training/Optimizer.swift).
typedef struct {
    float beta1, beta2, eps;
    /// 1 − lr·wd (1 for parameters without weight decay).
    float shrink;
    /// lr / (1 − β1ᵗ) and √(1 − β2ᵗ).
    float step_size, root_bc2;
    /// Multiplies every gradient first (global-norm clipping; 1 otherwise).
    float grad_scale;
} sb_adamw_step;

/// AdamW over n elements, then zeroes g:
///   g' = g·grad_scale; m = β1·m + (1−β1)·g'; v = β2·v + (1−β2)·g'·g';
///   p = p·shrink − step_size·m / (√v / root_bc2 + eps).
/// Each operation is one IEEE float operation in this order (no fused multiply-add), so the
/// AVX path (chosen at run time), the SSE path and the scalar tail agree bit for bit.
void sb_adamw(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s);

/// The same, with AVX only if `avx` is non-zero and the CPU has it (tests run both paths).
void sb_adamw_isa(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s, int avx);
