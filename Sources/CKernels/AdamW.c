// AdamW in C because Swift lowers SIMD8<Float>.squareRoot() to eight scalar square roots with
// spills around them: the Swift loop ran at ~350 M elements/s, compute-bound, on a kernel that
// should be limited by memory. Here the square root and division are vector instructions.
#include "CKernels.h"
#include <immintrin.h>
#include <math.h>

#pragma clang fp contract(off)

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
    const __m128 b1 = _mm_set1_ps(s->beta1), b2 = _mm_set1_ps(s->beta2);
    const __m128 c1 = _mm_set1_ps(1 - s->beta1), c2 = _mm_set1_ps(1 - s->beta2);
    const __m128 shrink = _mm_set1_ps(s->shrink), step = _mm_set1_ps(s->step_size);
    const __m128 root = _mm_set1_ps(s->root_bc2), eps = _mm_set1_ps(s->eps), scale = _mm_set1_ps(s->grad_scale);
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        __m128 gv = _mm_mul_ps(_mm_loadu_ps(g + i), scale);
        __m128 mv = _mm_add_ps(_mm_mul_ps(b1, _mm_loadu_ps(m + i)), _mm_mul_ps(c1, gv));
        __m128 vv = _mm_add_ps(_mm_mul_ps(b2, _mm_loadu_ps(v + i)), _mm_mul_ps(_mm_mul_ps(c2, gv), gv));
        _mm_storeu_ps(m + i, mv);
        _mm_storeu_ps(v + i, vv);
        __m128 den = _mm_add_ps(_mm_div_ps(_mm_sqrt_ps(vv), root), eps);
        __m128 pv = _mm_sub_ps(_mm_mul_ps(_mm_loadu_ps(p + i), shrink), _mm_div_ps(_mm_mul_ps(step, mv), den));
        _mm_storeu_ps(p + i, pv);
        _mm_storeu_ps(g + i, _mm_setzero_ps());
    }
    return i;
}

__attribute__((target("avx")))
static size_t avx(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s) {
    const __m256 b1 = _mm256_set1_ps(s->beta1), b2 = _mm256_set1_ps(s->beta2);
    const __m256 c1 = _mm256_set1_ps(1 - s->beta1), c2 = _mm256_set1_ps(1 - s->beta2);
    const __m256 shrink = _mm256_set1_ps(s->shrink), step = _mm256_set1_ps(s->step_size);
    const __m256 root = _mm256_set1_ps(s->root_bc2), eps = _mm256_set1_ps(s->eps), scale = _mm256_set1_ps(s->grad_scale);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 gv = _mm256_mul_ps(_mm256_loadu_ps(g + i), scale);
        __m256 mv = _mm256_add_ps(_mm256_mul_ps(b1, _mm256_loadu_ps(m + i)), _mm256_mul_ps(c1, gv));
        __m256 vv = _mm256_add_ps(_mm256_mul_ps(b2, _mm256_loadu_ps(v + i)), _mm256_mul_ps(_mm256_mul_ps(c2, gv), gv));
        _mm256_storeu_ps(m + i, mv);
        _mm256_storeu_ps(v + i, vv);
        __m256 den = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vv), root), eps);
        __m256 pv = _mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(p + i), shrink), _mm256_div_ps(_mm256_mul_ps(step, mv), den));
        _mm256_storeu_ps(p + i, pv);
        _mm256_storeu_ps(g + i, _mm256_setzero_ps());
    }
    return i;
}

void sb_adamw_isa(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s, int use_avx) {
    size_t done = use_avx && __builtin_cpu_supports("avx") ? avx(p, g, m, v, n, s) : sse(p, g, m, v, n, s);
    tail(p, g, m, v, done, n, s);
}

void sb_adamw(float *p, float *g, float *m, float *v, size_t n, const sb_adamw_step *s) {
    sb_adamw_isa(p, g, m, v, n, s, 1);
}
