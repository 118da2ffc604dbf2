// AdamW in C because Swift lowers SIMD8<Float>.squareRoot() to eight scalar square roots with
// spills around them: the Swift loop ran at ~350 M elements/s, compute-bound, on a kernel that
// should be limited by memory. Here the square root and division are vector instructions.
//
// The square root and the division share one divider, which bounds this kernel on a core
// with the data near: two divider operations per element (the bias correction of v is
// folded into the constants), and 512-bit vectors where the CPU has them (twice the
// elements per divider operation on a core with a 512-bit divider).
#include "CKernels.h"
#include <string.h>

#pragma clang fp contract(off)
// The helpers take and return wide vectors; all are static and always inlined into the one
// function per instruction set that calls them, so no call crosses the ABI.
#pragma clang diagnostic ignored "-Wpsabi"

typedef float float8 __attribute__((ext_vector_type(8)));
typedef float float16 __attribute__((ext_vector_type(16)));

/// The update of `width` elements at a time (a vector type of that many floats) up to the
/// last whole vector; returns how far it got. Written once, compiled into each caller below
/// for its instruction set. Lane by lane it is the same IEEE operations in the same order as
/// `tail`.
#define VECTORS(vector, p, g, m, v, n, s) ({                                                   \
    const float c1_ = 1 - (s)->beta1, c2_ = 1 - (s)->beta2;                                     \
    const size_t w_ = sizeof(vector) / sizeof(float);                                          \
    size_t i_ = 0;                                                                             \
    for (; i_ + w_ <= (n); i_ += w_) {                                                         \
        vector g_, m_, v_, p_;                                                                 \
        memcpy(&g_, (g) + i_, sizeof g_); memcpy(&m_, (m) + i_, sizeof m_);                    \
        memcpy(&v_, (v) + i_, sizeof v_); memcpy(&p_, (p) + i_, sizeof p_);                    \
        g_ = g_ * (s)->grad_scale;                                                             \
        m_ = (s)->beta1 * m_ + c1_ * g_;                                                       \
        v_ = (s)->beta2 * v_ + c2_ * g_ * g_;                                                  \
        p_ = p_ * (s)->shrink - (s)->step_size * m_ / (__builtin_elementwise_sqrt(v_) + (s)->eps); \
        memcpy((m) + i_, &m_, sizeof m_); memcpy((v) + i_, &v_, sizeof v_);                    \
        memcpy((p) + i_, &p_, sizeof p_);                                                      \
        vector z_ = 0; memcpy((g) + i_, &z_, sizeof z_);                                       \
    }                                                                                          \
    i_; })

static void tail(float *p, float *g, float *m, float *v, size_t from, size_t n, const sb_adamw_step *s) {
    const float c1 = 1 - s->beta1, c2 = 1 - s->beta2;
    for (size_t i = from; i < n; i++) {
        float gv = g[i] * s->grad_scale;
        float mv = s->beta1 * m[i] + c1 * gv;
        float vv = s->beta2 * v[i] + c2 * gv * gv;
        m[i] = mv;
        v[i] = vv;
        p[i] = p[i] * s->shrink - s->step_size * mv / (__builtin_sqrtf(vv) + s->eps);
        g[i] = 0;
    }
}

// Two 128-bit operations per 8-lane vector.
static size_t sse(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s) {
    return VECTORS(float8, p, g, m, v, n, s);
}

__attribute__((target("avx")))
static size_t avx(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s) {
    return VECTORS(float8, p, g, m, v, n, s);
}

__attribute__((target("avx512f")))
static size_t avx512(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s) {
    return VECTORS(float16, p, g, m, v, n, s);
}

void sb_adamw_isa(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s, int isa) {
    static int best = -1;
    if (best < 0) best = __builtin_cpu_supports("avx512f") ? 2 : __builtin_cpu_supports("avx") ? 1 : 0;
    int use = isa < best ? isa : best;
    size_t done = use == 2 ? avx512(p, g, m, v, n, s) : use == 1 ? avx(p, g, m, v, n, s) : sse(p, g, m, v, n, s);
    tail(p, g, m, v, done, n, s);
}

void sb_adamw(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s) {
    sb_adamw_isa(p, g, m, v, n, s, 2);
}
