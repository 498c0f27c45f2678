/* Live shard swaps during a run: `shards set`, `shards add`, `shards remove` and SIGHUP
 * each make a new generation that takes effect at the next document boundary after the
 * batches already built; the consumer sees the old generation until the boundary, then
 * only the new one, and every batch equals the plan (which applies the recorded swap
 * points), so nothing is lost or repeated. The swap points survive a kill -9, and a lost
 * ring file (reboot) with a changed manifest continues the same timeline. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "pfd_harness.h"

typedef struct gen_watch {
    uint64_t max_gen;
    int regressions;
} gen_watch;

/* Consumes n batches, checking them against the plan and that the generation of the
 * samples never goes back. */
static pfdt *g_t; /* the daemon under test, for its log when a check fails */

static int consume_watch_(pfdt_consumer *c, pfdt_plan *p, int n, gen_watch *g, uint64_t *first_seq_of,
                         uint64_t want_gen) {
    int applied = 0;
    while (applied < n) {
        tb_batch b;
        int r = pfdt_consumer_recv(c, &b, 10000);
        if (r != 1) {
            fprintf(stderr, "consume_watch: no batch within 10 s (next %llu, %d applied)\n",
                    (unsigned long long)c->next_seq, applied);
            return -1;
        }
        if (b.seq != c->next_seq) {
            fprintf(stderr, "consume_watch: got batch %llu, expected %llu\n",
                    (unsigned long long)b.seq, (unsigned long long)c->next_seq);
            tb_batch_free(&b);
            return -1;
        }
        if (pfdt_plan_next(p) < 0 || pfdt_plan_compare(p, &b) < 0) {
            fprintf(stderr, "consume_watch: batch %llu differs from the plan\n",
                    (unsigned long long)b.seq);
            tb_batch_free(&b);
            return -1;
        }
        for (uint32_t i = 0; i < b.B; i++) {
            if (b.prov[i].generation < g->max_gen) g->regressions++;
            if (b.prov[i].generation > g->max_gen) g->max_gen = b.prov[i].generation;
            if (b.prov[i].generation == want_gen && *first_seq_of == UINT64_MAX)
                *first_seq_of = b.seq;
        }
        pfdt_consumer_apply(c, &b);
        pfdt_consumer_credit(c, 1);
        tb_batch_free(&b);
        applied++;
    }
    return applied;
}

static int consume_watch(pfdt_consumer *c, pfdt_plan *p, int n, gen_watch *g, uint64_t *first_seq_of,
                         uint64_t want_gen) {
    int r = consume_watch_(c, p, n, g, first_seq_of, want_gen);
    if (r < 0 && g_t) pfdt_dump_log(g_t, 60);
    return r;
}

static int64_t reply_int(const tb_reply *r, const char *k) {
    const tb_kv *kv = tb_kvmap_get(&r->result, k);
    return kv && kv->type == TB_KV_INT ? kv->v.i : -1;
}

static void test_live_swaps_old_until_boundary_then_new_nothing_lost(void **state) {
    (void)state;
    pfdt t;
    if (pfdt_init(&t, "swap") < 0) skip();
    g_t = &t;
    char a[400], b[400], manb[400], text[900];
    snprintf(a, sizeof a, "%s/a.jsonl.gz", t.dir);
    snprintf(b, sizeof b, "%s/b.jsonl", t.dir);
    snprintf(manb, sizeof manb, "%s/b.manifest", t.dir);
    assert_int_equal(pfdt_write_jsonl_shard(b, 300, 5), 0);
    FILE *f = fopen(manb, "w");
    fprintf(f, "%s\n", b);
    fclose(f);
    assert_int_equal(pfdt_start(&t, 10000), 0);
    pfdt_plan p;
    assert_int_equal(pfdt_plan_open(&t, &p), 0);
    pfdt_consumer c;
    assert_int_equal(pfdt_consumer_open(&t, &c, 0, 1), 0);
    assert_int_equal(pfdt_consumer_hello(&c, 0, 4), 0);
    gen_watch g = {1, 0};
    uint64_t first2 = UINT64_MAX, first3 = UINT64_MAX, first4 = UINT64_MAX, unused = UINT64_MAX;
    assert_int_equal(consume_watch(&c, &p, 12, &g, &unused, 0), 12);

    /* shards set: generation 2 = {b} */
    tb_reply r;
    assert_int_equal(pfdt_request(&t, "shards.set", "path", manb, &r, 5000), 0);
    assert_true(r.ok);
    assert_int_equal(reply_int(&r, "generation"), 2);
    int64_t s2 = reply_int(&r, "from_batch");
    tb_reply_free(&r);
    assert_true(s2 >= 12); /* batches already built are delivered */
    assert_int_equal(pfdt_plan_reload_swaps(&t, &p), 0);
    assert_int_equal(consume_watch(&c, &p, 30, &g, &first2, 2), 30);
    assert_true(first2 != UINT64_MAX);
    assert_true(first2 >= (uint64_t)s2);
    assert_int_equal(g.max_gen, 2);

    /* shards add a: generation 3 = {b, a} */
    assert_int_equal(pfdt_request(&t, "shards.add", "location", a, &r, 5000), 0);
    assert_true(r.ok);
    assert_int_equal(reply_int(&r, "generation"), 3);
    tb_reply_free(&r);
    assert_int_equal(pfdt_request(&t, "shards.list", NULL, NULL, &r, 5000), 0);
    assert_int_equal(reply_int(&r, "count"), 2);
    tb_reply_free(&r);
    assert_int_equal(pfdt_plan_reload_swaps(&t, &p), 0);
    assert_int_equal(consume_watch(&c, &p, 30, &g, &first3, 3), 30);
    assert_true(first3 != UINT64_MAX);

    /* a bad request changes nothing */
    assert_int_equal(pfdt_request(&t, "shards.remove", "location", "/no/such/shard", &r, 5000), 0);
    assert_false(r.ok);
    assert_non_null(strstr(r.error, "not in generation 3"));
    tb_reply_free(&r);

    /* SIGHUP re-reads the manifest file: generation 4 = {b} again (a new generation) */
    snprintf(text, sizeof text, "%s\n", b);
    assert_int_equal(pfdt_write_manifest(&t, text), 0);
    kill(t.pid, SIGHUP);
    for (int i = 0; i < 100 && pfdt_status_int(&t, "generation") != 4; i++) usleep(50000);
    assert_int_equal(pfdt_status_int(&t, "generation"), 4);
    assert_int_equal(pfdt_plan_reload_swaps(&t, &p), 0);
    assert_int_equal(consume_watch(&c, &p, 10, &g, &first4, 4), 10);

    /* the swap points survive a kill -9: the restarted daemon replays them */
    pfdt_kill9(&t);
    int dups = 0;
    assert_true(pfdt_consume(&c, &p, 1000, 150, &dups) >= 0);
    assert_int_equal(pfdt_start(&t, 15000), 0);
    assert_int_equal(pfdt_consumer_hello(&c, 1, 4), 0);
    assert_int_equal(consume_watch(&c, &p, 30, &g, &first4, 4), 30);
    assert_true(first4 != UINT64_MAX);

    /* a reboot loses the ring (tmpfs) while the manifest file changed: the timeline in
     * the state dir continues, the new generation comes after the last swap point, and
     * the trainer's cursor brings it back exactly where it was */
    assert_int_equal(pfdt_stop(&t), 0);
    assert_true(pfdt_consume(&c, &p, 1000, 150, &dups) >= 0);
    snprintf(text, sizeof text, "%s\n%s\n", a, b);
    assert_int_equal(pfdt_write_manifest(&t, text), 0);
    char ring[400];
    snprintf(ring, sizeof ring, "%s/ring", t.dir);
    assert_int_equal(unlink(ring), 0);
    assert_int_equal(pfdt_start(&t, 15000), 0);
    assert_int_equal(pfdt_status_int(&t, "generation"), 5);
    assert_int_equal(pfdt_plan_reload_swaps(&t, &p), 0);
    assert_true(p.nswaps >= 4); /* the old swap points are kept */
    assert_int_equal(pfdt_consumer_hello(&c, 1, 4), 0);
    uint64_t first5 = UINT64_MAX;
    assert_int_equal(consume_watch(&c, &p, 30, &g, &first5, 5), 30);
    assert_true(first5 != UINT64_MAX);
    assert_int_equal(g.regressions, 0);
    assert_int_equal(dups, 0);
    printf("generation 2 from batch %llu (swap at %lld), 3 from %llu, 4 from %llu\n",
           (unsigned long long)first2, (long long)s2, (unsigned long long)first3,
           (unsigned long long)first4);
    pfdt_consumer_close(&c);
    pfdt_plan_close(&p);
    assert_int_equal(pfdt_stop(&t), 0);
    pfdt_cleanup(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_live_swaps_old_until_boundary_then_new_nothing_lost),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
