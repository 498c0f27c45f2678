/* Malformed shards end to end through the daemon: a missing file, a sha256 mismatch, a
 * truncated gzip stream, a line that is not JSON, a line without the text field and a
 * line with invalid UTF-8 are each logged (shard and line), counted by kind in `status`
 * and the metrics, and skipped; the daemon goes on and every batch (the good shards'
 * samples) equals the plan. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "pfd_harness.h"

static void test_each_bad_kind_logged_counted_skipped_good_samples_unaffected(void **state) {
    (void)state;
    pfdt t;
    if (pfdt_init(&t, "bad") < 0) skip();
    char p[8][400], cmd[1200], man[4000];
    snprintf(p[0], sizeof p[0], "%s/a.jsonl.gz", t.dir);           /* good */
    snprintf(p[1], sizeof p[1], "%s/missing.jsonl.gz", t.dir);     /* open */
    snprintf(p[2], sizeof p[2], "%s/badsha.jsonl", t.dir);         /* checksum */
    snprintf(p[3], sizeof p[3], "%s/truncated.jsonl.gz", t.dir);   /* corrupt */
    snprintf(p[4], sizeof p[4], "%s/mixed.jsonl", t.dir);          /* not_json, field, utf8 */
    snprintf(p[5], sizeof p[5], "%s/good2.jsonl", t.dir);          /* good */
    assert_int_equal(pfdt_write_jsonl_shard(p[2], 20, 11), 0);
    assert_int_equal(pfdt_write_jsonl_shard(p[5], 80, 12), 0);
    snprintf(cmd, sizeof cmd, "head -c 30000 '%s' > '%s'", p[0], p[3]);
    assert_int_equal(system(cmd), 0);
    FILE *f = fopen(p[4], "w");
    fputs("{\"text\": \"una línea buena con bastantes palabras para pasar el filtro\"}\n"
          "this line is not json at all\n"
          "{\"other\": \"sin el campo de texto que se espera en este fichero\"}\n"
          "{\"text\": \"bytes \xff\xfe that are not UTF-8 at all, y algo más de texto\"}\n"
          "{\"text\": \"otra línea buena, también con suficientes caracteres\"}\n",
          f);
    fclose(f);
    snprintf(man, sizeof man,
             "%s\n%s\n%s sha256=0000000000000000000000000000000000000000000000000000000000000000\n"
             "%s\n%s\n%s\n",
             p[0], p[1], p[2], p[3], p[4], p[5]);
    assert_int_equal(pfdt_write_manifest(&t, man), 0);
    assert_int_equal(pfdt_start(&t, 10000), 0);
    pfdt_plan p0;
    assert_int_equal(pfdt_plan_open(&t, &p0), 0);
    pfdt_consumer c;
    assert_int_equal(pfdt_consumer_open(&t, &c, 0, 1), 0);
    assert_int_equal(pfdt_consumer_hello(&c, 0, 4), 0);
    static const char *kinds[] = {"bad.open", "bad.checksum", "bad.corrupt", "bad.not_json",
                                  "bad.missing_field", "bad.bad_utf8"};
    int all = 0, dups = 0;
    for (int round = 0; round < 40 && !all; round++) {
        assert_int_equal(pfdt_consume(&c, &p0, 20, 10000, &dups), 20);
        usleep(300000); /* stats are published after each batch; let them land */
        all = 1;
        for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
            if (pfdt_status_int(&t, kinds[k]) < 1) all = 0;
    }
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        int64_t v = pfdt_status_int(&t, kinds[k]);
        printf("%s = %lld\n", kinds[k], (long long)v);
        assert_true(v >= 1);
    }
    assert_int_equal(dups, 0);
    /* each logged with the shard and (for documents) the line */
    assert_true(pfdt_log_has(&t, "missing.jsonl.gz"));
    assert_true(pfdt_log_has(&t, "badsha.jsonl"));
    assert_true(pfdt_log_has(&t, "truncated.jsonl.gz"));
    assert_true(pfdt_log_has(&t, "mixed.jsonl' line 2"));
    assert_true(pfdt_log_has(&t, "mixed.jsonl' line 3"));
    assert_true(pfdt_log_has(&t, "mixed.jsonl' line 4"));
    pfdt_consumer_close(&c);
    pfdt_plan_close(&p0);
    assert_int_equal(pfdt_stop(&t), 0);
    pfdt_cleanup(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_bad_kind_logged_counted_skipped_good_samples_unaffected),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
