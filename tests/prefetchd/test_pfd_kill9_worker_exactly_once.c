/* kill -9 of the producing worker process 20 times at random points: the master
 * restarts it and it rebuilds only what was missing; the consumer (which never
 * reconnects) receives every batch of the planned stream exactly once. With two
 * processes the standby takes over. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "pfd_harness.h"

static void run(int processes) {
    pfdt t;
    char name[32];
    snprintf(name, sizeof name, "kill9w%d", processes);
    if (pfdt_init(&t, name) < 0) skip();
    char sets[64];
    snprintf(sets, sizeof sets, "workers.processes=%d\n", processes);
    assert_int_equal(pfdt_write_config(&t, sets), 0);
    unsigned seed = (unsigned)time(NULL) + (unsigned)processes;
    printf("random seed %u\n", seed);
    srand(seed);
    assert_int_equal(pfdt_start(&t, 10000), 0);
    pfdt_plan p;
    assert_int_equal(pfdt_plan_open(&t, &p), 0);
    pfdt_consumer c;
    assert_int_equal(pfdt_consumer_open(&t, &c, 0, 1), 0);
    assert_int_equal(pfdt_consumer_hello(&c, 0, 4), 0);
    int dups = 0, total = 0, kills = 0;
    int64_t last_killed = 0;
    while (kills < 20) {
        int n = 1 + rand() % 8;
        int got = pfdt_consume(&c, &p, n, 10000, &dups);
        assert_int_equal(got, n);
        total += got;
        usleep((useconds_t)(rand() % 40) * 1000);
        int64_t wpid = pfdt_status_int(&t, "worker_pid");
        /* between a death and its reaping the status still names the dead pid */
        if (wpid <= 0 || wpid == last_killed) continue;
        assert_int_equal(kill((pid_t)wpid, SIGKILL), 0);
        last_killed = wpid;
        kills++;
    }
    int got = pfdt_consume(&c, &p, 10, 10000, &dups);
    assert_int_equal(got, 10);
    total += got;
    int64_t restarts = 0;
    for (int i = 0; i < 100 && (restarts = pfdt_status_int(&t, "worker_restarts")) < kills; i++)
        usleep(50000);
    printf("applied %d batches across %d worker kills (%lld restarts), duplicates %d\n", total,
           kills, (long long)restarts, dups);
    assert_true(restarts >= 20);
    assert_int_equal(dups, 0);
    pfdt_consumer_close(&c);
    pfdt_plan_close(&p);
    assert_int_equal(pfdt_stop(&t), 0);
    pfdt_cleanup(&t);
}

static void test_kill9_worker_20_times_every_batch_once(void **state) {
    (void)state;
    run(1);
}

static void test_kill9_worker_standby_takes_over_every_batch_once(void **state) {
    (void)state;
    run(2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill9_worker_20_times_every_batch_once),
        cmocka_unit_test(test_kill9_worker_standby_takes_over_every_batch_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
