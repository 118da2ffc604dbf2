#ifndef SB_ALLOC_COUNTER_H
#define SB_ALLOC_COUNTER_H
#include <stdint.h>
/// Number of heap allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc)
/// made by the calling thread since it started. Linking this target interposes the
/// allocator functions of the whole process; the count is per thread so that concurrent
/// work elsewhere does not disturb a measurement.
uint64_t sb_thread_allocations(void);
/// Allocations the calling thread made inside the libraries' products, counted apart, which no
/// caller can avoid: oneDNN's execute builds its arguments on the heap (a handful per
/// product); OpenBLAS's threaded sgemm allocates its job array, and its small-matrix kernels
/// for AVX-512 CPUs (SkylakeX, Cooperlake) a packing buffer, on every call. CDNNL's Matmul.c
/// and Kernels' `gemm` bracket each product with `sb_allocations_in_library` (a weak
/// reference: nothing where this library is not loaded).
uint64_t sb_thread_library_allocations(void);
void sb_allocations_in_library(int inside);
#endif
