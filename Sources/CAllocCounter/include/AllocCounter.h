#ifndef SB_ALLOC_COUNTER_H
#define SB_ALLOC_COUNTER_H
#include <stdint.h>
/// Number of heap allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc)
/// made by the calling thread since it started. Linking this target interposes the
/// allocator functions of the whole process; the count is per thread so that concurrent
/// work elsewhere does not disturb a measurement.
uint64_t sb_thread_allocations(void);
/// Allocations the calling thread made inside oneDNN's products, counted apart: oneDNN's
/// execute builds its arguments on the heap (a handful per product), which no caller can
/// avoid. CDNNL's Matmul.c brackets each product with `sb_allocations_in_onednn` (a weak
/// reference: nothing where this library is not loaded).
uint64_t sb_thread_onednn_allocations(void);
void sb_allocations_in_onednn(int inside);
#endif
