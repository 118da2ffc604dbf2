// fp32 → bf16 for the inputs of bf16 products: round to nearest even, as vcvtneps2bf16 does
// (which also reads denormal inputs as zero), with a portable loop that agrees bit for bit;
// and the same rounding written back as fp32 for the emulated path (CPUs whose oneDNN has no
// bf16 matmul).
#include "CDNNL.h"
#include <immintrin.h>
#include <stdatomic.h>
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

// The native instruction is used only where oneDNN, too, runs bf16 natively: a cap on oneDNN's
// instruction set (ONEDNN_MAX_CPU_ISA) makes the whole program see the narrower CPU. Asked
// once; every thread would compute the same answer, so a race only repeats the question.
static _Atomic int native_ok = -1;
static int native_usable(void) {
    int ok = atomic_load_explicit(&native_ok, memory_order_relaxed);
    if (ok < 0) {
        __builtin_cpu_init();
        ok = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vl") && sb_dnnl_native_bf16();
        atomic_store_explicit(&native_ok, ok, memory_order_relaxed);
    }
    return ok;
}

int sb_bf16_native_rounding(void) { return native_usable(); }

void sb_to_bf16_isa(const float *x, uint16_t *y, size_t n, int allow_native) {
    if (allow_native && native_usable()) { native(x, y, n); return; }
    for (size_t i = 0; i < n; i++) y[i] = portable(x[i]);
}

void sb_to_bf16(const float *x, uint16_t *y, size_t n) { sb_to_bf16_isa(x, y, n, 1); }

// The emulated path's rounding: the bf16 value written back as the fp32 number it equals (its
// 16 low bits zero), for the fp32 library to multiply. Eight lanes of `portable` at once.
__attribute__((target("avx2")))
static void widened_avx2(const float *x, float *y, size_t n) {
    const __m256i exponent = _mm256_set1_epi32(0x7f800000), magnitude = _mm256_set1_epi32(0x7fffffff);
    const __m256i sign = _mm256_set1_epi32((int)0x80000000u), high = _mm256_set1_epi32((int)0xffff0000u);
    const __m256i quiet = _mm256_set1_epi32(0x00400000), half = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    const __m256i zero = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i u = _mm256_loadu_si256((const __m256i *)(x + i));
        __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), one);
        __m256i r = _mm256_and_si256(_mm256_add_epi32(_mm256_add_epi32(u, half), odd), high);
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, magnitude), exponent);
        r = _mm256_blendv_epi8(r, _mm256_and_si256(_mm256_or_si256(u, quiet), high), nan);
        __m256i tiny = _mm256_cmpeq_epi32(_mm256_and_si256(u, exponent), zero);
        r = _mm256_blendv_epi8(r, _mm256_and_si256(u, sign), tiny);
        _mm256_storeu_si256((__m256i *)(y + i), r);
    }
    for (; i < n; i++) {
        uint32_t w = (uint32_t)portable(x[i]) << 16;
        memcpy(y + i, &w, 4);
    }
}

static int avx2_usable(void) {
    static _Atomic int ok = -1;
    int v = atomic_load_explicit(&ok, memory_order_relaxed);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2");
        atomic_store_explicit(&ok, v, memory_order_relaxed);
    }
    return v;
}

void sb_round_bf16_isa(const float *x, float *y, size_t n, int allow_avx2) {
    if (allow_avx2 && avx2_usable()) { widened_avx2(x, y, n); return; }
    for (size_t i = 0; i < n; i++) {
        uint32_t w = (uint32_t)portable(x[i]) << 16;
        memcpy(y + i, &w, 4);
    }
}

void sb_round_bf16(const float *x, float *y, size_t n) { sb_round_bf16_isa(x, y, n, 1); }
