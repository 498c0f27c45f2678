/* Each malformed-shard kind (missing file, truncated gzip, corrupt zstd, a line that is
 * not JSON, a missing text field, invalid UTF-8, sha256 mismatch) is skipped with its
 * counter, a log line naming the shard and line, and an on_bad event; the documents of
 * the good shards come out exactly as in a run without the bad shards. */
#include <nettle/sha2.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "mask.h"
#include "pf_test_util.h"

#define MAX_EV 64
typedef struct events {
    int n;
    tb_bad_kind kind[MAX_EV];
    uint32_t shard[MAX_EV];
    uint64_t line[MAX_EV];
} events;

static void on_bad(void *ctx, tb_bad_kind kind, uint32_t shard, const char *loc, uint64_t line,
                   const char *why) {
    (void)loc, (void)why;
    events *ev = ctx;
    if (ev->n < MAX_EV) {
        ev->kind[ev->n] = kind;
        ev->shard[ev->n] = shard;
        ev->line[ev->n] = line;
        ev->n++;
    }
}

/* Document contents by (shard location, doc id): original ids of each sample. */
typedef struct docmap {
    size_t n;
    char **loc;
    uint64_t *doc;
    char **tok; /* hex of ids */
} docmap;

static docmap collect(const tb_manifest *m, const tb_spm *spm, events *ev, tb_stream_stats *st,
                      unsigned threads) {
    tb_stream_config c;
    tb_stream_config_default(&c);
    c.packing = false;
    c.batch_size = 1;
    c.seq_len = 1024;
    c.max_epochs = 1;
    c.threads = threads;
    c.shuffle_buffer = 8;
    c.on_bad = on_bad;
    c.on_bad_ctx = ev;
    tb_err e;
    tb_stream *s = tb_stream_open(&c, m, spm, NULL, &e);
    if (!s) fail_msg("%s", e.msg);
    docmap d = {0};
    tb_stream_batch b = {0};
    int k;
    while ((k = tb_stream_next_batch(s, &b, &e)) == 1) {
        const tb_stream_seg *g = &b.segs[0];
        d.loc = realloc(d.loc, (d.n + 1) * sizeof *d.loc);
        d.doc = realloc(d.doc, (d.n + 1) * sizeof *d.doc);
        d.tok = realloc(d.tok, (d.n + 1) * sizeof *d.tok);
        d.loc[d.n] = strdup(m->shards[g->shard].location);
        d.doc[d.n] = g->doc;
        pf_buf h = {0};
        for (uint32_t t = 0; t < b.prov[0].length; t++) {
            char x[16];
            int32_t id = b.labels[t] != TB_MASK_IGNORE ? b.labels[t] : b.ids[t];
            snprintf(x, sizeof x, "%d,", id);
            pf_buf_str(&h, x);
        }
        d.tok[d.n] = h.p;
        d.n++;
    }
    if (k < 0) fail_msg("%s", e.msg);
    tb_stream_stats_get(s, st);
    tb_stream_batch_free(&b);
    tb_stream_close(s);
    return d;
}

static const char *find(const docmap *d, const char *loc, uint64_t doc) {
    for (size_t i = 0; i < d->n; i++)
        if (d->doc[i] == doc && strcmp(d->loc[i], loc) == 0) return d->tok[i];
    return NULL;
}

static size_t count_loc(const docmap *d, const char *loc) {
    size_t n = 0;
    for (size_t i = 0; i < d->n; i++) n += strcmp(d->loc[i], loc) == 0;
    return n;
}

static void docmap_free(docmap *d) {
    for (size_t i = 0; i < d->n; i++) free(d->loc[i]), free(d->tok[i]);
    free(d->loc), free(d->doc), free(d->tok);
}

static void test_each_bad_kind_is_skipped_and_counted(void **st) {
    (void)st;
    char dir[600], p[16][800];
    pf_tmpdir(dir, sizeof dir, "bad");
    tb_spm *spm = pf_spm();
    pf_texts t = pf_fixture_paragraphs();
    size_t q = t.n / 8;
    const char *names[] = {"good0.jsonl.gz", "good1.jsonl.zst", "missing.jsonl",
                           "trunc.jsonl.gz", "corrupt.jsonl.zst", "notjson.jsonl",
                           "nofield.jsonl", "badutf8.jsonl", "badsha.jsonl.gz"};
    for (int i = 0; i < 9; i++) snprintf(p[i], sizeof p[i], "%s/%s", dir, names[i]);
    pf_buf g0 = pf_jsonl(&t, 0, q, "text"), g1 = pf_jsonl(&t, q, 2 * q, "text");
    pf_buf z0 = pf_gzip(g0.p, g0.n), z1 = pf_zstd(g1.p, g1.n);
    pf_write(p[0], z0.p, z0.n);
    pf_write(p[1], z1.p, z1.n);
    uint8_t sha0[32];
    struct sha256_ctx sc;
    sha256_init(&sc);
    sha256_update(&sc, z0.n, (const uint8_t *)z0.p);
    sha256_digest(&sc, 32, sha0);
    /* truncated gzip: the first 60% of a valid one */
    pf_buf g3 = pf_jsonl(&t, 2 * q, 3 * q, "text");
    pf_buf z3 = pf_gzip(g3.p, g3.n);
    pf_write(p[3], z3.p, z3.n * 6 / 10);
    /* corrupt zstd: bytes flipped in the middle */
    pf_buf g4 = pf_jsonl(&t, 3 * q, 4 * q, "text");
    pf_buf z4 = pf_zstd(g4.p, g4.n);
    for (size_t i = z4.n / 2; i < z4.n / 2 + 64; i++) z4.p[i] ^= 0x5a;
    pf_write(p[4], z4.p, z4.n);
    /* per-line errors at line 4 of otherwise good shards */
    pf_buf g5 = pf_jsonl(&t, 4 * q, 4 * q + 3, "text");
    pf_buf_str(&g5, "{\"text\": \"unterminated\n");
    pf_buf g5b = pf_jsonl(&t, 4 * q + 3, 4 * q + 9, "text");
    pf_buf_add(&g5, g5b.p, g5b.n);
    pf_write(p[5], g5.p, g5.n);
    pf_buf g6 = pf_jsonl(&t, 5 * q, 5 * q + 3, "text");
    pf_buf_str(&g6, "{\"body\": \"a document under another field name\"}\n");
    pf_buf g6b = pf_jsonl(&t, 5 * q + 3, 5 * q + 9, "text");
    pf_buf_add(&g6, g6b.p, g6b.n);
    pf_write(p[6], g6.p, g6.n);
    pf_buf g7 = pf_jsonl(&t, 6 * q, 6 * q + 3, "text");
    pf_buf_str(&g7, "{\"text\": \"bytes \xff\xfe that are not UTF-8 at all\"}\n");
    pf_buf g7b = pf_jsonl(&t, 6 * q + 3, 6 * q + 9, "text");
    pf_buf_add(&g7, g7b.p, g7b.n);
    pf_write(p[7], g7.p, g7.n);
    pf_write(p[8], z0.p, z0.n); /* same bytes as good0, wrong sha256 in the manifest */

    pf_buf man = {0};
    char line[2000], hex[65];
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", sha0[i]);
    snprintf(line, sizeof line, "%s size=%zu sha256=%s\n", p[0], z0.n, hex);
    pf_buf_str(&man, line);
    for (int i = 1; i < 8; i++) {
        pf_buf_str(&man, p[i]);
        pf_buf_str(&man, "\n");
    }
    hex[0] = hex[0] == '0' ? '1' : '0';
    snprintf(line, sizeof line, "%s sha256=%s\n", p[8], hex);
    pf_buf_str(&man, line);
    tb_manifest all, good;
    tb_err e;
    assert_int_equal(tb_manifest_parse(&all, man.p, man.n, "all", NULL, &e), 0);
    all.generation = 1;
    snprintf(line, sizeof line, "%s\n%s\n", p[0], p[1]);
    assert_int_equal(tb_manifest_parse(&good, line, strlen(line), "good", NULL, &e), 0);
    good.generation = 1;

    events ev = {0}, ev_good = {0};
    tb_stream_stats sa, sg;
    pf_capture cap;
    pf_capture_start(&cap, dir);
    docmap A = collect(&all, spm, &ev, &sa, 2);
    char *log = pf_capture_end(&cap);
    docmap G = collect(&good, spm, &ev_good, &sg, 1);

    /* counters */
    assert_int_equal(sa.bad[TB_BAD_OPEN], 1);
    assert_int_equal(sa.bad[TB_BAD_CORRUPT], 2);
    assert_int_equal(sa.bad[TB_BAD_CHECKSUM], 1);
    assert_int_equal(sa.bad[TB_BAD_IO], 0);
    /* Lines decoded from the corrupt zstd frame before its checksum failed may count as
     * bad lines of shard 4; every other line-level event is the planted one. */
    int line_ev[TB_BAD_KINDS] = {0}, shard_ev = 0;
    for (int i = 0; i < ev.n; i++) {
        if (ev.shard[i] == 4 && ev.kind[i] != TB_BAD_CORRUPT) continue;
        if (ev.kind[i] >= TB_BAD_NOT_JSON) line_ev[ev.kind[i]]++;
        else shard_ev++;
    }
    assert_int_equal(line_ev[TB_BAD_NOT_JSON], 1);
    assert_int_equal(line_ev[TB_BAD_MISSING_FIELD], 1);
    assert_int_equal(line_ev[TB_BAD_UTF8], 1);
    assert_int_equal(shard_ev, 4);
    assert_int_equal(sa.bad[TB_BAD_MISSING_FIELD], 1);
    assert_int_equal(ev_good.n, 0);
    /* events and log lines name the shard and the line */
    for (int i = 0; i < ev.n; i++) {
        if (ev.shard[i] == 4) continue;
        if (ev.kind[i] == TB_BAD_NOT_JSON || ev.kind[i] == TB_BAD_MISSING_FIELD ||
            ev.kind[i] == TB_BAD_UTF8) {
            assert_int_equal(ev.line[i], 4);
            assert_int_equal(ev.shard[i], ev.kind[i] == TB_BAD_NOT_JSON ? 5 : ev.kind[i] == TB_BAD_UTF8 ? 7 : 6);
        }
    }
    const char *want[] = {"bad open: shard 2", "missing.jsonl",
                          "bad corrupt: shard 3", "trunc.jsonl.gz",
                          "bad corrupt: shard 4", "corrupt.jsonl.zst",
                          "bad not_json: shard 5", "notjson.jsonl' line 4",
                          "bad missing_field: shard 6", "nofield.jsonl' line 4",
                          "bad bad_utf8: shard 7", "badutf8.jsonl' line 4",
                          "bad checksum: shard 8", "badsha.jsonl.gz"};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        if (!strstr(log, want[i])) fail_msg("log lacks '%s'", want[i]);
    /* good shards: exactly the same documents with the same ids */
    assert_int_equal(count_loc(&A, p[0]), count_loc(&G, p[0]));
    assert_int_equal(count_loc(&A, p[1]), count_loc(&G, p[1]));
    assert_int_equal(count_loc(&G, p[0]) + count_loc(&G, p[1]), G.n);
    for (size_t i = 0; i < G.n; i++) {
        const char *x = find(&A, G.loc[i], G.doc[i]);
        assert_non_null(x);
        assert_string_equal(x, G.tok[i]);
    }
    /* per-line kinds drop just that document */
    for (int s = 5; s <= 7; s++) {
        assert_int_equal(count_loc(&A, p[s]), 9);
        assert_null(find(&A, p[s], 3)); /* line 4 = document id 3 */
        assert_non_null(find(&A, p[s], 2));
        assert_non_null(find(&A, p[s], 4));
    }
    /* checksum and open: nothing; corrupt streams: fewer than all documents */
    assert_int_equal(count_loc(&A, p[8]), 0);
    assert_int_equal(count_loc(&A, p[2]), 0);
    assert_true(count_loc(&A, p[3]) < q);
    assert_true(count_loc(&A, p[4]) < q);
    free(log);
    docmap_free(&A);
    docmap_free(&G);
    tb_manifest_free(&all);
    tb_manifest_free(&good);
    pf_buf *bufs[] = {&g0, &g1, &z0, &z1, &g3, &z3, &g4, &z4, &g5, &g5b, &g6, &g6b, &g7, &g7b, &man};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) free(bufs[i]->p);
    for (size_t i = 0; i < t.n; i++) free(t.s[i]);
    free(t.s);
    tb_spm_free(spm);
    pf_rmtree(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_bad_kind_is_skipped_and_counted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
