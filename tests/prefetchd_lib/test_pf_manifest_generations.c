/* Manifest text parsing (errors name file:line), canonical format, and generations stored
 * atomically in a state dir and reloaded in order; an unchanged manifest makes no new
 * generation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "manifest.h"
#include "pf_test_util.h"

static const char *SHA = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

static void test_parse_and_format(void **st) {
    (void)st;
    char text[1024];
    snprintf(text, sizeof text,
             "# comment\n\n/data/a.jsonl.gz size=123 sha256=%s\nrel/b.jsonl.zst\n"
             "https://example.org/c.jsonl.gz size=9\n",
             SHA);
    tb_manifest m;
    tb_err e;
    assert_int_equal(tb_manifest_parse(&m, text, strlen(text), "m.txt", "/base", &e), 0);
    assert_int_equal(m.n, 3);
    assert_string_equal(m.shards[0].location, "/data/a.jsonl.gz");
    assert_int_equal(m.shards[0].size, 123);
    assert_true(m.shards[0].has_sha256);
    assert_int_equal(m.shards[0].sha256[0], 0x01);
    assert_int_equal(m.shards[0].sha256[31], 0xef);
    assert_string_equal(m.shards[1].location, "/base/rel/b.jsonl.zst");
    assert_int_equal(m.shards[1].size, -1);
    assert_false(m.shards[1].has_sha256);
    assert_string_equal(m.shards[2].location, "https://example.org/c.jsonl.gz");
    char *out;
    size_t len;
    assert_int_equal(tb_manifest_format(&out, &len, &m, &e), 0);
    tb_manifest m2;
    assert_int_equal(tb_manifest_parse(&m2, out, len, "fmt", NULL, &e), 0);
    assert_true(tb_manifest_equal(&m, &m2));
    free(out);
    tb_manifest_free(&m2);
    tb_manifest_free(&m);
}

static void test_parse_errors_name_line(void **st) {
    (void)st;
    const char *bad[] = {"a\nb size=x\n", "a\nb sha256=12\n", "a\n\nb colour=red\n",
                         "a\nb size=-1\n"};
    const char *want[] = {"m:2: size", "m:2: sha256", "m:3: unknown attribute", "m:2: size"};
    for (size_t i = 0; i < 4; i++) {
        tb_manifest m;
        tb_err e = {{0}};
        assert_int_equal(tb_manifest_parse(&m, bad[i], strlen(bad[i]), "m", NULL, &e), -1);
        assert_non_null(strstr(e.msg, want[i]));
        assert_int_equal(m.n, 0);
    }
}

static void test_generations_stored_and_reloaded(void **st) {
    (void)st;
    char dir[600], sdir[700];
    pf_tmpdir(dir, sizeof dir, "manifest");
    snprintf(sdir, sizeof sdir, "%s/state", dir);
    tb_manifest_history h;
    tb_err e;
    assert_int_equal(tb_manifest_history_load(&h, sdir, &e), 0);
    assert_int_equal(h.n, 0);
    tb_manifest a, b;
    assert_int_equal(tb_manifest_parse(&a, "/x/1\n/x/2\n", 10, "a", NULL, &e), 0);
    assert_int_equal(tb_manifest_parse(&b, "/x/1\n/x/3 size=5\n", 17, "b", NULL, &e), 0);
    uint64_t g;
    assert_int_equal(tb_manifest_history_commit(&h, sdir, &a, &g, &e), 0);
    assert_int_equal(g, 1);
    assert_int_equal(tb_manifest_history_commit(&h, sdir, &a, &g, &e), 0);
    assert_int_equal(g, 1); /* unchanged: no new generation */
    assert_int_equal(tb_manifest_history_commit(&h, sdir, &b, &g, &e), 0);
    assert_int_equal(g, 2);
    char p[800];
    struct stat sb;
    snprintf(p, sizeof p, "%s/gen-1.manifest", sdir);
    assert_int_equal(stat(p, &sb), 0);
    snprintf(p, sizeof p, "%s/gen-2.manifest", sdir);
    assert_int_equal(stat(p, &sb), 0);
    snprintf(p, sizeof p, "%s/gen-3.manifest", sdir);
    assert_int_not_equal(stat(p, &sb), 0);
    tb_manifest_history h2;
    assert_int_equal(tb_manifest_history_load(&h2, sdir, &e), 0);
    assert_int_equal(h2.n, 2);
    assert_int_equal(h2.gens[0].generation, 1);
    assert_true(tb_manifest_equal(&h2.gens[0], &a));
    assert_true(tb_manifest_equal(tb_manifest_history_latest(&h2), &b));
    assert_non_null(tb_manifest_history_get(&h2, 2));
    assert_null(tb_manifest_history_get(&h2, 7));
    /* no temporary files left behind */
    snprintf(p, sizeof p, "ls %s | grep -c tmp > /dev/null", sdir);
    assert_int_not_equal(system(p), 0);
    tb_manifest_history_free(&h2);
    tb_manifest_history_free(&h);
    tb_manifest_free(&a);
    tb_manifest_free(&b);
    pf_rmtree(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_and_format),
        cmocka_unit_test(test_parse_errors_name_line),
        cmocka_unit_test(test_generations_stored_and_reloaded),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
