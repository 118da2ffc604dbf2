// The test suite's allocation counter (CAllocCounter), where it is loaded, counts what
// OpenBLAS and OpenMPI allocate inside a call apart from the caller's own allocations;
// elsewhere the reference is null and this does nothing. Calls nest (a collective's wait
// services the watchdog's inbox): the outermost one decides.
#include "CKernels.h"

extern void sb_allocations_in_library(int inside) __attribute__((weak));

static __thread int depth;

void sb_inside_library(int inside) {
    if (!sb_allocations_in_library) return;
    depth += inside ? 1 : -1;
    if (inside ? depth == 1 : depth == 0) sb_allocations_in_library(inside);
}
