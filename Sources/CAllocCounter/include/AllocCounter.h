#ifndef SB_ALLOC_COUNTER_H
#define SB_ALLOC_COUNTER_H
#include <stdint.h>
/// Number of heap allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc)
/// made by the calling thread since it started. Linking this target interposes the
/// allocator functions of the whole process; the count is per thread so that concurrent
/// work elsewhere does not disturb a measurement.
uint64_t sb_thread_allocations(void);
#endif
