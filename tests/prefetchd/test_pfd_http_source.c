/* The HTTP byte source against a loopback server that honours Range: a plain read equals
 * the file; a connection cut mid-shard (several times) or stalled below the low-speed
 * limit is resumed with Range + If-Range and yields the same bytes; a server that
 * ignores Range is handled by skipping; a file whose ETag changes mid-download fails
 * instead of splicing; HTTP 5xx is retried with backoff and, when it persists, fails
 * with the URL and status; the download cache serves verified hits, re-downloads a
 * corrupted entry and evicts the least recently used entry to stay under its budget;
 * and the pf-data stream over an http:// manifest with cuts yields the same batches as
 * over the local file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "http_source.h"
#include "http_test_server.h"
#include "pfd_harness.h"
#include "tb_rng.h"

static char g_dir[256];
static hts g_srv;
static uint8_t *g_data;
static size_t g_len = 300000;

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/pfdt-http-XXXXXX");
    if (!mkdtemp(g_dir)) return -1;
    g_data = malloc(g_len);
    tb_rng r;
    tb_rng_init(&r, 7, TB_RNG_TEST, 0, 0, 0);
    for (size_t i = 0; i < g_len; i++) g_data[i] = (uint8_t)tb_rng_u32(&r);
    char p[512];
    const char *names[] = {"a.bin", "b.bin", "c.bin"};
    for (int k = 0; k < 3; k++) {
        snprintf(p, sizeof p, "%s/%s", g_dir, names[k]);
        FILE *f = fopen(p, "wb");
        g_data[0] = (uint8_t)k;
        fwrite(g_data, 1, g_len, f);
        fclose(f);
    }
    g_data[0] = 0;
    pfd_http_global_init(NULL);
    return hts_start(&g_srv, g_dir);
}

static int teardown(void **state) {
    (void)state;
    hts_stop(&g_srv);
    free(g_data);
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

static void reset_knobs(void) {
    atomic_store(&g_srv.cut_count, 0);
    atomic_store(&g_srv.stall_count, 0);
    atomic_store(&g_srv.fail_count, 0);
    atomic_store(&g_srv.ignore_range, 0);
    atomic_store(&g_srv.requests, 0);
    atomic_store(&g_srv.range_requests, 0);
}

static pfd_http mk_http(pfd_cache *cache) {
    pfd_http h;
    memset(&h, 0, sizeof h);
    h.opts = (pfd_http_opts){.connect_timeout_s = 5, .low_speed_limit = 1000,
                             .low_speed_time_s = 1, .retries = 4, .backoff_initial_ms = 10,
                             .backoff_max_ms = 40, .buffer_bytes = 64 << 10};
    h.cache = cache;
    return h;
}

static void url(char *out, size_t n, const char *name) {
    snprintf(out, n, "http://127.0.0.1:%d/%s", g_srv.port, name);
}

/* Reads the whole source; returns the length or -1 (err set). */
static int64_t read_all(tb_source *s, uint8_t *out, size_t cap, tb_err *err) {
    size_t len = 0;
    for (;;) {
        uint8_t tmp[7000]; /* odd size: reads straddle the server's chunks */
        int64_t n = tb_source_read(s, tmp, sizeof tmp, err);
        if (n < 0) return -1;
        if (n == 0) return (int64_t)len;
        if (len + (size_t)n > cap) return -1;
        memcpy(out + len, tmp, (size_t)n);
        len += (size_t)n;
    }
}

static void expect_file(pfd_http *h, const char *name, uint8_t first) {
    char u[128];
    url(u, sizeof u, name);
    tb_err err = {""};
    tb_source *s = pfd_http_open(h, u, &err);
    assert_non_null(s);
    uint8_t *buf = malloc(g_len + 1);
    int64_t n = read_all(s, buf, g_len + 1, &err);
    if (n < 0) fprintf(stderr, "read: %s\n", err.msg);
    assert_int_equal(n, (int64_t)g_len);
    assert_int_equal(buf[0], first);
    assert_memory_equal(buf + 1, g_data + 1, g_len - 1);
    free(buf);
    tb_source_close(s);
}

static void test_http_plain_read_equals_file(void **state) {
    (void)state;
    reset_knobs();
    pfd_http h = mk_http(NULL);
    expect_file(&h, "a.bin", 0);
    assert_int_equal(h.stats.resumes, 0);
    assert_int_equal(atomic_load(&g_srv.requests), 1);
}

static void test_http_cut_three_times_resumes_with_range(void **state) {
    (void)state;
    reset_knobs();
    atomic_store(&g_srv.cut_after, 50000);
    atomic_store(&g_srv.cut_count, 3);
    pfd_http h = mk_http(NULL);
    expect_file(&h, "a.bin", 0);
    assert_int_equal(h.stats.resumes, 3);
    assert_int_equal(atomic_load(&g_srv.range_requests), 3);
}

static void test_http_stall_below_low_speed_limit_resumes(void **state) {
    (void)state;
    reset_knobs();
    atomic_store(&g_srv.stall_after, 70000);
    atomic_store(&g_srv.stall_count, 1);
    pfd_http h = mk_http(NULL);
    expect_file(&h, "a.bin", 0);
    assert_int_equal(h.stats.resumes, 1);
}

static void test_http_server_ignoring_range_is_skipped_forward(void **state) {
    (void)state;
    reset_knobs();
    atomic_store(&g_srv.cut_after, 40000);
    atomic_store(&g_srv.cut_count, 1);
    atomic_store(&g_srv.ignore_range, 1);
    pfd_http h = mk_http(NULL);
    expect_file(&h, "a.bin", 0);
    assert_int_equal(h.stats.resumes, 1);
}

static void test_http_etag_change_mid_download_fails(void **state) {
    (void)state;
    reset_knobs();
    atomic_store(&g_srv.cut_after, 40000);
    atomic_store(&g_srv.cut_count, 1);
    pfd_http h = mk_http(NULL);
    char u[128];
    url(u, sizeof u, "a.bin");
    tb_err err = {""};
    tb_source *s = pfd_http_open(&h, u, &err);
    uint8_t buf[8192];
    size_t got = 0;
    while (got < 40000) {
        int64_t n = tb_source_read(s, buf, sizeof buf, &err);
        assert_true(n > 0);
        got += (size_t)n;
    }
    atomic_fetch_add(&g_srv.etag_gen, 1); /* the file "changes" before the resume */
    int64_t n;
    while ((n = tb_source_read(s, buf, sizeof buf, &err)) > 0) got += (size_t)n;
    assert_int_equal(n, -1);
    assert_non_null(strstr(err.msg, "changed while downloading"));
    assert_int_equal(got, 40000);
    tb_source_close(s);
}

static void test_http_5xx_retried_then_succeeds(void **state) {
    (void)state;
    reset_knobs();
    atomic_store(&g_srv.fail_status, 503);
    atomic_store(&g_srv.fail_count, 2);
    pfd_http h = mk_http(NULL);
    expect_file(&h, "a.bin", 0);
    assert_int_equal(h.stats.retries, 2);
}

static void test_http_5xx_after_retries_is_a_bad_shard(void **state) {
    (void)state;
    reset_knobs();
    atomic_store(&g_srv.fail_status, 500);
    atomic_store(&g_srv.fail_count, 1000);
    pfd_http h = mk_http(NULL);
    char u[128];
    url(u, sizeof u, "a.bin");
    tb_err err = {""};
    tb_source *s = pfd_http_open(&h, u, &err);
    uint8_t buf[100];
    assert_int_equal(tb_source_read(s, buf, sizeof buf, &err), -1);
    assert_non_null(strstr(err.msg, u));
    assert_non_null(strstr(err.msg, "500"));
    assert_int_equal(atomic_load(&g_srv.requests), 5); /* first + 4 retries */
    assert_int_equal(h.stats.failures, 1);
    tb_source_close(s);
    atomic_store(&g_srv.fail_count, 0);
    /* 404 too */
    url(u, sizeof u, "missing.bin");
    s = pfd_http_open(&h, u, &err);
    assert_int_equal(tb_source_read(s, buf, sizeof buf, &err), -1);
    assert_non_null(strstr(err.msg, "404"));
    tb_source_close(s);
}

static void test_http_cache_hits_verified_and_lru_evicted(void **state) {
    (void)state;
    reset_knobs();
    char cdir[300];
    snprintf(cdir, sizeof cdir, "%s/cache", g_dir);
    pfd_cache cache;
    tb_err err;
    assert_int_equal(pfd_cache_init(&cache, cdir, (uint64_t)g_len * 5 / 2, &err), 0);
    pfd_http h = mk_http(&cache);
    expect_file(&h, "a.bin", 0); /* miss: downloaded and stored */
    assert_int_equal(atomic_load(&g_srv.requests), 1);
    assert_int_equal(pfd_cache_usage(&cache), g_len);
    expect_file(&h, "a.bin", 0); /* hit: no request */
    assert_int_equal(atomic_load(&g_srv.requests), 1);
    assert_int_equal(h.stats.cache_hits, 1);
    /* a corrupted entry is detected (sha256) and downloaded again */
    char cmd[600];
    snprintf(cmd, sizeof cmd,
             "f=$(ls %s/*.data | head -1); printf 'X' | dd of=$f bs=1 seek=1000 conv=notrunc status=none",
             cdir);
    assert_int_equal(system(cmd), 0);
    expect_file(&h, "a.bin", 0);
    assert_int_equal(h.stats.cache_bad, 1);
    assert_int_equal(atomic_load(&g_srv.requests), 2);
    sleep(1); /* mtime resolution for the LRU order */
    expect_file(&h, "b.bin", 1);
    sleep(1);
    expect_file(&h, "a.bin", 0); /* a is now more recent than b */
    sleep(1);
    expect_file(&h, "c.bin", 2); /* over budget: b (least recent) goes */
    assert_true(pfd_cache_usage(&cache) <= (uint64_t)g_len * 5 / 2);
    int before = atomic_load(&g_srv.requests);
    expect_file(&h, "a.bin", 0);
    assert_int_equal(atomic_load(&g_srv.requests), before); /* still cached */
    expect_file(&h, "b.bin", 1);
    assert_int_equal(atomic_load(&g_srv.requests), before + 1); /* was evicted */
}

static void test_http_cut_stream_yields_same_batches_as_local(void **state) {
    (void)state;
    reset_knobs();
    char shard[400];
    snprintf(shard, sizeof shard, "%s/shard.jsonl.gz", g_dir);
    char cmd[800];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", pfdt_fixture("fixture-00000.jsonl.gz"), shard);
    if (access(pfdt_fixture("spm.model"), R_OK) != 0 || system(cmd) != 0) skip();
    tb_err err;
    tb_spm *spm = tb_spm_load(pfdt_fixture("spm.model"), &err);
    assert_non_null(spm);
    char text[600];
    tb_manifest ml, mr;
    snprintf(text, sizeof text, "%s\n", shard);
    assert_int_equal(tb_manifest_parse(&ml, text, strlen(text), "local", NULL, &err), 0);
    snprintf(text, sizeof text, "http://127.0.0.1:%d/shard.jsonl.gz\n", g_srv.port);
    assert_int_equal(tb_manifest_parse(&mr, text, strlen(text), "remote", NULL, &err), 0);
    ml.generation = mr.generation = 1;
    atomic_store(&g_srv.cut_after, 4000);
    atomic_store(&g_srv.cut_count, 1000); /* every response is cut */
    pfd_http h = mk_http(NULL);
    h.opts.retries = 100;
    tb_source_opener op = {pfd_http_opener, &h};
    tb_stream_config sc;
    tb_stream_config_default(&sc);
    sc.seq_len = 64;
    sc.batch_size = 4;
    sc.threads = 1;
    sc.shuffle_buffer = 8;
    tb_stream *a = tb_stream_open(&sc, &ml, spm, NULL, &err);
    assert_non_null(a);
    sc.opener = &op;
    tb_stream *b = tb_stream_open(&sc, &mr, spm, NULL, &err);
    assert_non_null(b);
    tb_stream_batch ba = {0}, bb = {0};
    for (int i = 0; i < 60; i++) {
        assert_int_equal(tb_stream_next_batch(a, &ba, &err), 1);
        int r = tb_stream_next_batch(b, &bb, &err);
        if (r != 1) fprintf(stderr, "remote: %s\n", err.msg);
        assert_int_equal(r, 1);
        size_t ntok = (size_t)ba.B * ba.T;
        assert_memory_equal(ba.ids, bb.ids, ntok * 4);
        assert_memory_equal(ba.labels, bb.labels, ntok * 4);
        for (uint32_t k = 0; k < ba.B; k++) {
            assert_int_equal(ba.prov[k].doc, bb.prov[k].doc);
            assert_int_equal(ba.prov[k].token_offset, bb.prov[k].token_offset);
        }
    }
    printf("60 batches equal; %llu resumes\n", (unsigned long long)h.stats.resumes);
    assert_true(h.stats.resumes >= 5); /* 4000-byte cuts of a 57 KB shard */
    tb_stream_batch_free(&ba);
    tb_stream_batch_free(&bb);
    tb_stream_close(a);
    tb_stream_close(b);
    tb_manifest_free(&ml);
    tb_manifest_free(&mr);
    tb_spm_free(spm);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_http_plain_read_equals_file),
        cmocka_unit_test(test_http_cut_three_times_resumes_with_range),
        cmocka_unit_test(test_http_stall_below_low_speed_limit_resumes),
        cmocka_unit_test(test_http_server_ignoring_range_is_skipped_forward),
        cmocka_unit_test(test_http_etag_change_mid_download_fails),
        cmocka_unit_test(test_http_5xx_retried_then_succeeds),
        cmocka_unit_test(test_http_5xx_after_retries_is_a_bad_shard),
        cmocka_unit_test(test_http_cache_hits_verified_and_lru_evicted),
        cmocka_unit_test(test_http_cut_stream_yields_same_batches_as_local),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
