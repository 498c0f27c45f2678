/* tb_log: macros below the threshold evaluate nothing, journald mode (JOURNAL_STREAM
 * naming stderr's dev:inode) writes "<N>" priority prefixes on every line, and otherwise
 * lines carry a UTC timestamp, ident, pid and level. Each test points stderr at a file. */
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include "tb_log.h"

static char path[64];
static int saved_stderr = -1;

/* stderr -> a fresh temp file. */
static int setup(void **state) {
    (void)state;
    snprintf(path, sizeof path, "/tmp/tblogXXXXXX");
    int fd = mkstemp(path);
    if (fd < 0) return -1;
    fflush(stderr);
    saved_stderr = dup(STDERR_FILENO);
    if (saved_stderr < 0 || dup2(fd, STDERR_FILENO) < 0) return -1;
    close(fd);
    unsetenv("JOURNAL_STREAM");
    return 0;
}

static int teardown(void **state) {
    (void)state;
    fflush(stderr);
    dup2(saved_stderr, STDERR_FILENO);
    close(saved_stderr);
    unsetenv("JOURNAL_STREAM");
    return unlink(path);
}

static void read_log(char *buf, size_t len) {
    fflush(stderr);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(buf, 1, len - 1, f);
    buf[n] = '\0';
    fclose(f);
}

static void set_journal_stream_to_stderr(void) {
    struct stat st;
    assert_int_equal(fstat(STDERR_FILENO, &st), 0);
    char js[64];
    snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino);
    setenv("JOURNAL_STREAM", js, 1);
}

static int calls;
static int side_effect(void) { return ++calls; }

static void below_threshold_macros_do_not_evaluate_arguments(void **state) {
    (void)state;
    tb_log_init("t", TB_LOG_WARN);
    calls = 0;
    tb_debug("%d", side_effect());
    tb_info("%d", side_effect());
    tb_notice("%d", side_effect());
    assert_int_equal(calls, 0);
    char buf[256];
    read_log(buf, sizeof buf);
    assert_string_equal(buf, "");
    tb_warn("w%d", side_effect());
    tb_error("e%d", side_effect());
    assert_int_equal(calls, 2);
    read_log(buf, sizeof buf);
    assert_non_null(strstr(buf, "warn: w1\n"));
    assert_non_null(strstr(buf, "error: e2\n"));
    tb_log_init("t", TB_LOG_DEBUG);
    tb_debug("%d", side_effect());
    assert_int_equal(calls, 3);
}

static void journal_stream_matching_stderr_gives_priority_prefixes(void **state) {
    (void)state;
    set_journal_stream_to_stderr();
    tb_log_init("t", TB_LOG_DEBUG);
    assert_int_equal(tb_log_is_journal(), 1);
    tb_error("boom %d", 7);
    tb_warn("careful");
    tb_info("hello");
    tb_debug("detail");
    char buf[256];
    read_log(buf, sizeof buf);
    assert_string_equal(buf, "<3>boom 7\n<4>careful\n<6>hello\n<7>detail\n");
}

static void journal_mode_prefixes_every_line_of_a_message(void **state) {
    (void)state;
    set_journal_stream_to_stderr();
    tb_log_init("t", TB_LOG_INFO);
    tb_error("first\nsecond\nthird");
    char buf[256];
    read_log(buf, sizeof buf);
    assert_string_equal(buf, "<3>first\n<3>second\n<3>third\n");
}

static void journal_stream_of_another_file_gives_timestamps(void **state) {
    (void)state;
    struct stat st;
    assert_int_equal(fstat(STDERR_FILENO, &st), 0);
    char js[64];
    snprintf(js, sizeof js, "%llu:%llu", (unsigned long long)st.st_dev,
             (unsigned long long)st.st_ino + 1);
    setenv("JOURNAL_STREAM", js, 1);
    tb_log_init("t", TB_LOG_INFO);
    assert_int_equal(tb_log_is_journal(), 0);
    setenv("JOURNAL_STREAM", "garbage", 1);
    tb_log_init("t", TB_LOG_INFO);
    assert_int_equal(tb_log_is_journal(), 0);
}

static void plain_lines_carry_utc_timestamp_ident_pid_and_level(void **state) {
    (void)state;
    tb_log_init("tb-test", TB_LOG_INFO);
    assert_int_equal(tb_log_is_journal(), 0);
    tb_error("boom %d", 7);
    tb_info("hello");
    char buf[512], want[256];
    read_log(buf, sizeof buf);
    snprintf(want, sizeof want,
             "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
             "tb-test\\[%d\\] error: boom 7\n"
             "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\\.[0-9]{3}Z "
             "tb-test\\[%d\\] info: hello\n$",
             (int)getpid(), (int)getpid());
    regex_t re;
    assert_int_equal(regcomp(&re, want, REG_EXTENDED), 0);
    int m = regexec(&re, buf, 0, NULL, 0);
    regfree(&re);
    if (m != 0) fail_msg("log \"%s\" does not match %s", buf, want);
}

static void overlong_message_is_truncated_to_one_line(void **state) {
    (void)state;
    tb_log_init("t", TB_LOG_INFO);
    char big[10000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    tb_info("%s", big);
    tb_info("next");
    char buf[16384];
    read_log(buf, sizeof buf);
    char *nl = strchr(buf, '\n');
    assert_non_null(nl);
    assert_true(nl - buf < 4096);
    assert_int_equal(nl[-1], 'x');
    assert_non_null(strstr(nl + 1, "info: next\n"));
}

static void level_names_parse(void **state) {
    (void)state;
    tb_log_level l;
    assert_int_equal(tb_log_level_parse("error", &l), 0);
    assert_int_equal(l, TB_LOG_ERROR);
    assert_int_equal(tb_log_level_parse("warning", &l), 0);
    assert_int_equal(l, TB_LOG_WARN);
    assert_int_equal(tb_log_level_parse("debug", &l), 0);
    assert_int_equal(l, TB_LOG_DEBUG);
    assert_int_equal(tb_log_level_parse("verbose", &l), -1);
    assert_int_equal(tb_log_level_parse("", &l), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(below_threshold_macros_do_not_evaluate_arguments, setup, teardown),
        cmocka_unit_test_setup_teardown(journal_stream_matching_stderr_gives_priority_prefixes, setup, teardown),
        cmocka_unit_test_setup_teardown(journal_mode_prefixes_every_line_of_a_message, setup, teardown),
        cmocka_unit_test_setup_teardown(journal_stream_of_another_file_gives_timestamps, setup, teardown),
        cmocka_unit_test_setup_teardown(plain_lines_carry_utc_timestamp_ident_pid_and_level, setup, teardown),
        cmocka_unit_test_setup_teardown(overlong_message_is_truncated_to_one_line, setup, teardown),
        cmocka_unit_test(level_names_parse),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
