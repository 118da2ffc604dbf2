#pragma once
#include <stddef.h>
#include <stdint.h>

/// oneDNN behind a small C interface: prepared matrix products and oneDNN's identity. The
/// Swift side (Kernels/Matmul.swift) never sees a oneDNN type.

/// A matrix product prepared once (a oneDNN matmul primitive):
///   C[m, n] = op(A)[m, k] · op(B)[k, n]  (+ C when `accumulate`),
/// row-major, A and B both fp32 or both bf16, C fp32 (bf16 products accumulate in fp32).
/// `ta`: A is stored [k, m] (row stride lda); `tb`: B is stored [n, k] (row stride ldb).
/// One of m and k is the number of rows of a batch and varies per call: `rows_dim` 0 (m) or
/// 1 (k) names it, and the `m` or `k` given here is only an upper bound.
typedef struct sb_matmul sb_matmul;

/// NULL on failure, with oneDNN's status written to `status` (non-NULL).
sb_matmul *sb_matmul_create(int bf16, int ta, int tb, long m, long n, long k, long lda, long ldb, long ldc,
                            int accumulate, int rows_dim, int *status);

/// Runs the product with `rows` for the varying dimension (0 ≤ rows ≤ its bound); returns
/// oneDNN's status (0 on success). Safe to call from several threads at once: the call's
/// memory objects and scratchpad (user mode) are its own.
int sb_matmul_run(const sb_matmul *mm, long rows, const void *a, const void *b, float *c);

/// oneDNN's implementation name for this product ("gemm:jit", "brg:avx512_core", …).
const char *sb_matmul_impl(const sb_matmul *mm);

void sb_matmul_destroy(sb_matmul *mm);

/// Products run so far by this process (every thread): tests attribute heap allocations
/// made inside oneDNN per product.
long sb_matmul_runs(void);

/// The name of oneDNN's instruction set on this CPU, after DNNL_MAX_CPU_ISA
/// ("avx512_core_bf16", "avx512_core_amx", "avx2", …).
const char *sb_dnnl_isa_name(void);
/// Whether oneDNN multiplies bf16 natively here (AVX512-BF16 or AMX), not by emulation.
int sb_dnnl_native_bf16(void);
/// oneDNN's version, "2.6.3".
const char *sb_dnnl_version(void);

/// OpenMP threads (oneDNN's) for products started from the calling thread.
void sb_omp_set_threads(int n);

/// y[i] = bf16(x[i]), round to nearest even, NaN kept (quiet), denormals to signed zero (as
/// the AVX512-BF16 instruction does, so every path agrees bit for bit).
void sb_to_bf16(const float *x, uint16_t *y, size_t n);
/// The same on a path no wider than `native` allows: 0 the portable loop, 1 AVX512-BF16 if
/// the CPU has it and oneDNN runs bf16 natively here (tests check both agree).
void sb_to_bf16_isa(const float *x, uint16_t *y, size_t n, int native);
/// Whether `sb_to_bf16` runs the AVX512-BF16 instruction here (the CPU has it and oneDNN's
/// instruction set, capped or not, includes it).
int sb_bf16_native_rounding(void);
/// y[i] = bf16(x[i]) as the fp32 number it equals (the low 16 bits zero): the same rounding
/// as `sb_to_bf16`, bit for bit, for products that emulate bf16 with fp32 arithmetic. In place
/// (y == x) is allowed.
void sb_round_bf16(const float *x, float *y, size_t n);
/// The same with AVX2 only if `avx2` is non-zero and the CPU has it (tests check both agree).
void sb_round_bf16_isa(const float *x, float *y, size_t n, int avx2);
