// oneDNN matmul primitives for the layers' products: made once when a layer is built, run
// with the rows of each batch as a run-time dimension, so no primitive is created while
// training.
#include "CDNNL.h"
#include <oneapi/dnnl/dnnl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern void omp_set_num_threads(int);
// The test suite's allocation counter (CAllocCounter), where it is loaded, counts oneDNN's own
// heap allocations apart from the caller's; elsewhere the reference is null.
extern void sb_allocations_in_library(int inside) __attribute__((weak));

struct sb_matmul {
    dnnl_primitive_t primitive;
    dnnl_data_type_t type;
    int ta, tb, rows_dim;
    long m, n, k, lda, ldb, ldc;
    char *impl;
    // The primitive's scratchpad, which the caller provides (user mode) so that several
    // threads may run one primitive at once: 0 bytes for every product measured (gemm:jit
    // with a run-time dimension), else a block per call.
    dnnl_memory_desc_t scratch;
    size_t scratch_bytes;
};

static dnnl_engine_t engine;
static dnnl_stream_t stream;
static _Atomic long runs;

// One CPU engine and stream for the process, made on first use (products are prepared on
// the main thread, before any runs).
static int ready(void) {
    if (engine) return dnnl_success;
    int s = dnnl_engine_create(&engine, dnnl_cpu, 0);
    if (s == dnnl_success) s = dnnl_stream_create(&stream, engine, dnnl_stream_default_flags);
    return s;
}

// The descriptors of A, B and C for dimensions m, k (either may be DNNL_RUNTIME_DIM_VAL).
static int describe(const sb_matmul *p, long m, long k, dnnl_memory_desc_t *a, dnnl_memory_desc_t *b,
                    dnnl_memory_desc_t *c) {
    dnnl_dims_t ad = {m, k}, as = {p->ta ? 1 : p->lda, p->ta ? p->lda : 1};
    dnnl_dims_t bd = {k, p->n}, bs = {p->tb ? 1 : p->ldb, p->tb ? p->ldb : 1};
    dnnl_dims_t cd = {m, p->n}, cs = {p->ldc, 1};
    int s = dnnl_memory_desc_init_by_strides(a, 2, ad, p->type, as);
    if (s == dnnl_success) s = dnnl_memory_desc_init_by_strides(b, 2, bd, p->type, bs);
    if (s == dnnl_success) s = dnnl_memory_desc_init_by_strides(c, 2, cd, dnnl_f32, cs);
    return s;
}

sb_matmul *sb_matmul_create(int bf16, int ta, int tb, long m, long n, long k, long lda, long ldb, long ldc,
                            int accumulate, int rows_dim, int *status) {
    sb_matmul *p = calloc(1, sizeof *p);
    int s = p ? ready() : dnnl_out_of_memory;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t ops = NULL;
    dnnl_primitive_desc_t pd = NULL;
    if (s == dnnl_success) {
        *p = (sb_matmul){.type = bf16 ? dnnl_bf16 : dnnl_f32, .ta = ta, .tb = tb, .rows_dim = rows_dim,
                         .m = m, .n = n, .k = k, .lda = lda, .ldb = ldb, .ldc = ldc};
        dnnl_memory_desc_t a, b, c;
        s = describe(p, rows_dim == 0 ? DNNL_RUNTIME_DIM_VAL : m, rows_dim == 1 ? DNNL_RUNTIME_DIM_VAL : k, &a, &b, &c);
        dnnl_matmul_desc_t desc;
        if (s == dnnl_success) s = dnnl_matmul_desc_init(&desc, &a, &b, NULL, &c);
        if (s == dnnl_success) s = dnnl_primitive_attr_create(&attr);
        if (s == dnnl_success) s = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
        if (s == dnnl_success && accumulate) {
            s = dnnl_post_ops_create(&ops);
            if (s == dnnl_success) s = dnnl_post_ops_append_sum(ops, 1.0f);
            if (s == dnnl_success) s = dnnl_primitive_attr_set_post_ops(attr, ops);
        }
        if (s == dnnl_success) s = dnnl_primitive_desc_create(&pd, &desc, attr, engine, NULL);
        const char *impl = NULL;
        if (s == dnnl_success) s = dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl);
        if (s == dnnl_success) {
            // The name belongs to the descriptor, destroyed below.
            p->impl = strdup(impl ? impl : "?");
            const dnnl_memory_desc_t *scratch = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
            if (scratch) {
                p->scratch = *scratch;
                p->scratch_bytes = dnnl_memory_desc_get_size(scratch);
            }
        }
        if (s == dnnl_success) s = dnnl_primitive_create(&p->primitive, pd);
    }
    if (pd) dnnl_primitive_desc_destroy(pd);
    if (ops) dnnl_post_ops_destroy(ops);
    if (attr) dnnl_primitive_attr_destroy(attr);
    *status = s;
    if (s != dnnl_success) {
        if (p && p->primitive) dnnl_primitive_destroy(p->primitive);
        if (p) free(p->impl);
        free(p);
        return NULL;
    }
    return p;
}

// The memory objects name this call's pointers and rows; they are small and made per call
// because a run-time dimension is fixed only by a memory object's descriptor.
int sb_matmul_run(const sb_matmul *p, long rows, const void *a, const void *b, float *c) {
    long m = p->rows_dim == 0 ? rows : p->m, k = p->rows_dim == 1 ? rows : p->k;
    dnnl_memory_desc_t ad, bd, cd;
    dnnl_memory_t am = NULL, bm = NULL, cm = NULL, sm = NULL;
    // A scratchpad is our allocation, outside the bracket that counts oneDNN's own apart: the
    // allocation test sees it if a product ever needs one (none measured does).
    void *scratch = p->scratch_bytes > 0 ? aligned_alloc(64, (p->scratch_bytes + 63) / 64 * 64) : NULL;
    if (p->scratch_bytes > 0 && !scratch) return dnnl_out_of_memory;
    if (sb_allocations_in_library) sb_allocations_in_library(1);
    int s = describe(p, m, k, &ad, &bd, &cd);
    if (s == dnnl_success) s = dnnl_memory_create(&am, &ad, engine, (void *)a);
    if (s == dnnl_success) s = dnnl_memory_create(&bm, &bd, engine, (void *)b);
    if (s == dnnl_success) s = dnnl_memory_create(&cm, &cd, engine, c);
    if (s == dnnl_success && scratch) s = dnnl_memory_create(&sm, &p->scratch, engine, scratch);
    if (s == dnnl_success) {
        dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}, {DNNL_ARG_SCRATCHPAD, sm}};
        s = dnnl_primitive_execute(p->primitive, stream, sm ? 4 : 3, args);
        atomic_fetch_add_explicit(&runs, 1, memory_order_relaxed);
    }
    if (am) dnnl_memory_destroy(am);
    if (bm) dnnl_memory_destroy(bm);
    if (cm) dnnl_memory_destroy(cm);
    if (sm) dnnl_memory_destroy(sm);
    if (sb_allocations_in_library) sb_allocations_in_library(0);
    free(scratch);
    return s;
}

const char *sb_matmul_impl(const sb_matmul *p) { return p->impl; }

void sb_matmul_destroy(sb_matmul *p) {
    if (!p) return;
    dnnl_primitive_destroy(p->primitive);
    free(p->impl);
    free(p);
}

long sb_matmul_runs(void) { return atomic_load_explicit(&runs, memory_order_relaxed); }

const char *sb_dnnl_isa_name(void) {
    switch (dnnl_get_effective_cpu_isa()) {
    case dnnl_cpu_isa_sse41: return "sse41";
    case dnnl_cpu_isa_avx: return "avx";
    case dnnl_cpu_isa_avx2: return "avx2";
    case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni";
    case dnnl_cpu_isa_avx512_mic: return "avx512_mic";
    case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops";
    case dnnl_cpu_isa_avx512_core: return "avx512_core";
    case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni";
    case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16";
    case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx";
    default: return "no vector extension";
    }
}

int sb_dnnl_native_bf16(void) {
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    return isa == dnnl_cpu_isa_avx512_core_bf16 || isa == dnnl_cpu_isa_avx512_core_amx;
}

const char *sb_dnnl_version(void) {
    static char text[32];
    if (!text[0]) {
        const dnnl_version_t *v = dnnl_version();
        snprintf(text, sizeof text, "%d.%d.%d", v->major, v->minor, v->patch);
    }
    return text;
}

void sb_omp_set_threads(int n) { omp_set_num_threads(n); }
