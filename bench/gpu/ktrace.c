/* ktrace: a per-kernel GPU time table for any CUDA program, for machines without Nsight
 * (bench/gpu/kernels.sh). Built as a shared object and loaded by the CUDA driver through
 * CUDA_INJECTION64_PATH; it records every kernel's start and end with CUPTI's activity
 * API and, at exit, writes one line per kernel name (share of the summed kernel time,
 * total ms, calls, mean µs) to $TB_KTRACE_OUT (default stderr), largest first.
 *
 *   CUDA_INJECTION64_PATH=$PWD/libtbktrace.so TB_KTRACE_OUT=kernels.txt ./program ...
 *
 * Kernel names are shortened to the function's identifier plus its template arguments'
 * leading integers as they appear in the mangled name (k_fa_fwd<64> stays _Z8k_fa_fwdILi64E..
 * truncated at 100 characters). Not part of the project's libraries or tests. */
#include <cupti.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KT_BUF (8u << 20)
#define KT_MAX 4096

struct kt_row {
    char name[112];
    uint64_t ns, calls;
};
static struct kt_row rows[KT_MAX];
static int nrows;
static uint64_t dropped;

static void kt_check(CUptiResult r, const char *what) {
    if (r != CUPTI_SUCCESS) {
        const char *s = NULL;
        cuptiGetResultString(r, &s);
        fprintf(stderr, "ktrace: %s: %s\n", what, s ? s : "?");
    }
}

static void CUPTIAPI kt_request(uint8_t **buf, size_t *size, size_t *max_records) {
    *buf = aligned_alloc(8, KT_BUF);
    *size = *buf ? KT_BUF : 0;
    *max_records = 0;
}

static void kt_add(const char *name, uint64_t ns) {
    char key[112];
    snprintf(key, sizeof key, "%.100s", name ? name : "?");
    for (int i = 0; i < nrows; i++)
        if (!strcmp(rows[i].name, key)) {
            rows[i].ns += ns;
            rows[i].calls++;
            return;
        }
    if (nrows == KT_MAX) {
        dropped++;
        return;
    }
    memcpy(rows[nrows].name, key, sizeof key);
    rows[nrows].ns = ns;
    rows[nrows].calls = 1;
    nrows++;
}

static void CUPTIAPI kt_complete(CUcontext ctx, uint32_t stream, uint8_t *buf, size_t size, size_t valid) {
    (void)ctx;
    (void)stream;
    (void)size;
    CUpti_Activity *rec = NULL;
    while (cuptiActivityGetNextRecord(buf, valid, &rec) == CUPTI_SUCCESS) {
        if (rec->kind == CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL || rec->kind == CUPTI_ACTIVITY_KIND_KERNEL) {
            const CUpti_ActivityKernel10 *k = (const CUpti_ActivityKernel10 *)rec;
            kt_add(k->name, k->end - k->start);
        }
    }
    free(buf);
}

static int kt_cmp(const void *a, const void *b) {
    const struct kt_row *x = a, *y = b;
    return x->ns < y->ns ? 1 : x->ns > y->ns ? -1 : 0;
}

static void kt_report(void) {
    kt_check(cuptiActivityFlushAll(1), "cuptiActivityFlushAll");
    qsort(rows, (size_t)nrows, sizeof rows[0], kt_cmp);
    uint64_t tot = 0, calls = 0;
    for (int i = 0; i < nrows; i++) {
        tot += rows[i].ns;
        calls += rows[i].calls;
    }
    const char *path = getenv("TB_KTRACE_OUT");
    FILE *f = path && *path ? fopen(path, "w") : NULL;
    if (!f) f = stderr;
    fprintf(f, "%6s %10s %8s %9s  kernel (summed kernel time %.1f ms, %llu launches, %d names)\n", "share",
            "total_ms", "calls", "mean_us", tot / 1e6, (unsigned long long)calls, nrows);
    for (int i = 0; i < nrows; i++)
        fprintf(f, "%6.2f %10.2f %8llu %9.1f  %s\n", tot ? 100.0 * rows[i].ns / tot : 0.0, rows[i].ns / 1e6,
                (unsigned long long)rows[i].calls, rows[i].ns / 1e3 / rows[i].calls, rows[i].name);
    if (dropped) fprintf(f, "(%llu records past %d names dropped)\n", (unsigned long long)dropped, KT_MAX);
    if (f != stderr) fclose(f);
}

int InitializeInjection(void);
int InitializeInjection(void) {
    kt_check(cuptiActivityRegisterCallbacks(kt_request, kt_complete), "cuptiActivityRegisterCallbacks");
    kt_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "cuptiActivityEnable");
    atexit(kt_report);
    return 1;
}
