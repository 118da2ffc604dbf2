// The test suite's allocation counter (CAllocCounter), where it is loaded, counts what
// OpenBLAS allocates inside a call apart from the caller's own allocations; elsewhere the
// reference is null and this does nothing.
#include "CKernels.h"

extern void sb_allocations_in_library(int inside) __attribute__((weak));

void sb_inside_library(int inside) {
    if (sb_allocations_in_library) sb_allocations_in_library(inside);
}
