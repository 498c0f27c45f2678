/* bench_prefetchd: end-to-end tokens/s of tb_stream (read, decompress, parse, tokenize,
 * mask, pack, batch) with 1 thread and with N threads, against raw tb_spm_encode over
 * the same document texts on one thread; peak and current RSS.
 *
 * usage: bench_prefetchd --spm MODEL [--epochs E (3)] [--threads N (online CPUs)]
 *                        [--seq-len T (512)] [--batch B (32)] [--window DOCS] SHARD...
 * Shards are read as one manifest (generation 1). Not a test: prints a table. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "doc.h"
#include "reader.h"
#include "stream.h"
#include "tb_spm.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double rss_mib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
        fclose(f);
    }
    return (double)res * (double)sysconf(_SC_PAGESIZE) / 1048576.0;
}

static double peak_mib(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

typedef struct texts {
    char **s;
    size_t *len;
    size_t n, cap, bytes;
} texts;

/* Every usable document text of the shards (the same filter as the stream). */
static int load_texts(texts *t, const tb_manifest *m) {
    for (size_t i = 0; i < m->n; i++) {
        tb_err e;
        tb_source *src = tb_source_open(m->shards[i].location, NULL, NULL, &e);
        if (!src) return fprintf(stderr, "%s\n", e.msg), -1;
        tb_reader *r = tb_reader_open(src, m->shards[i].location, &e);
        if (!r) return fprintf(stderr, "%s\n", e.msg), -1;
        const char *d;
        size_t len;
        uint64_t id;
        tb_bad_kind k;
        int rc;
        while ((rc = tb_reader_next(r, &d, &len, &id, &k, &e)) > 0) {
            if (rc != 1) continue;
            tb_doc_text dt;
            char why[256];
            if (tb_doc_extract(&dt, d, len, tb_reader_format(r), NULL, &k, why, sizeof why)) continue;
            if (tb_doc_stripped_chars(dt.text, dt.len) > 10) {
                if (t->n == t->cap) {
                    t->cap = t->cap ? t->cap * 2 : 1024;
                    t->s = realloc(t->s, t->cap * sizeof *t->s);
                    t->len = realloc(t->len, t->cap * sizeof *t->len);
                }
                t->s[t->n] = malloc(dt.len + 1);
                memcpy(t->s[t->n], dt.text, dt.len);
                t->len[t->n++] = dt.len;
                t->bytes += dt.len;
            }
            tb_doc_text_free(&dt);
        }
        tb_reader_close(r);
    }
    return 0;
}

static uint32_t g_window;

static int run_stream(const tb_manifest *m, const tb_spm *spm, unsigned threads, uint64_t epochs,
                      uint32_t T, uint32_t B, double *secs, double *cpus, tb_stream_stats *st) {
    tb_stream_config c;
    tb_stream_config_default(&c);
    c.threads = threads;
    c.inflight_docs = g_window;
    c.max_epochs = epochs;
    c.seq_len = T;
    c.batch_size = B;
    tb_err e;
    double t0 = now(), c0 = cpu();
    tb_stream *s = tb_stream_open(&c, m, spm, NULL, &e);
    if (!s) return fprintf(stderr, "%s\n", e.msg), -1;
    tb_stream_batch b = {0};
    int k;
    while ((k = tb_stream_next_batch(s, &b, &e)) == 1) {
    }
    *secs = now() - t0;
    *cpus = cpu() - c0;
    if (k < 0) fprintf(stderr, "%s\n", e.msg);
    tb_stream_stats_get(s, st);
    tb_stream_batch_free(&b);
    tb_stream_close(s);
    return k;
}

int main(int argc, char **argv) {
    const char *model = NULL;
    uint64_t epochs = 3;
    long nthreads = sysconf(_SC_NPROCESSORS_ONLN);
    uint32_t T = 512, B = 32;
    tb_manifest m = {.generation = 1};
    size_t cap = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--spm") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--epochs") && i + 1 < argc) epochs = strtoull(argv[++i], 0, 10);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) nthreads = atol(argv[++i]);
        else if (!strcmp(argv[i], "--seq-len") && i + 1 < argc) T = (uint32_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) B = (uint32_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--window") && i + 1 < argc) g_window = (uint32_t)atol(argv[++i]);
        else if (argv[i][0] == '-') return fprintf(stderr, "unknown option %s\n", argv[i]), 64;
        else {
            if (m.n == cap) {
                cap = cap ? cap * 2 : 16;
                m.shards = realloc(m.shards, cap * sizeof *m.shards);
            }
            m.shards[m.n++] = (tb_shard){.location = strdup(argv[i]), .size = -1};
        }
    }
    if (!model || m.n == 0 || epochs == 0 || nthreads < 1) {
        fprintf(stderr, "usage: bench_prefetchd --spm MODEL [--epochs E] [--threads N] "
                        "[--seq-len T] [--batch B] SHARD...\n");
        return 64;
    }
    tb_err e;
    tb_spm *spm = tb_spm_load(model, &e);
    if (!spm) return fprintf(stderr, "%s\n", e.msg), 66;
    texts tx = {0};
    if (load_texts(&tx, &m)) return 66;
    /* raw SentencePiece, one thread, same texts, same number of passes */
    size_t bufcap = 1 << 20;
    int32_t *ids = malloc(bufcap * sizeof *ids);
    uint64_t raw_tokens = 0;
    double t0 = now(), c0 = cpu();
    for (uint64_t ep = 0; ep < epochs; ep++) {
        for (size_t i = 0; i < tx.n; i++) {
            if (tx.len[i] + 2 > bufcap) {
                bufcap = tx.len[i] + 2;
                ids = realloc(ids, bufcap * sizeof *ids);
            }
            int64_t n = tb_spm_encode(spm, tx.s[i], tx.len[i], ids, bufcap, &e);
            if (n < 0) return fprintf(stderr, "%s\n", e.msg), 70;
            raw_tokens += (uint64_t)n;
        }
    }
    double raw_s = now() - t0, raw_c = cpu() - c0;
    /* Single-thread figures use process CPU time: the host may be shared. */
    double raw_tps = (double)raw_tokens / raw_c;
    tb_stream_stats s1, sn;
    double s1_s, sn_s, s1_c, sn_c;
    if (run_stream(&m, spm, 1, epochs, T, B, &s1_s, &s1_c, &s1) < 0) return 70;
    double rss1 = rss_mib();
    if (run_stream(&m, spm, (unsigned)nthreads, epochs, T, B, &sn_s, &sn_c, &sn) < 0) return 70;
    double rssn = rss_mib();
    double tps1 = (double)s1.tokens / s1_c, tpsn = (double)sn.tokens / sn_s;
    printf("shards %zu, documents %zu, text %.1f MiB, epochs %llu, T %u, B %u\n", m.n, tx.n,
           (double)tx.bytes / 1048576.0, (unsigned long long)epochs, T, B);
    printf("%-36s %10s %8s %8s %12s %7s\n", "pipeline", "tokens", "wall s", "cpu s",
           "Mtok/s", "vs raw");
    printf("%-36s %10llu %8.3f %8.3f %8.3f cpu %7.3f\n", "raw tb_spm_encode, 1 thread",
           (unsigned long long)raw_tokens, raw_s, raw_c, raw_tps / 1e6, 1.0);
    printf("%-36s %10llu %8.3f %8.3f %8.3f cpu %7.3f\n", "tb_stream end to end, 1 thread",
           (unsigned long long)s1.tokens, s1_s, s1_c, tps1 / 1e6, tps1 / raw_tps);
    char lab[64];
    snprintf(lab, sizeof lab, "tb_stream end to end, %ld threads", nthreads);
    printf("%-36s %10llu %8.3f %8.3f %8.3f wall %6.3f\n", lab, (unsigned long long)sn.tokens,
           sn_s, sn_c, tpsn / 1e6, tpsn / raw_tps);
    printf("samples %llu, batches %llu; RSS after 1-thread run %.1f MiB, after %ld-thread run "
           "%.1f MiB, peak %.1f MiB (includes the %.1f MiB of texts held for the raw baseline)\n",
           (unsigned long long)sn.samples, (unsigned long long)sn.batches, rss1, nthreads, rssn,
           peak_mib(), (double)tx.bytes / 1048576.0);
    for (size_t i = 0; i < tx.n; i++) free(tx.s[i]);
    free(tx.s), free(tx.len), free(ids);
    tb_manifest_free(&m);
    tb_spm_free(spm);
    return 0;
}
