/* sd_notify protocol against a fake NOTIFY_SOCKET: READY=1 once the ring and sockets are
 * up, STATUS= lines, WATCHDOG=1 at less than half of WATCHDOG_USEC, RELOADING=1 then
 * READY=1 on SIGHUP, STOPPING=1 on SIGTERM, and the process exits 0 within 5 s. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "notify_harness.h"
#include "pfd_harness.h"
#include "tb_clock.h"

static void test_ready_status_watchdog_reload_stopping(void **state) {
    (void)state;
    pfdt t;
    if (pfdt_init(&t, "notify") < 0) skip();
    tb_notify_harness h;
    assert_int_equal(tb_notify_harness_open(&h, t.dir), 0);
    setenv("WATCHDOG_USEC", "2000000", 1); /* pings every 500 ms */
    unsetenv("WATCHDOG_PID");
    t.pid = pfdt_spawn(&t, NULL);
    char buf[1024];
    assert_int_equal(tb_notify_harness_wait_for(&h, "READY=1", 10000, buf, sizeof buf), 1);
    /* the control socket answers once READY was sent */
    assert_true(pfdt_status_int(&t, "pid") == t.pid);
    /* 2 s of messages: STATUS lines and watchdog pings under half the interval apart */
    double last_wd = 0, max_gap = 0;
    int wd = 0, status = 0;
    double end = tb_clock_mono_s() + 2.0;
    while (tb_clock_mono_s() < end) {
        int n = tb_notify_harness_recv(&h, 200, buf, sizeof buf);
        if (n <= 0) continue;
        if (strstr(buf, "WATCHDOG=1")) {
            double now = tb_clock_mono_s();
            if (last_wd > 0 && now - last_wd > max_gap) max_gap = now - last_wd;
            last_wd = now;
            wd++;
        }
        if (strncmp(buf, "STATUS=", 7) == 0) status++;
    }
    printf("%d watchdog pings, largest gap %.3f s; %d STATUS lines\n", wd, max_gap, status);
    assert_true(wd >= 3);
    assert_true(max_gap < 1.0); /* under half the interval */
    assert_true(status >= 2);
    kill(t.pid, SIGHUP);
    assert_int_equal(tb_notify_harness_wait_for(&h, "RELOADING=1", 5000, buf, sizeof buf), 1);
    assert_non_null(strstr(buf, "MONOTONIC_USEC="));
    assert_int_equal(tb_notify_harness_wait_for(&h, "READY=1", 5000, buf, sizeof buf), 1);
    double t0 = tb_clock_mono_s();
    kill(t.pid, SIGTERM);
    assert_int_equal(tb_notify_harness_wait_for(&h, "STOPPING=1", 5000, buf, sizeof buf), 1);
    int st;
    assert_int_equal(waitpid(t.pid, &st, 0), t.pid);
    double took = tb_clock_mono_s() - t0;
    printf("SIGTERM to exit: %.3f s\n", took);
    assert_true(took < 5.0);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    t.pid = -1;
    tb_notify_harness_close(&h);
    unsetenv("WATCHDOG_USEC");
    pfdt_cleanup(&t);
}

/* SIGTERM with a consumer that holds unacknowledged batches still exits within 5 s. */
static void test_sigterm_with_unacked_batches_exits_within_5s(void **state) {
    (void)state;
    pfdt t;
    if (pfdt_init(&t, "term") < 0) skip();
    assert_int_equal(pfdt_start(&t, 10000), 0);
    pfdt_consumer c;
    assert_int_equal(pfdt_consumer_open(&t, &c, 0, 1), 0);
    assert_int_equal(pfdt_consumer_hello(&c, 0, 6), 0);
    tb_batch b;
    assert_int_equal(pfdt_consumer_recv(&c, &b, 10000), 1); /* never acknowledged */
    tb_batch_free(&b);
    double t0 = tb_clock_mono_s();
    kill(t.pid, SIGTERM);
    int st;
    assert_int_equal(waitpid(t.pid, &st, 0), t.pid);
    t.pid = -1;
    double took = tb_clock_mono_s() - t0;
    printf("SIGTERM to exit with unacked batches: %.3f s\n", took);
    assert_true(took < 5.0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    pfdt_consumer_close(&c);
    pfdt_cleanup(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ready_status_watchdog_reload_stopping),
        cmocka_unit_test(test_sigterm_with_unacked_batches_exits_within_5s),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
