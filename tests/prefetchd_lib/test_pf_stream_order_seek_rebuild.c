/* The sample stream over shards built from the fixture text (gzip multi-member, zstd,
 * uncompressed RedPajama-style raw_content, plain text): layouts with and without
 * packing, short documents dropped, threads=1 vs threads=4 identical, pread fallback
 * identical, seek to any batch cursor gives the same later batches (across epochs),
 * samples rebuilt from provenance bit for bit, and a live generation swap. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "mask.h"
#include "pf_test_util.h"
#include "tb_rng.h"

typedef struct fx {
    char dir[600];
    tb_spm *spm;
    tb_manifest man;
    tb_manifest_history hist;
    size_t n_short; /* documents of <= 10 chars written */
} fx;

static fx F;

static void add_short_docs(pf_buf *b, const char *field) {
    char line[256];
    snprintf(line, sizeof line, "{\"%s\":\"   corto \\n  \"}\n", field);
    pf_buf_str(b, line);
    snprintf(line, sizeof line, "{\"%s\":\"abcdefghij\"}\n", field); /* exactly 10: dropped */
    pf_buf_str(b, line);
    snprintf(line, sizeof line, "{\"%s\":\" abcdefghijk \"}\n", field); /* 11: kept */
    pf_buf_str(b, line);
    F.n_short += 2;
}

static int setup(void **st) {
    (void)st;
    memset(&F, 0, sizeof F);
    pf_tmpdir(F.dir, sizeof F.dir, "stream");
    F.spm = pf_spm();
    pf_texts t = pf_fixture_paragraphs();
    assert_true(t.n > 200);
    size_t q = t.n / 4;
    char path[800];
    pf_buf man = {0};
    /* shard 0: gzip, two members */
    pf_buf a = pf_jsonl(&t, 0, q / 2, "text");
    add_short_docs(&a, "text");
    pf_buf a2 = pf_jsonl(&t, q / 2, q, "text");
    pf_buf g1 = pf_gzip(a.p, a.n), g2 = pf_gzip(a2.p, a2.n);
    pf_buf_add(&g1, g2.p, g2.n);
    snprintf(path, sizeof path, "%s/s0.jsonl.gz", F.dir);
    pf_write(path, g1.p, g1.n);
    pf_buf_str(&man, path);
    pf_buf_str(&man, "\n");
    /* shard 1: zstd */
    pf_buf b = pf_jsonl(&t, q, 2 * q, "text");
    add_short_docs(&b, "text");
    pf_buf z = pf_zstd(b.p, b.n);
    snprintf(path, sizeof path, "%s/s1.jsonl.zst", F.dir);
    pf_write(path, z.p, z.n);
    pf_buf_str(&man, path);
    pf_buf_str(&man, "\n");
    /* shard 2: uncompressed, RedPajama-V2 raw_content */
    pf_buf c = pf_jsonl(&t, 2 * q, 3 * q, "raw_content");
    add_short_docs(&c, "raw_content");
    snprintf(path, sizeof path, "%s/s2.jsonl", F.dir);
    pf_write(path, c.p, c.n);
    pf_buf_str(&man, path);
    pf_buf_str(&man, "\n");
    /* shard 3: plain text, a document per paragraph */
    pf_buf d = {0};
    for (size_t i = 3 * q; i < t.n; i++) {
        pf_buf_str(&d, t.s[i]);
        pf_buf_str(&d, "\n\n\n");
    }
    pf_buf_str(&d, "tiny\n\n");
    F.n_short += 1;
    snprintf(path, sizeof path, "%s/s3.txt", F.dir);
    pf_write(path, d.p, d.n);
    pf_buf_str(&man, path);
    pf_buf_str(&man, "\n");
    tb_err e;
    assert_int_equal(tb_manifest_parse(&F.man, man.p, man.n, "test", NULL, &e), 0);
    char sdir[700];
    snprintf(sdir, sizeof sdir, "%s/state", F.dir);
    uint64_t gen;
    assert_int_equal(tb_manifest_history_commit(&F.hist, sdir, &F.man, &gen, &e), 0);
    F.man.generation = gen;
    free(a.p), free(a2.p), free(g1.p), free(g2.p), free(b.p), free(z.p), free(c.p), free(d.p);
    free(man.p);
    for (size_t i = 0; i < t.n; i++) free(t.s[i]);
    free(t.s);
    return 0;
}

static int teardown(void **st) {
    (void)st;
    tb_manifest_free(&F.man);
    tb_manifest_history_free(&F.hist);
    tb_spm_free(F.spm);
    pf_rmtree(F.dir);
    return 0;
}

static tb_stream_config cfg_small(void) {
    tb_stream_config c;
    tb_stream_config_default(&c);
    c.seq_len = 128;
    c.batch_size = 4;
    c.seed = 42;
    c.shuffle_buffer = 16;
    c.threads = 1;
    return c;
}

typedef struct run {
    size_t n;
    tb_stream_batch *b; // (n)
} run;

static run run_batches(const tb_stream_config *c, const tb_manifest *m,
                       const tb_stream_cursor *at, size_t n) {
    tb_err e;
    tb_stream *s = tb_stream_open(c, m, F.spm, at, &e);
    if (!s) fail_msg("open: %s", e.msg);
    run r = {0, calloc(n, sizeof(tb_stream_batch))};
    for (size_t i = 0; i < n; i++) {
        int k = tb_stream_next_batch(s, &r.b[i], &e);
        if (k < 0) fail_msg("next_batch: %s", e.msg);
        if (k == 0) break;
        r.n++;
    }
    tb_stream_close(s);
    return r;
}

static void run_free(run *r) {
    for (size_t i = 0; i < r->n; i++) tb_stream_batch_free(&r->b[i]);
    free(r->b);
}

static void assert_batch_equal(const tb_stream_batch *x, const tb_stream_batch *y) {
    size_t BT = (size_t)x->B * x->T;
    assert_int_equal(x->seq, y->seq);
    assert_int_equal(x->B, y->B);
    assert_memory_equal(x->ids, y->ids, BT * sizeof *x->ids);
    assert_memory_equal(x->labels, y->labels, BT * sizeof *x->labels);
    assert_memory_equal(x->attn_mask, y->attn_mask, BT);
    assert_memory_equal(x->prov, y->prov, x->B * sizeof *x->prov);
    assert_int_equal(x->n_segs, y->n_segs);
    assert_memory_equal(x->segs, y->segs, x->n_segs * sizeof *x->segs);
    assert_memory_equal(&x->cursor_after, &y->cursor_after, sizeof x->cursor_after);
}

static void test_packed_layout(void **st) {
    (void)st;
    tb_stream_config c = cfg_small();
    run r = run_batches(&c, &F.man, NULL, 40);
    assert_int_equal(r.n, 40);
    tb_spm_specials sp = tb_spm_get_specials(F.spm);
    uint64_t sample = 0;
    for (size_t i = 0; i < r.n; i++) {
        const tb_stream_batch *b = &r.b[i];
        assert_int_equal(b->seq, i);
        for (size_t s = 0; s < b->B; s++) {
            const int32_t *ids = b->ids + s * b->T;
            const int32_t *lab = b->labels + s * b->T;
            const tb_sample_prov *p = &b->prov[s];
            assert_int_equal(p->sample, sample++);
            assert_int_equal(ids[0], sp.cls);
            assert_int_equal(lab[0], TB_MASK_IGNORE);
            assert_int_equal(p->length, b->T);
            size_t tot = 1;
            for (uint32_t k = 0; k < p->seg_count; k++) tot += b->segs[p->seg_first + k].length;
            assert_int_equal(tot, b->T);
            for (size_t t = 0; t < b->T; t++) {
                assert_int_equal(b->attn_mask[s * b->T + t], 1);
                int32_t orig = lab[t] != TB_MASK_IGNORE ? lab[t] : ids[t];
                assert_int_not_equal(orig, sp.pad);
            }
            /* every segment but possibly the last ends with [SEP] */
            size_t t = 1;
            for (uint32_t k = 0; k < p->seg_count; k++) {
                const tb_stream_seg *g = &b->segs[p->seg_first + k];
                t += g->length;
                if (k + 1 < p->seg_count) {
                    int32_t last = lab[t - 1] != TB_MASK_IGNORE ? lab[t - 1] : ids[t - 1];
                    assert_int_equal(last, sp.sep);
                    assert_int_equal(b->segs[p->seg_first + k + 1].token_offset, 0);
                }
            }
        }
        if (i > 0) assert_int_equal(b->cursor_after.batch_seq, i + 1);
        assert_int_equal(b->cursor_after.samples_emitted, (i + 1) * b->B);
    }
    run_free(&r);
}

static void test_unpacked_layout_and_short_docs_dropped(void **st) {
    (void)st;
    tb_stream_config c = cfg_small();
    c.packing = false;
    c.batch_size = 1;
    c.seq_len = 256;
    c.max_epochs = 1;
    tb_err e;
    tb_stream *s = tb_stream_open(&c, &F.man, F.spm, NULL, &e);
    assert_non_null(s);
    tb_spm_specials sp = tb_spm_get_specials(F.spm);
    tb_stream_batch b = {0};
    size_t n = 0;
    int k;
    int saw_truncated = 0, saw_padded = 0, saw_eleven = 0;
    while ((k = tb_stream_next_batch(s, &b, &e)) == 1) {
        n++;
        const tb_sample_prov *p = &b.prov[0];
        assert_int_equal(p->seg_count, 1);
        uint32_t L = b.segs[p->seg_first].length;
        assert_true(L <= c.seq_len - 2);
        assert_int_equal(p->length, L + 2);
        assert_int_equal(b.ids[0], sp.cls);
        int32_t sep = b.labels[L + 1] != TB_MASK_IGNORE ? b.labels[L + 1] : b.ids[L + 1];
        assert_int_equal(sep, sp.sep);
        for (size_t t = 0; t < c.seq_len; t++) {
            assert_int_equal(b.attn_mask[t], t < L + 2 ? 1 : 0);
            if (t >= L + 2) {
                assert_int_equal(b.ids[t], sp.pad);
                assert_int_equal(b.labels[t], TB_MASK_IGNORE);
            }
        }
        saw_truncated |= L == c.seq_len - 2;
        saw_padded |= L < c.seq_len - 2;
        saw_eleven |= L <= 6;
    }
    assert_int_equal(k, 0);
    assert_true(saw_truncated && saw_padded && saw_eleven);
    tb_stream_stats stt;
    tb_stream_stats_get(s, &stt);
    assert_int_equal(stt.docs_short, F.n_short);
    assert_int_equal(stt.docs_used, n);
    assert_int_equal(stt.docs_read, n + F.n_short);
    for (int i = 0; i < TB_BAD_KINDS; i++) assert_int_equal(stt.bad[i], 0);
    tb_stream_batch_free(&b);
    tb_stream_close(s);
}

static void test_threads_and_pread_give_identical_batches(void **st) {
    (void)st;
    tb_stream_config c = cfg_small();
    const size_t N = 300; /* more than one epoch */
    run a = run_batches(&c, &F.man, NULL, N);
    assert_int_equal(a.n, N);
    assert_true(a.b[N - 1].cursor_after.epoch >= 1);
    c.threads = 4;
    run b = run_batches(&c, &F.man, NULL, N);
    assert_int_equal(b.n, N);
    for (size_t i = 0; i < N; i++) assert_batch_equal(&a.b[i], &b.b[i]);
    run_free(&b);
    c.threads = 1;
    c.file.force_pread = 1;
    c.file.chunk = 4096;
    b = run_batches(&c, &F.man, NULL, N);
    for (size_t i = 0; i < N; i++) assert_batch_equal(&a.b[i], &b.b[i]);
    run_free(&b);
    /* another seed: another order */
    c.seed = 43;
    b = run_batches(&c, &F.man, NULL, 2);
    assert_memory_not_equal(a.b[1].ids, b.b[1].ids, c.seq_len * sizeof(int32_t));
    run_free(&b);
    run_free(&a);
}

static void test_seek_gives_the_batches_after_the_cursor(void **st) {
    (void)st;
    tb_stream_config c = cfg_small();
    const size_t N = 260;
    run a = run_batches(&c, &F.man, NULL, N);
    assert_int_equal(a.n, N);
    const size_t ks[] = {0, 1, 5, 37, 118, 119, 120, 121, 200, 250};
    tb_stream_config c2 = c;
    c2.threads = 3;
    for (size_t i = 0; i < sizeof ks / sizeof ks[0]; i++) {
        size_t k = ks[i];
        uint8_t bytes[TB_STREAM_CURSOR_BYTES];
        tb_stream_cursor_serialize(bytes, &a.b[k].cursor_after);
        tb_stream_cursor cur;
        tb_err e;
        assert_int_equal(tb_stream_cursor_deserialize(&cur, bytes, sizeof bytes, &e), 0);
        run b = run_batches(i % 2 ? &c2 : &c, &F.man, &cur, N - k - 1);
        assert_int_equal(b.n, N - k - 1);
        for (size_t j = 0; j < b.n; j++) assert_batch_equal(&a.b[k + 1 + j], &b.b[j]);
        run_free(&b);
    }
    /* seek on an open stream, backwards and forwards */
    tb_err e;
    tb_stream *s = tb_stream_open(&c2, &F.man, F.spm, NULL, &e);
    tb_stream_batch b = {0};
    for (int i = 0; i < 50; i++) assert_int_equal(tb_stream_next_batch(s, &b, &e), 1);
    assert_int_equal(tb_stream_seek(s, &a.b[9].cursor_after, &e), 0);
    for (size_t j = 10; j < 20; j++) {
        assert_int_equal(tb_stream_next_batch(s, &b, &e), 1);
        assert_batch_equal(&a.b[j], &b);
    }
    assert_int_equal(tb_stream_seek(s, &a.b[150].cursor_after, &e), 0);
    assert_int_equal(tb_stream_next_batch(s, &b, &e), 1);
    assert_batch_equal(&a.b[151], &b);
    /* a damaged cursor is refused */
    uint8_t bytes[TB_STREAM_CURSOR_BYTES];
    tb_stream_cursor_serialize(bytes, &a.b[3].cursor_after);
    bytes[20] ^= 1;
    tb_stream_cursor bad;
    assert_int_equal(tb_stream_cursor_deserialize(&bad, bytes, sizeof bytes, &e), -1);
    assert_non_null(strstr(e.msg, "crc"));
    tb_stream_cursor wrong = a.b[3].cursor_after;
    wrong.shard = (wrong.shard + 1) % F.man.n;
    assert_int_equal(tb_stream_seek(s, &wrong, &e), -1);
    tb_stream_batch_free(&b);
    tb_stream_close(s);
    run_free(&a);
}

static void test_rebuild_from_provenance(void **st) {
    (void)st;
    for (int packing = 1; packing >= 0; packing--) {
        tb_stream_config c = cfg_small();
        c.packing = packing;
        const size_t N = 250;
        run a = run_batches(&c, &F.man, NULL, N);
        tb_rng r;
        tb_rng_init(&r, 3, TB_RNG_TEST, (uint32_t)packing, 0, 0);
        int32_t ids[128], labels[128];
        uint8_t am[128];
        for (int i = 0; i < 25; i++) {
            size_t bi = tb_rng_below(&r, (uint32_t)a.n);
            const tb_stream_batch *b = &a.b[bi];
            size_t s = tb_rng_below(&r, b->B);
            const tb_sample_prov *p = &b->prov[s];
            tb_err e;
            if (tb_stream_rebuild_sample(ids, labels, am, &c, &F.hist, F.spm, p,
                                         b->segs + p->seg_first, &e))
                fail_msg("rebuild batch %zu sample %zu: %s", bi, s, e.msg);
            assert_memory_equal(ids, b->ids + s * c.seq_len, sizeof ids);
            assert_memory_equal(labels, b->labels + s * c.seq_len, sizeof labels);
            assert_memory_equal(am, b->attn_mask + s * c.seq_len, sizeof am);
        }
        run_free(&a);
    }
}

static void test_live_swap_at_document_boundary(void **st) {
    (void)st;
    tb_stream_config c = cfg_small();
    tb_err e;
    /* generation 2: shards 1 and 3 only */
    tb_manifest m2 = {0};
    char text[4096];
    snprintf(text, sizeof text, "%s\n%s\n", F.man.shards[1].location, F.man.shards[3].location);
    assert_int_equal(tb_manifest_parse(&m2, text, strlen(text), "g2", NULL, &e), 0);
    char sdir[700];
    snprintf(sdir, sizeof sdir, "%s/state", F.dir);
    uint64_t gen;
    assert_int_equal(tb_manifest_history_commit(&F.hist, sdir, &m2, &gen, &e), 0);
    assert_int_equal(gen, 2);
    m2.generation = 2;
    tb_stream *s = tb_stream_open(&c, &F.man, F.spm, NULL, &e);
    tb_stream_batch b = {0};
    for (int i = 0; i < 7; i++) assert_int_equal(tb_stream_next_batch(s, &b, &e), 1);
    tb_stream_cursor before = b.cursor_after;
    assert_int_equal(tb_stream_swap(s, &m2, &e), 0);
    assert_int_equal(tb_stream_next_batch(s, &b, &e), 1);
    /* the current document is finished in generation 1, then only generation 2 */
    int in_new = 0;
    for (size_t k = 0; k < b.n_segs; k++) {
        if (b.segs[k].generation == 2) in_new = 1;
        else assert_false(in_new);
    }
    assert_true(in_new);
    if (before.token_offset > 0) {
        assert_int_equal(b.segs[0].generation, 1);
        assert_int_equal(b.segs[0].token_offset, before.token_offset);
    }
    for (int i = 0; i < 5; i++) {
        assert_int_equal(tb_stream_next_batch(s, &b, &e), 1);
        for (size_t k = 0; k < b.n_segs; k++) {
            assert_int_equal(b.segs[k].generation, 2);
            assert_true(b.segs[k].shard < 2);
        }
    }
    tb_stream_cursor after = b.cursor_after;
    assert_int_equal(after.generation, 2);
    tb_stream_batch ref = {0};
    assert_int_equal(tb_stream_next_batch(s, &ref, &e), 1);
    tb_stream_close(s);
    /* the new generation's cursor reopens on generation 2 */
    s = tb_stream_open(&c, &m2, F.spm, &after, &e);
    assert_non_null(s);
    assert_int_equal(tb_stream_next_batch(s, &b, &e), 1);
    assert_batch_equal(&ref, &b);
    tb_stream_close(s);
    /* a replay from the cursor before the swap, swapping there again, is identical */
    s = tb_stream_open(&c, &F.man, F.spm, &before, &e);
    assert_non_null(s);
    assert_int_equal(tb_stream_swap(s, &m2, &e), 0);
    for (int i = 0; i < 6; i++) assert_int_equal(tb_stream_next_batch(s, &b, &e), 1);
    assert_memory_equal(&b.cursor_after, &after, sizeof after);
    assert_int_equal(tb_stream_next_batch(s, &b, &e), 1);
    assert_batch_equal(&ref, &b);
    tb_stream_close(s);
    tb_stream_batch_free(&ref);
    tb_stream_batch_free(&b);
    tb_manifest_free(&m2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_packed_layout),
        cmocka_unit_test(test_unpacked_layout_and_short_docs_dropped),
        cmocka_unit_test(test_threads_and_pread_give_identical_batches),
        cmocka_unit_test(test_seek_gives_the_batches_after_the_cursor),
        cmocka_unit_test(test_rebuild_from_provenance),
        cmocka_unit_test(test_live_swap_at_document_boundary),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
