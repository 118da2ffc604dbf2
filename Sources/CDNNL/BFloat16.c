// fp32 → bf16 for the inputs of bf16 products: round to nearest even, as vcvtneps2bf16 does
// (which also reads denormal inputs as zero), with a portable loop that agrees bit for bit.
#include "CDNNL.h"
#include <immintrin.h>
#include <string.h>

static uint16_t portable(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7f800000u) == 0) return (uint16_t)((u >> 16) & 0x8000u);           // ±0, denormals
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);    // NaN, quieted
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

__attribute__((target("avx512f,avx512bf16,avx512vl")))
static void native(const float *x, uint16_t *y, size_t n) {
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
        _mm512_storeu_si512((void *)(y + i), (__m512i)v);
    }
    if (i < n) {
        __mmask16 lo = (__mmask16)((n - i >= 16) ? 0xffff : ((1u << (n - i)) - 1));
        __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(lo, x + i));
        _mm256_mask_storeu_epi16(y + i, lo, (__m256i)v);
        i += 16;
        if (i < n) {
            __mmask16 hi = (__mmask16)((1u << (n - i)) - 1);
            __m256bh w = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(hi, x + i));
            _mm256_mask_storeu_epi16(y + i, hi, (__m256i)w);
        }
    }
}

// Read once at load, before any thread can ask.
static int native_ok;
__attribute__((constructor)) static void detect(void) {
    __builtin_cpu_init();
    native_ok = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vl");
}

void sb_to_bf16_isa(const float *x, uint16_t *y, size_t n, int allow_native) {
    if (allow_native && native_ok) { native(x, y, n); return; }
    for (size_t i = 0; i < n; i++) y[i] = portable(x[i]);
}

void sb_to_bf16(const float *x, uint16_t *y, size_t n) { sb_to_bf16_isa(x, y, n, 1); }
