/* tb_notify against a fake NOTIFY_SOCKET (notify_harness.c): each call sends the datagram
 * systemd expects, RELOADING=1 carries MONOTONIC_USEC, STATUS= stays one line, and with no
 * NOTIFY_SOCKET every call does nothing and returns 0. tb_notify_watchdog_usec honours
 * WATCHDOG_USEC and WATCHDOG_PID. */
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include "notify_harness.h"
#include "tb_clock.h"
#include "tb_notify.h"

static char dir[64];
static tb_notify_harness harness;

static int setup(void **state) {
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/tbntXXXXXX");
    if (!mkdtemp(dir)) return -1;
    return tb_notify_harness_open(&harness, dir);
}

static int teardown(void **state) {
    (void)state;
    tb_notify_harness_close(&harness);
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    return rmdir(dir);
}

static void expect_datagram(const char *want) {
    char buf[1024];
    int n = tb_notify_harness_recv(&harness, 2000, buf, sizeof buf);
    assert_true(n > 0);
    assert_string_equal(buf, want);
}

static void harness_sets_notify_socket_to_its_path(void **state) {
    (void)state;
    const char *e = getenv("NOTIFY_SOCKET");
    assert_non_null(e);
    assert_string_equal(e, harness.path);
    char buf[64];
    assert_int_equal(tb_notify_harness_recv(&harness, 10, buf, sizeof buf), 0); /* timeout */
}

static void ready_watchdog_stopping_send_their_states(void **state) {
    (void)state;
    assert_int_equal(tb_notify_ready(), 0);
    expect_datagram("READY=1");
    assert_int_equal(tb_notify_watchdog(), 0);
    expect_datagram("WATCHDOG=1");
    assert_int_equal(tb_notify_stopping(), 0);
    expect_datagram("STOPPING=1");
}

static void status_is_formatted_and_kept_on_one_line(void **state) {
    (void)state;
    assert_int_equal(tb_notify_status("step %d loss %.2f", 12, 3.5), 0);
    expect_datagram("STATUS=step 12 loss 3.50");
    /* A newline must not smuggle in another variable. */
    assert_int_equal(tb_notify_status("bad shard %s", "x\nREADY=1"), 0);
    expect_datagram("STATUS=bad shard x READY=1");
    char big[2000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(tb_notify_status("%s", big), 0);
    char buf[4096];
    int n = tb_notify_harness_recv(&harness, 2000, buf, sizeof buf);
    assert_true(n > 7 && n < 600); /* truncated, still sent */
    assert_memory_equal(buf, "STATUS=aaa", 10);
}

static void reloading_carries_monotonic_usec(void **state) {
    (void)state;
    uint64_t before = tb_clock_mono_us();
    assert_int_equal(tb_notify_reloading(), 0);
    uint64_t after = tb_clock_mono_us();
    char buf[256];
    assert_true(tb_notify_harness_recv(&harness, 2000, buf, sizeof buf) > 0);
    const char *prefix = "RELOADING=1\nMONOTONIC_USEC=";
    assert_memory_equal(buf, prefix, strlen(prefix));
    char *end;
    unsigned long long us = strtoull(buf + strlen(prefix), &end, 10);
    assert_true(*end == '\0' || *end == '\n');
    assert_true(us >= before && us <= after);
}

static void wait_for_skips_other_datagrams(void **state) {
    (void)state;
    assert_int_equal(tb_notify_status("starting"), 0);
    assert_int_equal(tb_notify_watchdog(), 0);
    assert_int_equal(tb_notify_ready(), 0);
    char buf[256];
    assert_int_equal(tb_notify_harness_wait_for(&harness, "READY=1", 2000, buf, sizeof buf), 1);
    assert_string_equal(buf, "READY=1");
    assert_int_equal(tb_notify_harness_wait_for(&harness, "STOPPING=1", 50, buf, sizeof buf), 0);
    /* Lines, not substrings: MONOTONIC_USEC=... does not match "RELOADING". */
    assert_int_equal(tb_notify_reloading(), 0);
    assert_int_equal(tb_notify_harness_wait_for(&harness, "MONOTONIC_USEC", 50, buf, sizeof buf), 0);
}

static void without_notify_socket_every_call_is_a_noop(void **state) {
    (void)state;
    unsetenv("NOTIFY_SOCKET");
    setenv("WATCHDOG_USEC", "1000000", 1);
    char pid[32];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(tb_notify_ready(), 0);
    assert_int_equal(tb_notify_status("x %d", 1), 0);
    assert_int_equal(tb_notify_watchdog(), 0);
    assert_int_equal(tb_notify_reloading(), 0);
    assert_int_equal(tb_notify_stopping(), 0);
    assert_int_equal(tb_notify_watchdog_usec(), 0);
    char buf[256];
    assert_int_equal(tb_notify_harness_recv(&harness, 50, buf, sizeof buf), 0);
    setenv("NOTIFY_SOCKET", harness.path, 1);
}

static void send_to_a_missing_socket_returns_an_error(void **state) {
    (void)state;
    char gone[128];
    snprintf(gone, sizeof gone, "%s/missing.sock", dir);
    setenv("NOTIFY_SOCKET", gone, 1);
    assert_true(tb_notify_ready() < 0);
    setenv("NOTIFY_SOCKET", harness.path, 1);
}

static void watchdog_usec_honours_watchdog_pid(void **state) {
    (void)state;
    char pid[32];
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    assert_int_equal(tb_notify_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "5000000", 1);
    assert_int_equal(tb_notify_watchdog_usec(), 5000000); /* no WATCHDOG_PID: ours */
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(tb_notify_watchdog_usec(), 5000000);
    snprintf(pid, sizeof pid, "%d", (int)getpid() + 1);
    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(tb_notify_watchdog_usec(), 0); /* meant for another process */
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    setenv("WATCHDOG_PID", pid, 1);
    setenv("WATCHDOG_USEC", "abc", 1);
    assert_int_equal(tb_notify_watchdog_usec(), 0);
    setenv("WATCHDOG_USEC", "0", 1);
    assert_int_equal(tb_notify_watchdog_usec(), 0);
    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(harness_sets_notify_socket_to_its_path),
        cmocka_unit_test(ready_watchdog_stopping_send_their_states),
        cmocka_unit_test(status_is_formatted_and_kept_on_one_line),
        cmocka_unit_test(reloading_carries_monotonic_usec),
        cmocka_unit_test(wait_for_skips_other_datagrams),
        cmocka_unit_test(without_notify_socket_every_call_is_a_noop),
        cmocka_unit_test(send_to_a_missing_socket_returns_an_error),
        cmocka_unit_test(watchdog_usec_honours_watchdog_pid),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
