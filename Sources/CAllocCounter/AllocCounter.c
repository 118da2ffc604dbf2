// Interposes glibc's allocator entry points to count allocations per thread. The real
// functions are glibc's __libc_* aliases, so no dlsym (which itself allocates) is needed.
#include "AllocCounter.h"
#include <stddef.h>
#include <errno.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static __thread uint64_t allocations __attribute__((tls_model("initial-exec")));
static __thread uint64_t library_allocations __attribute__((tls_model("initial-exec")));
static __thread int in_library __attribute__((tls_model("initial-exec")));

uint64_t sb_thread_allocations(void) { return allocations; }
uint64_t sb_thread_library_allocations(void) { return library_allocations; }
void sb_allocations_in_library(int inside) { in_library = inside; }

static inline void count(void) {
    if (in_library) library_allocations++;
    else allocations++;
}

void *malloc(size_t n) { count(); return __libc_malloc(n); }
void *calloc(size_t c, size_t n) { count(); return __libc_calloc(c, n); }
void *realloc(void *p, size_t n) { count(); return __libc_realloc(p, n); }
void free(void *p) { __libc_free(p); }
void *memalign(size_t a, size_t n) { count(); return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { count(); return __libc_memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n) {
    count();
    void *p = __libc_memalign(a, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
