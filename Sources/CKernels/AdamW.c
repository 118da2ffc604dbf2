// AdamW in C because Swift lowers SIMD8<Float>.squareRoot() to eight scalar square roots with
// spills around them: the Swift loop ran at ~350 M elements/s, compute-bound, on a kernel that
// should be limited by memory. Here the square root and division are vector instructions.
#include "CKernels.h"
#include <string.h>

#pragma clang fp contract(off)

typedef float float8 __attribute__((ext_vector_type(8)));

// Unaligned loads and stores (macros: a function taking or returning a 256-bit vector would
// have a different ABI with and without AVX).
#define load8(x) ({ float8 r_; memcpy(&r_, (x), sizeof r_); r_; })
#define store8(x, r) do { float8 r_ = (r); memcpy((x), &r_, sizeof r_); } while (0)

/// The update of eight elements at a time up to the last whole eight; returns how far it got.
/// Written once, compiled into each caller below for its instruction set: one 256-bit AVX
/// operation per step there, two 128-bit SSE ones without AVX. Lane by lane it is the same
/// IEEE operations in the same order as `tail`.
__attribute__((always_inline))
static inline size_t vectors(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s) {
    const float c1 = 1 - s->beta1, c2 = 1 - s->beta2;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        float8 gv = load8(g + i) * s->grad_scale;
        float8 mv = s->beta1 * load8(m + i) + c1 * gv;
        float8 vv = s->beta2 * load8(v + i) + c2 * gv * gv;
        store8(m + i, mv);
        store8(v + i, vv);
        store8(p + i, load8(p + i) * s->shrink - s->step_size * mv / (__builtin_elementwise_sqrt(vv) / s->root_bc2 + s->eps));
        store8(g + i, (float8)0);
    }
    return i;
}

static void tail(float *p, float *g, float *m, float *v, size_t from, size_t n, const sb_adamw_step *s) {
    const float c1 = 1 - s->beta1, c2 = 1 - s->beta2;
    for (size_t i = from; i < n; i++) {
        float gv = g[i] * s->grad_scale;
        float mv = s->beta1 * m[i] + c1 * gv;
        float vv = s->beta2 * v[i] + c2 * gv * gv;
        m[i] = mv;
        v[i] = vv;
        p[i] = p[i] * s->shrink - s->step_size * mv / (__builtin_sqrtf(vv) / s->root_bc2 + s->eps);
        g[i] = 0;
    }
}

static size_t sse(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s) {
    return vectors(p, g, m, v, n, s);
}

__attribute__((target("avx")))
static size_t avx(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s) {
    return vectors(p, g, m, v, n, s);
}

void sb_adamw_isa(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s, int use_avx) {
    size_t done = use_avx && __builtin_cpu_supports("avx") ? avx(p, g, m, v, n, s) : sse(p, g, m, v, n, s);
    tail(p, g, m, v, done, n, s);
}

void sb_adamw(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s) {
    sb_adamw_isa(p, g, m, v, n, s, 1);
}
