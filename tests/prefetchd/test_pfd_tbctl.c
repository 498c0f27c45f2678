/* tbctl against a running tb-prefetchd: status (text and --json), pause/resume,
 * shards list/add/remove, reload --wait, tail (pretty and --json, one record a
 * metrics interval), verbs it does not know are passed through (the daemon's refusal
 * comes back as exit 1), and no daemon gives exit 2 with a timeout message. */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "pfd_harness.h"

static pfdt T;

static int tbctl(char *out, size_t cap, const char *fmt, ...) {
    char args[1024], cmd[1400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof cmd, "cd '%s' && %s/tbctl/tbctl --timeout 3000 %s 2>&1", T.dir,
             TB_BINARY_DIR, args);
    FILE *p = popen(cmd, "r");
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_tbctl_verbs_tail_and_errors(void **state) {
    (void)state;
    if (pfdt_init(&T, "tbctl") < 0) skip();
    char b2[400];
    snprintf(b2, sizeof b2, "%s/b.jsonl", T.dir);
    assert_int_equal(pfdt_write_jsonl_shard(b2, 50, 3), 0);
    assert_int_equal(pfdt_start(&T, 10000), 0);
    static char out[65536];
    assert_int_equal(tbctl(out, sizeof out, "--endpoint %s status", T.ctl), 0);
    assert_non_null(strstr(out, "state"));
    assert_non_null(strstr(out, "ring_slots"));
    assert_int_equal(tbctl(out, sizeof out, "--json --endpoint %s status", T.ctl), 0);
    json_error_t je;
    json_t *j = json_loads(out, 0, &je);
    assert_non_null(j);
    assert_true(json_is_true(json_object_get(j, "ok")));
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "result"), "pid")), T.pid);
    json_decref(j);

    assert_int_equal(tbctl(out, sizeof out, "--endpoint %s pause", T.ctl), 0);
    assert_int_equal(pfdt_status_int(&T, "paused"), 1);
    assert_int_equal(tbctl(out, sizeof out, "--endpoint %s resume", T.ctl), 0);
    assert_int_equal(pfdt_status_int(&T, "paused"), 0);

    assert_int_equal(tbctl(out, sizeof out, "--endpoint %s shards add b.jsonl", T.ctl), 0);
    assert_non_null(strstr(out, "generation"));
    assert_int_equal(tbctl(out, sizeof out, "--endpoint %s shards list", T.ctl), 0);
    assert_non_null(strstr(out, b2)); /* a relative path is made absolute by tbctl */
    assert_int_equal(tbctl(out, sizeof out, "--endpoint %s shards remove %s", T.ctl, b2), 0);
    assert_int_equal(tbctl(out, sizeof out, "--endpoint %s shards remove %s", T.ctl, b2), 1);
    assert_non_null(strstr(out, "is not in generation"));
    assert_int_equal(tbctl(out, sizeof out, "--endpoint %s reload --wait", T.ctl), 0);
    assert_non_null(strstr(out, "changed"));

    /* pass-through: a trainerd verb reaches the daemon, which refuses it */
    assert_int_equal(tbctl(out, sizeof out, "--endpoint %s set-lr-scale 0.5", T.ctl), 1);
    assert_non_null(strstr(out, "unknown verb 'set-lr-scale'"));

    assert_int_equal(tbctl(out, sizeof out, "--endpoint %s tail --json --count 2", T.pub), 0);
    int lines = 0;
    for (char *l = strtok(out, "\n"); l; l = strtok(NULL, "\n")) {
        json_t *r = json_loads(l, 0, &je);
        assert_non_null(r);
        assert_string_equal(json_string_value(json_object_get(r, "topic")), "prefetchd.stats");
        assert_non_null(json_object_get(json_object_get(r, "fields"), "tokens_per_s"));
        assert_non_null(json_object_get(json_object_get(r, "fields"), "state"));
        json_decref(r);
        lines++;
    }
    assert_int_equal(lines, 2);
    assert_int_equal(tbctl(out, sizeof out, "--endpoint %s tail --count 1 --topic prefetchd.", T.pub), 0);
    assert_non_null(strstr(out, "prefetchd.stats #"));
    assert_non_null(strstr(out, " state="));

    assert_int_equal(tbctl(out, sizeof out, "shards frobnicate"), 64);
    assert_int_equal(pfdt_stop(&T), 0);
    assert_int_equal(tbctl(out, sizeof out, "--endpoint %s status", T.ctl), 2);
    assert_non_null(strstr(out, "no reply"));
    pfdt_cleanup(&T);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tbctl_verbs_tail_and_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
