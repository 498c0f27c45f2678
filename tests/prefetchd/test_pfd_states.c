/* The state + cause in status/metrics: blocked (no consumers), blocked (no credits),
 * paused, running, and starved (network) while a remote shard's server stalls. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "http_test_server.h"
#include "pfd_harness.h"

/* Waits up to ms for state (and cause, when not NULL). */
static int wait_state(pfdt *t, const char *state, const char *cause, int ms) {
    char last[128] = "";
    for (int waited = 0; waited <= ms; waited += 100) {
        tb_reply r;
        if (pfdt_request(t, "status", NULL, NULL, &r, 2000) == 0) {
            const tb_kv *s = tb_kvmap_get(&r.result, "state");
            const tb_kv *c = tb_kvmap_get(&r.result, "cause");
            int ok = s && s->type == TB_KV_STR && strcmp(s->v.s, state) == 0 &&
                     (!cause || (c && c->type == TB_KV_STR && strcmp(c->v.s, cause) == 0));
            snprintf(last, sizeof last, "%s/%s", s ? s->v.s : "?", c ? c->v.s : "?");
            tb_reply_free(&r);
            if (ok) return 1;
        }
        usleep(100000);
    }
    fprintf(stderr, "state stayed %s, wanted %s/%s\n", last, state, cause ? cause : "*");
    return 0;
}

static void test_blocked_paused_running_states(void **state) {
    (void)state;
    pfdt t;
    if (pfdt_init(&t, "states") < 0) skip();
    assert_int_equal(pfdt_start(&t, 10000), 0);
    assert_true(wait_state(&t, "blocked", "no consumers", 10000));
    pfdt_consumer c;
    assert_int_equal(pfdt_consumer_open(&t, &c, 0, 1), 0);
    assert_int_equal(pfdt_consumer_hello(&c, 0, 0), 0);
    assert_true(wait_state(&t, "blocked", "no credits", 5000));
    tb_reply r;
    assert_int_equal(pfdt_request(&t, "pause", NULL, NULL, &r, 2000), 0);
    tb_reply_free(&r);
    assert_true(wait_state(&t, "paused", NULL, 5000));
    assert_int_equal(pfdt_request(&t, "resume", NULL, NULL, &r, 2000), 0);
    tb_reply_free(&r);
    assert_true(wait_state(&t, "blocked", "no credits", 5000));
    pfdt_consumer_close(&c);
    assert_int_equal(pfdt_stop(&t), 0);
    pfdt_cleanup(&t);
}

static void test_starved_network_while_server_stalls(void **state) {
    (void)state;
    pfdt t;
    if (pfdt_init(&t, "starve") < 0) skip();
    hts srv;
    assert_int_equal(hts_start(&srv, t.dir), 0);
    atomic_store(&srv.stall_after, 3000);
    atomic_store(&srv.stall_count, 100000);
    char man[256];
    snprintf(man, sizeof man, "http://127.0.0.1:%d/a.jsonl.gz\n", srv.port);
    assert_int_equal(pfdt_write_manifest(&t, man), 0);
    assert_int_equal(pfdt_write_config(&t, "http.low_speed_time_s=2\nhttp.retries=1000\n"
                                           "http.backoff_initial_ms=10\ncache.budget_bytes=0\n"),
                     0);
    assert_int_equal(pfdt_start(&t, 10000), 0);
    pfdt_consumer c;
    assert_int_equal(pfdt_consumer_open(&t, &c, 0, 1), 0);
    assert_int_equal(pfdt_consumer_hello(&c, 0, 4), 0);
    assert_true(wait_state(&t, "starved", "network", 15000));
    assert_true(pfdt_status_int(&t, "http_resumes") >= 0);
    /* the server recovers: batches flow */
    atomic_store(&srv.stall_count, 0);
    tb_batch b;
    assert_int_equal(pfdt_consumer_recv(&c, &b, 20000), 1);
    tb_batch_free(&b);
    pfdt_consumer_close(&c);
    assert_int_equal(pfdt_stop(&t), 0);
    hts_stop(&srv);
    pfdt_cleanup(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_blocked_paused_running_states),
        cmocka_unit_test(test_starved_network_while_server_stalls),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
