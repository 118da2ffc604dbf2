// HDF5's Fletcher32, vectorized. HDF5 sums 16-bit big-endian words w_i: sum1 += w_i, then
// sum2 += sum1, folding both ((s & 0xffff) + (s >> 16)) after each block of 360 words. Over a
// block of n words starting from sum1, sum2 gains n*sum1 + Σ (n - i) w_i and sum1 gains Σ w_i,
// all modulo 2^32 as in HDF5's uint32 arithmetic. With words i = G*k + l in groups of G lanes,
// Σ (n - i) w_i = Σ_l (G*B_l - l*A_l), where each lane adds A_l += w and then B_l += A_l:
// no multiplications in the loop. Sums over consecutive parts combine as
// (S1 + S2, W1 + n2*S1 + W2).
#include "Checksum.h"
#include <string.h>

typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint16_t u16x16 __attribute__((vector_size(32)));
typedef uint32_t u32x4 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));

typedef struct { uint32_t s, w; } sums;

static inline sums combine(sums a, sums b, size_t n2) {
    return (sums){a.s + b.s, a.w + (uint32_t)n2 * a.s + b.w};
}

static sums scalar(const uint8_t *p, size_t n) {
    sums r = {0, 0};
    for (size_t i = 0; i < n; i++) {
        uint32_t w = (uint32_t)p[2 * i] << 8 | p[2 * i + 1];
        r.s += w;
        r.w += (uint32_t)(n - i) * w;
    }
    return r;
}

// n a multiple of 8.
static sums groups8(const uint8_t *p, size_t n) {
    u32x4 a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
    for (size_t i = 0; i < n; i += 8) {
        u16x8 v;
        memcpy(&v, p + 2 * i, 16);
        v = (v << 8) | (v >> 8);
        a0 += __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3), u32x4);
        a1 += __builtin_convertvector(__builtin_shufflevector(v, v, 4, 5, 6, 7), u32x4);
        b0 += a0;
        b1 += a1;
    }
    sums r = {0, 0};
    for (int l = 0; l < 4; l++) {
        r.s += a0[l] + a1[l];
        r.w += 8 * b0[l] - (uint32_t)l * a0[l] + 8 * b1[l] - (uint32_t)(l + 4) * a1[l];
    }
    return r;
}

__attribute__((target("avx2")))
static sums groups16(const uint8_t *p, size_t n) {
    u32x8 a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
    for (size_t i = 0; i < n; i += 16) {
        u16x16 v;
        memcpy(&v, p + 2 * i, 32);
        v = (v << 8) | (v >> 8);
        a0 += __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7), u32x8);
        a1 += __builtin_convertvector(__builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15), u32x8);
        b0 += a0;
        b1 += a1;
    }
    sums r = {0, 0};
    for (int l = 0; l < 8; l++) {
        r.s += a0[l] + a1[l];
        r.w += 16 * b0[l] - (uint32_t)l * a0[l] + 16 * b1[l] - (uint32_t)(l + 8) * a1[l];
    }
    return r;
}

static inline uint32_t fold(uint32_t s) { return (s & 0xffff) + (s >> 16); }

static uint32_t fletcher(const uint8_t *p, size_t bytes, int avx2) {
    size_t words = bytes / 2;
    uint32_t sum1 = 0, sum2 = 0;
    while (words > 0) {
        size_t n = words < 360 ? words : 360;
        sums r;
        if (avx2 && n >= 16) {
            size_t head = n - n % 16;
            r = combine(groups16(p, head), scalar(p + 2 * head, n - head), n - head);
        } else if (n >= 8) {
            size_t head = n - n % 8;
            r = combine(groups8(p, head), scalar(p + 2 * head, n - head), n - head);
        } else {
            r = scalar(p, n);
        }
        sum2 += (uint32_t)n * sum1 + r.w;
        sum1 += r.s;
        sum1 = fold(sum1);
        sum2 = fold(sum2);
        words -= n;
        p += 2 * n;
    }
    if (bytes % 2) {
        sum1 += (uint32_t)*p << 8;
        sum2 += sum1;
        sum1 = fold(sum1);
        sum2 = fold(sum2);
    }
    sum1 = fold(sum1);
    sum2 = fold(sum2);
    return sum2 << 16 | sum1;
}

uint32_t sb_fletcher32(const void *data, size_t bytes) {
    static int avx2 = -1;
    if (avx2 < 0) avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    return fletcher((const uint8_t *)data, bytes, avx2);
}

uint32_t sb_fletcher32_isa(const void *data, size_t bytes, int avx2) {
    return fletcher((const uint8_t *)data, bytes, avx2 && __builtin_cpu_supports("avx2"));
}
