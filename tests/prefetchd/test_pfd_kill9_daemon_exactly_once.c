/* kill -9 of tb-prefetchd 20 times at random points: a consumer that acknowledges and
 * re-HELLOs with its cursor after each restart receives every batch of the planned
 * stream exactly once (no gap, no duplicate, each bit-identical to the plan). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "pfd_harness.h"

static void test_kill9_daemon_20_times_every_batch_once(void **state) {
    (void)state;
    pfdt t;
    if (pfdt_init(&t, "kill9d") < 0) skip();
    unsigned seed = (unsigned)time(NULL);
    printf("random seed %u\n", seed);
    srand(seed);
    assert_int_equal(pfdt_start(&t, 10000), 0);
    pfdt_plan p;
    assert_int_equal(pfdt_plan_open(&t, &p), 0);
    pfdt_consumer c;
    assert_int_equal(pfdt_consumer_open(&t, &c, 0, 1), 0);
    assert_int_equal(pfdt_consumer_hello(&c, 0, 4), 0);
    int dups = 0, total = 0;
    for (int i = 0; i < 20; i++) {
        int n = 1 + rand() % 12;
        int got = pfdt_consume(&c, &p, n, 10000, &dups);
        assert_int_equal(got, n);
        total += got;
        usleep((useconds_t)(rand() % 80) * 1000); /* production keeps going meanwhile */
        pfdt_kill9(&t);
        /* what was already on its way is still applied */
        int more = pfdt_consume(&c, &p, 1000, 150, &dups);
        assert_true(more >= 0);
        total += more;
        assert_int_equal(pfdt_start(&t, 15000), 0);
        assert_int_equal(pfdt_consumer_hello(&c, 1, 4), 0);
    }
    int got = pfdt_consume(&c, &p, 10, 10000, &dups);
    assert_int_equal(got, 10);
    total += got;
    printf("applied %d batches across 20 kills, duplicates %d\n", total, dups);
    assert_int_equal(dups, 0);
    pfdt_consumer_close(&c);
    pfdt_plan_close(&p);
    assert_int_equal(pfdt_stop(&t), 0);
    pfdt_cleanup(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill9_daemon_20_times_every_batch_once),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
