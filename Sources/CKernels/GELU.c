// GELU (erf form) in C because Swift compiles its 8-lane vectors for the baseline x86-64:
// two 128-bit SSE operations per vector. Here the AVX2 path (chosen at run time) does one
// 256-bit operation per vector: GELU forward and backward were 5% of a W2 step on two
// threads.
//
// The arithmetic is that of `GELUKernel`, `erf8` and `exp8` in Sources/Kernels (the same
// constants, the same IEEE operations in the same order, no fused multiply-add), so this and
// the Swift kernels agree bit for bit; KernelsTests checks it on both paths.
#include "CKernels.h"
#include <stdint.h>
#include <string.h>

#pragma clang fp contract(off)
// The helpers below take and return 256-bit vectors; all are static and always inlined into
// the one function per instruction set that calls them, so no call crosses the ABI.
#pragma clang diagnostic ignored "-Wpsabi"

typedef float float8 __attribute__((ext_vector_type(8)));
typedef int32_t int8v __attribute__((ext_vector_type(8)));
typedef uint32_t uint8v __attribute__((ext_vector_type(8)));

#define load8(x) ({ float8 r_; memcpy(&r_, (x), sizeof r_); r_; })
#define store8(x, r) do { float8 r_ = (r); memcpy((x), &r_, sizeof r_); } while (0)
#define splat(c) ((float8)(c))

// b where b < a, else a (Swift's `min8`: a NaN in a is kept).
#define min8(a, b) ({ float8 a_ = (a), b_ = (b); int8v k_ = b_ < a_; \
    (float8)((k_ & (int8v)b_) | (~k_ & (int8v)a_)); })
// b where a < b, else a (`max8`).
#define max8(a, b) ({ float8 a_ = (a), b_ = (b); int8v k_ = a_ < b_; \
    (float8)((k_ & (int8v)b_) | (~k_ & (int8v)a_)); })

__attribute__((always_inline))
static inline float8 exp8(float8 x) {
    x = max8(min8(x, splat(88.0f)), splat(-87.0f));
    const float8 shifter = splat(12582912.0f);
    float8 t = x * 1.44269504f + shifter;
    float8 n = t - shifter;
    float8 r = x - n * 0.69314575f - n * 1.4286068e-6f;
    float8 p = splat(1.0f / 40320);
    p = p * r + 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1;
    p = p * r + 1;
    // Unsigned: the wrapping integer arithmetic of Swift's &- &+ &<<.
    uint8v ni = (uint8v)t - 0x4B400000u;
    float8 scale = (float8)((ni + 127u) << 23);
    return p * scale;
}

__attribute__((always_inline))
static inline float8 erf8(float8 x) {
    x = max8(min8(x, splat(4.0f)), splat(-4.0f));
    float8 x2 = x * x;
    float8 p = splat(-2.72614225801306e-10f);
    p = p * x2 + 2.77068142495902e-08f;
    p = p * x2 - 2.10102402082508e-06f;
    p = p * x2 - 5.69250639462346e-05f;
    p = p * x2 - 7.34990630326855e-04f;
    p = p * x2 - 2.95459980854025e-03f;
    p = p * x2 - 1.60960333262415e-02f;
    float8 q = splat(-1.45660718464996e-05f);
    q = q * x2 - 2.13374055278905e-04f;
    q = q * x2 - 1.68282697438203e-03f;
    q = q * x2 - 7.37332916720468e-03f;
    q = q * x2 - 1.42647390514189e-02f;
    return x * p / q;
}

__attribute__((always_inline))
static inline float8 gelu8(float8 z) { return 0.5f * z * (1 + erf8(z * 0.707106781f)); }

// Φ(z) + z·φ(z).
__attribute__((always_inline))
static inline float8 gelu_grad8(float8 z) {
    return 0.5f * (1 + erf8(z * 0.707106781f)) + z * 0.398942280f * exp8(-0.5f * z * z);
}

// The low n < 8 lanes, the others zero.
__attribute__((always_inline))
static inline float8 load_partial8(const float *x, size_t n) {
    float8 r = 0;
    for (size_t i = 0; i < n; i++) r[i] = x[i];
    return r;
}

__attribute__((always_inline))
static inline void store_partial8(float *x, float8 r, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = r[i];
}

__attribute__((always_inline))
static inline void forward(float *z, const float *bias, float *y, size_t rows, size_t cols) {
    for (size_t r = 0; r < rows; r++) {
        float *zr = z + r * cols, *yr = y + r * cols;
        size_t j = 0;
        for (; j + 8 <= cols; j += 8) {
            float8 v = load8(zr + j);
            if (bias) { v = v + load8(bias + j); store8(zr + j, v); }
            store8(yr + j, gelu8(v));
        }
        if (j < cols) {
            size_t w = cols - j;
            float8 v = load_partial8(zr + j, w);
            if (bias) { v = v + load_partial8(bias + j, w); store_partial8(zr + j, v, w); }
            store_partial8(yr + j, gelu8(v), w);
        }
    }
}

__attribute__((always_inline))
static inline void backward(const float *z, const float *dy, float *dz, size_t n) {
    size_t i = 0;
    for (; i + 8 <= n; i += 8) store8(dz + i, load8(dy + i) * gelu_grad8(load8(z + i)));
    if (i < n) store_partial8(dz + i, load_partial8(dy + i, n - i) * gelu_grad8(load_partial8(z + i, n - i)), n - i);
}

static void forward_sse(float *z, const float *bias, float *y, size_t rows, size_t cols) { forward(z, bias, y, rows, cols); }
static void backward_sse(const float *z, const float *dy, float *dz, size_t n) { backward(z, dy, dz, n); }

__attribute__((target("avx2")))
static void forward_avx(float *z, const float *bias, float *y, size_t rows, size_t cols) { forward(z, bias, y, rows, cols); }
__attribute__((target("avx2")))
static void backward_avx(const float *z, const float *dy, float *dz, size_t n) { backward(z, dy, dz, n); }

static int has_avx2(void) {
    static int known = -1;
    if (known < 0) known = __builtin_cpu_supports("avx2");
    return known;
}

void sb_gelu_forward_isa(float *z, const float *bias, float *y, size_t rows, size_t cols, int avx) {
    if (avx && has_avx2()) forward_avx(z, bias, y, rows, cols); else forward_sse(z, bias, y, rows, cols);
}

void sb_gelu_backward_isa(const float *z, const float *dy, float *dz, size_t n, int avx) {
    if (avx && has_avx2()) backward_avx(z, dy, dz, n); else backward_sse(z, dy, dz, n);
}

void sb_gelu_forward(float *z, const float *bias, float *y, size_t rows, size_t cols) {
    sb_gelu_forward_isa(z, bias, y, rows, cols, 1);
}

void sb_gelu_backward(const float *z, const float *dy, float *dz, size_t n) {
    sb_gelu_backward_isa(z, dy, dz, n, 1);
}
