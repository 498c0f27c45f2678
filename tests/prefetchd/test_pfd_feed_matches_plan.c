/* The feed delivers exactly the planned stream: every BATCH equals, bit for bit, what
 * pf-data's tb_stream gives for the same config, manifest and seed; a trainer restored
 * from an older checkpoint (HELLO with an old cursor) gets exactly the batches after it,
 * regenerated; with two ranks batch k goes to rank k mod 2; the daemon stops cleanly on
 * `stop`; a second daemon on the same ring/endpoints fails with a clear error. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "pfd_harness.h"

static void test_feed_matches_plan_then_stops(void **state) {
    (void)state;
    pfdt t;
    if (pfdt_init(&t, "plan") < 0) skip();
    assert_int_equal(pfdt_start(&t, 10000), 0);
    /* ipc sockets are group-only */
    struct stat st;
    assert_int_equal(stat(t.feed + 6, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0660);
    pfdt_plan p;
    assert_int_equal(pfdt_plan_open(&t, &p), 0);
    pfdt_consumer c;
    assert_int_equal(pfdt_consumer_open(&t, &c, 0, 1), 0);
    assert_int_equal(pfdt_consumer_hello(&c, 0, 4), 0);
    int dups = 0;
    assert_int_equal(pfdt_consume(&c, &p, 40, 5000, &dups), 40);
    assert_int_equal(dups, 0);
    assert_true(pfdt_status_int(&t, "batches_acked") >= 39);
    pfdt_consumer_close(&c);
    pfdt_plan_close(&p);
    assert_int_equal(pfdt_stop(&t), 0);
    pfdt_cleanup(&t);
}

static void test_second_daemon_fails_with_clear_error(void **state) {
    (void)state;
    pfdt t;
    if (pfdt_init(&t, "second") < 0) skip();
    assert_int_equal(pfdt_start(&t, 10000), 0);
    pid_t b = pfdt_spawn(&t, NULL);
    int st = 0;
    assert_int_equal(waitpid(b, &st, 0), b);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 75);
    assert_true(pfdt_log_has(&t, "ring.lock is in use by pid"));
    /* a different ring but the same feed endpoint: the endpoint's lock stops it */
    char set[400];
    snprintf(set, sizeof set, "paths.ring=%s/ring2", t.dir);
    char *argv[] = {"-s", set, NULL};
    b = pfdt_spawn(&t, argv);
    assert_int_equal(waitpid(b, &st, 0), b);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 75);
    assert_true(pfdt_log_has(&t, "feed.sock.lock is in use by pid"));
    /* the first one still serves */
    assert_true(pfdt_status_int(&t, "pid") == t.pid);
    assert_int_equal(pfdt_stop(&t), 0);
    pfdt_cleanup(&t);
}

static void test_hello_with_old_cursor_replays_exactly_after_it(void **state) {
    (void)state;
    pfdt t;
    if (pfdt_init(&t, "rewind") < 0) skip();
    assert_int_equal(pfdt_start(&t, 10000), 0);
    pfdt_plan p;
    assert_int_equal(pfdt_plan_open(&t, &p), 0);
    pfdt_consumer c;
    assert_int_equal(pfdt_consumer_open(&t, &c, 0, 1), 0);
    assert_int_equal(pfdt_consumer_hello(&c, 0, 4), 0);
    int dups = 0;
    assert_int_equal(pfdt_consume(&c, &p, 11, 5000, &dups), 11);
    uint8_t saved[TB_STREAM_CURSOR_BYTES]; /* the "checkpoint" after batch 10 */
    memcpy(saved, c.cursor, sizeof saved);
    assert_int_equal(pfdt_consume(&c, &p, 30, 5000, &dups), 30);
    pfdt_consumer_close(&c);
    pfdt_plan_close(&p);
    /* a new trainer process restored from the checkpoint */
    pfdt_consumer c2;
    assert_int_equal(pfdt_consumer_open(&t, &c2, 0, 1), 0);
    memcpy(c2.cursor, saved, sizeof saved);
    c2.have_cursor = 1;
    c2.next_seq = 11;
    assert_int_equal(pfdt_plan_open(&t, &p), 0);
    for (int i = 0; i < 11; i++) assert_int_equal(pfdt_plan_next(&p), 1);
    assert_int_equal(pfdt_consumer_hello(&c2, 1, 4), 0);
    assert_int_equal(pfdt_consume(&c2, &p, 40, 5000, &dups), 40);
    assert_int_equal(dups, 0);
    assert_true(pfdt_status_int(&t, "rewinds") == 1);
    pfdt_consumer_close(&c2);
    pfdt_plan_close(&p);
    assert_int_equal(pfdt_stop(&t), 0);
    pfdt_cleanup(&t);
}

static void test_two_ranks_get_batch_k_mod_world(void **state) {
    (void)state;
    pfdt t;
    if (pfdt_init(&t, "world2") < 0) skip();
    assert_int_equal(pfdt_start(&t, 10000), 0);
    pfdt_plan p;
    assert_int_equal(pfdt_plan_open(&t, &p), 0);
    pfdt_consumer c[2];
    for (uint32_t r = 0; r < 2; r++) {
        assert_int_equal(pfdt_consumer_open(&t, &c[r], r, 2), 0);
        assert_int_equal(pfdt_consumer_hello(&c[r], 0, 3), 0);
    }
    /* batches 0..39 in plan order, alternating ranks */
    for (uint64_t k = 0; k < 40; k++) {
        pfdt_consumer *cc = &c[k % 2];
        tb_batch b;
        assert_int_equal(pfdt_consumer_recv(cc, &b, 5000), 1);
        assert_int_equal(b.seq, k);
        assert_int_equal(pfdt_plan_next(&p), 1);
        assert_int_equal(pfdt_plan_compare(&p, &b), 0);
        pfdt_consumer_apply(cc, &b);
        pfdt_consumer_credit(cc, 1);
        tb_batch_free(&b);
    }
    for (int r = 0; r < 2; r++) pfdt_consumer_close(&c[r]);
    pfdt_plan_close(&p);
    assert_int_equal(pfdt_stop(&t), 0);
    pfdt_cleanup(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_feed_matches_plan_then_stops),
        cmocka_unit_test(test_second_daemon_fails_with_clear_error),
        cmocka_unit_test(test_hello_with_old_cursor_replays_exactly_after_it),
        cmocka_unit_test(test_two_ranks_get_batch_k_mod_world),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
