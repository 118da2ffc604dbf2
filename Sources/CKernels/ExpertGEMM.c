// y = x·wᵀ for the forward products of MoE experts: x is an expert's rows (a few dozen), w a
// weight matrix in its stored [out, in] layout, read once, in place, straight from memory.
//
// OpenBLAS packs w into a buffer on every call before it multiplies; at W2's shapes (32 rows
// against a 512 × 256 weight that is cold in memory) the packing and the edges of its tiles
// leave it well short of the core's peak (docs/BENCHMARKS.md). Each output is a dot product
// along the stored rows of w: a tile of 3 rows of x by 4 rows of w keeps 12 vector
// accumulators, w streams through once in the order it lies in memory, and the rows of w
// four tiles ahead are prefetched into L2 while a tile computes.
//
// The input gradients x·w read w across its rows instead (a line from each of k rows per
// 16 columns); a kernel for those (6 × 16 tiles, prefetching the next columns) was no faster
// than OpenBLAS cold, so they stay with BLAS.
#include "CKernels.h"
#include <immintrin.h>

// `sum4` and `tile` take 256-bit vectors; both are static and always inlined into `kernel`,
// compiled for AVX2, so no call crosses the ABI.
#pragma clang diagnostic ignored "-Wpsabi"

#define FEATURES "avx2,fma"

// The four sums of a, b, c, d (8 lanes each), as one 4-lane vector.
__attribute__((target(FEATURES), always_inline))
static inline __m128 sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
    return _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
}

// Rows r0 .. r0+rows (rows ≤ 3) of y, columns j .. j+3, from rows j .. j+3 of w.
__attribute__((target(FEATURES), always_inline))
static inline void tile(int rows, const float *x, size_t ldx, const float *w, size_t ldw, size_t k,
                        float *y, size_t ldy) {
    const float *w0 = w, *w1 = w + ldw, *w2 = w + 2 * ldw, *w3 = w + 3 * ldw;
    const float *x0 = x, *x1 = x + (rows > 1 ? ldx : 0), *x2 = x + (rows > 2 ? 2 * ldx : 0);
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
    __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    __m256 a20 = a00, a21 = a00, a22 = a00, a23 = a00;
    for (size_t i = 0; i < k; i += 8) {
        __m256 v0 = _mm256_loadu_ps(x0 + i), v1 = _mm256_loadu_ps(x1 + i), v2 = _mm256_loadu_ps(x2 + i), b;
        b = _mm256_loadu_ps(w0 + i);
        a00 = _mm256_fmadd_ps(v0, b, a00); a10 = _mm256_fmadd_ps(v1, b, a10); a20 = _mm256_fmadd_ps(v2, b, a20);
        b = _mm256_loadu_ps(w1 + i);
        a01 = _mm256_fmadd_ps(v0, b, a01); a11 = _mm256_fmadd_ps(v1, b, a11); a21 = _mm256_fmadd_ps(v2, b, a21);
        b = _mm256_loadu_ps(w2 + i);
        a02 = _mm256_fmadd_ps(v0, b, a02); a12 = _mm256_fmadd_ps(v1, b, a12); a22 = _mm256_fmadd_ps(v2, b, a22);
        b = _mm256_loadu_ps(w3 + i);
        a03 = _mm256_fmadd_ps(v0, b, a03); a13 = _mm256_fmadd_ps(v1, b, a13); a23 = _mm256_fmadd_ps(v2, b, a23);
    }
    _mm_storeu_ps(y, sum4(a00, a01, a02, a03));
    if (rows > 1) _mm_storeu_ps(y + ldy, sum4(a10, a11, a12, a13));
    if (rows > 2) _mm_storeu_ps(y + 2 * ldy, sum4(a20, a21, a22, a23));
}

__attribute__((target(FEATURES)))
static void kernel(size_t n, size_t m, size_t k, const float *x, size_t ldx, const float *w, size_t ldw,
                   float *y, size_t ldy) {
    // Prefetch the rows of w four tiles ahead into L2, a few lines per row tile of x, so the
    // next rows arrive while these compute.
    const size_t ahead = 4 * 4 * ldw, lines = (4 * k * sizeof(float) + 63) / 64;
    const size_t tiles = (n + 2) / 3, per = (lines + tiles - 1) / tiles;
    for (size_t j = 0; j < m; j += 4) {
        const float *wj = w + j * ldw;
        size_t t = 0;
        for (size_t r = 0; r < n; r += 3, t++) {
            if (j + 16 < m) {
                const char *p = (const char *)(wj + ahead);
                for (size_t l = t * per; l < (t + 1) * per && l < lines; l++) _mm_prefetch(p + 64 * l, _MM_HINT_T1);
            }
            int rows = n - r < 3 ? (int)(n - r) : 3;
            tile(rows, x + r * ldx, ldx, wj, ldw, k, y + r * ldy + j, ldy);
        }
    }
}

int sb_gemm_nt_usable(void) {
    static int usable = -1;
    if (usable < 0) usable = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return usable;
}

int sb_gemm_nt(size_t n, size_t m, size_t k, const float *x, size_t ldx, const float *w, size_t ldw,
               float *y, size_t ldy) {
    // Past ~1000 rows x no longer stays in L2 while w streams by, and OpenBLAS, which blocks
    // for it, is as fast or faster (4096 × 512 × 256: 110 against 108 GFLOP/s).
    if (!sb_gemm_nt_usable() || n == 0 || n > 1024 || m % 4 != 0 || k % 8 != 0 || ldw != k) return 0;
    kernel(n, m, k, x, ldx, w, ldw, y, ldy);
    return 1;
}
