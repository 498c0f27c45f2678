/* ktrace: a per-kernel GPU time table for any CUDA program, for machines without Nsight
 * (bench/gpu/kernels.sh). Built as a shared object and loaded by the CUDA driver through
 * CUDA_INJECTION64_PATH; it records every kernel's start and end with CUPTI's activity
 * API (copies and fills too, as [memcpy ...] and [memset] rows) and, at exit, writes one
 * line per name (share of the summed GPU time, total ms, calls, mean µs) to
 * $TB_KTRACE_OUT (default stderr), largest first.
 *
 *   CUDA_INJECTION64_PATH=$PWD/libtbktrace.so TB_KTRACE_OUT=kernels.txt ./program ...
 *
 * Kernel names are shortened to the function's identifier plus its template arguments'
 * leading integers as they appear in the mangled name (k_fa_fwd<64> stays _Z8k_fa_fwdILi64E..
 * truncated at 100 characters). A second table sums the GPU's idle time (no kernel, copy
 * or fill running) by the record that ended it: where the host, not the GPU, set the pace
 * (a wait for the host, launches slower than the kernels). TB_KTRACE_TAIL_MS keeps only
 * the timeline's last milliseconds in that table (steady steps, without the first step's
 * allocations and algorithm choices).
 * Not part of the project's libraries or tests. */
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
    uint64_t idle_ns, idle_n; /* the idle gaps this kernel ended (kt_idle) */
};
static struct kt_row rows[KT_MAX];
static int nrows;
static uint64_t dropped;
/* every kernel's interval, for the idle table */
#define KT_EV_MAX (1u << 21)
struct kt_ev {
    uint64_t start, end, bytes;
    uint32_t corr;
    int row;
};
/* host API calls (runtime and driver) by correlation id: when the launch returned */
#define KT_API_MAX (1u << 23)
static uint64_t *api_end;
static struct kt_ev *evs;
static size_t nevs;
static uint64_t idle_total, idle_span, idle_busy;

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

static void kt_ev_add(int row, uint64_t start, uint64_t end, uint32_t corr, uint64_t bytes) {
    if (!evs) evs = malloc(KT_EV_MAX * sizeof *evs);
    if (!evs || nevs == KT_EV_MAX) return;
    evs[nevs].start = start, evs[nevs].end = end, evs[nevs].row = row;
    evs[nevs].corr = corr, evs[nevs].bytes = bytes;
    nevs++;
}

static void kt_add(const char *name, uint64_t start, uint64_t end, uint32_t corr, uint64_t bytes) {
    char key[112];
    snprintf(key, sizeof key, "%.100s", name ? name : "?");
    for (int i = 0; i < nrows; i++)
        if (!strcmp(rows[i].name, key)) {
            rows[i].ns += end - start;
            rows[i].calls++;
            kt_ev_add(i, start, end, corr, bytes);
            return;
        }
    if (nrows == KT_MAX) {
        dropped++;
        return;
    }
    memcpy(rows[nrows].name, key, sizeof key);
    rows[nrows].ns = end - start;
    rows[nrows].calls = 1;
    kt_ev_add(nrows, start, end, corr, bytes);
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
            kt_add(k->name, k->start, k->end, k->correlationId, 0);
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMCPY) {
            const CUpti_ActivityMemcpy6 *c = (const CUpti_ActivityMemcpy6 *)rec;
            kt_add(c->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_DTOD   ? "[memcpy device to device]"
                   : c->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_HTOD ? "[memcpy host to device]"
                   : c->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_DTOH ? "[memcpy device to host]"
                                                                    : "[memcpy other]",
                   c->start, c->end, c->correlationId, c->bytes);
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_MEMSET) {
            const CUpti_ActivityMemset4 *m = (const CUpti_ActivityMemset4 *)rec;
            kt_add("[memset]", m->start, m->end, m->correlationId, m->bytes);
        } else if (rec->kind == CUPTI_ACTIVITY_KIND_RUNTIME || rec->kind == CUPTI_ACTIVITY_KIND_DRIVER) {
            const CUpti_ActivityAPI *a = (const CUpti_ActivityAPI *)rec;
            if (!api_end) api_end = calloc(KT_API_MAX, sizeof *api_end);
            if (api_end && a->correlationId < KT_API_MAX && a->end > api_end[a->correlationId])
                api_end[a->correlationId] = a->end;
        }
    }
    free(buf);
}

static int kt_ev_cmp(const void *a, const void *b) {
    const struct kt_ev *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start ? 1 : 0;
}

/* The idle gaps: between the end of everything before a kernel and its start, summed on
 * the kernel's row. */
static void kt_idle(void) {
    if (!nevs) return;
    qsort(evs, nevs, sizeof evs[0], kt_ev_cmp);
    const char *tl = getenv("TB_KTRACE_TAIL_MS");
    uint64_t last = 0, frontier = 0, first = 0;
    for (size_t i = 0; i < nevs; i++)
        if (evs[i].end > last) last = evs[i].end;
    uint64_t tail = (uint64_t)((tl ? atof(tl) : 0) * 1e6);
    uint64_t t0 = tail && tail < last - evs[0].start ? last - tail : evs[0].start;
    /* TB_KTRACE_TIMELINE: every record of the tail in order: start (µs from the tail's
     * start), duration, the idle gap before it, its lag behind the host call that
     * launched it (GPU start - API return; near zero after a gap: the host set the pace),
     * bytes (copies and fills), name */
    const char *tp = getenv("TB_KTRACE_TIMELINE");
    FILE *tf = tp && *tp ? fopen(tp, "w") : NULL;
    if (tf) fprintf(tf, "start_us dur_us gap_us lag_us bytes name\n");
    for (size_t i = 0; i < nevs; i++) {
        const struct kt_ev *e = &evs[i];
        if (tf && e->start >= t0) {
            uint64_t ae = api_end && e->corr < KT_API_MAX ? api_end[e->corr] : 0;
            double gap = frontier && e->start > frontier ? (e->start - frontier) / 1e3 : 0;
            fprintf(tf, "%.1f %.1f %.1f %.1f %llu %.60s\n", (e->start - t0) / 1e3, (e->end - e->start) / 1e3, gap,
                    ae ? ((double)e->start - (double)ae) / 1e3 : -1.0, (unsigned long long)e->bytes, rows[e->row].name);
        }
        if (e->start >= t0) {
            if (!first) first = frontier && frontier < e->start ? frontier : e->start;
            if (frontier && e->start > frontier) {
                idle_total += e->start - frontier;
                rows[e->row].idle_ns += e->start - frontier;
                rows[e->row].idle_n++;
            }
            uint64_t s0 = e->start > frontier ? e->start : frontier;
            if (e->end > s0) idle_busy += e->end - s0;
        }
        if (e->end > frontier) frontier = e->end;
    }
    idle_span = first && frontier > first ? frontier - first : 0;
    if (tf) fclose(tf);
}

static void kt_idle_print(FILE *f) {
    const char *tl = getenv("TB_KTRACE_TAIL_MS");
    fprintf(f, "\nidle: %.1f ms of %.1f ms (busy %.1f ms) in the last %s ms; by the kernel that ended the gap:\n",
            idle_total / 1e6, idle_span / 1e6, idle_busy / 1e6, tl ? tl : "(all)");
    fprintf(f, "%10s %8s %9s  kernel\n", "idle_ms", "gaps", "mean_us");
    for (int shown = 0; shown < 30; shown++) {
        int b = -1;
        for (int i = 0; i < nrows; i++)
            if (rows[i].idle_ns && (b < 0 || rows[i].idle_ns > rows[b].idle_ns)) b = i;
        if (b < 0) break;
        fprintf(f, "%10.2f %8llu %9.1f  %s\n", rows[b].idle_ns / 1e6, (unsigned long long)rows[b].idle_n,
                rows[b].idle_ns / 1e3 / rows[b].idle_n, rows[b].name);
        rows[b].idle_ns = 0;
    }
}

static int kt_cmp(const void *a, const void *b) {
    const struct kt_row *x = a, *y = b;
    return x->ns < y->ns ? 1 : x->ns > y->ns ? -1 : 0;
}

static void kt_report(void) {
    kt_check(cuptiActivityFlushAll(1), "cuptiActivityFlushAll");
    kt_idle(); /* before the sort below renumbers the rows */
    qsort(rows, (size_t)nrows, sizeof rows[0], kt_cmp);
    uint64_t tot = 0, calls = 0;
    for (int i = 0; i < nrows; i++) {
        tot += rows[i].ns;
        calls += rows[i].calls;
    }
    const char *path = getenv("TB_KTRACE_OUT");
    FILE *f = path && *path ? fopen(path, "w") : NULL;
    if (!f) f = stderr;
    fprintf(f, "%6s %10s %8s %9s  kernel or [copy] (summed GPU time %.1f ms, %llu launches, %d names)\n", "share",
            "total_ms", "calls", "mean_us", tot / 1e6, (unsigned long long)calls, nrows);
    for (int i = 0; i < nrows; i++)
        fprintf(f, "%6.2f %10.2f %8llu %9.1f  %s\n", tot ? 100.0 * rows[i].ns / tot : 0.0, rows[i].ns / 1e6,
                (unsigned long long)rows[i].calls, rows[i].ns / 1e3 / rows[i].calls, rows[i].name);
    if (dropped) fprintf(f, "(%llu records past %d names dropped)\n", (unsigned long long)dropped, KT_MAX);
    kt_idle_print(f);
    if (f != stderr) fclose(f);
}

int InitializeInjection(void);
int InitializeInjection(void) {
    kt_check(cuptiActivityRegisterCallbacks(kt_request, kt_complete), "cuptiActivityRegisterCallbacks");
    kt_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL), "cuptiActivityEnable");
    kt_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY), "cuptiActivityEnable (memcpy)");
    kt_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET), "cuptiActivityEnable (memset)");
    if (getenv("TB_KTRACE_TIMELINE")) {
        kt_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME), "cuptiActivityEnable (runtime)");
        kt_check(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_DRIVER), "cuptiActivityEnable (driver)");
    }
    atexit(kt_report);
    return 1;
}
