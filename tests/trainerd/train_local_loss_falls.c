/* tb-train-local end to end on the corpus fixture (prefetchd's stream: shards,
 * SentencePiece, packing, MLM masking): the tiny preset at T = 64, B = 4 for 30 steps
 * prints a progress line per step and its masked-LM loss falls: the mean of the last 5
 * steps is at least 0.3 below the mean of the first 5. argv[1]: the tool. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

static const char *tool;

static void test_tiny_loss_falls_over_30_steps_on_fixture(void **s) {
    (void)s;
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "%s --preset tiny --data %s/fixture/fixture-00000.jsonl.gz --tokenizer "
             "%s/fixture/spm.model --steps 30 --seq-len 64 --batch 4 --lr-scale 10 --seed 5 2>&1",
             tool, TB_BINARY_DIR, TB_BINARY_DIR);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[1024];
    double loss[64];
    int n = 0;
    while (fgets(line, sizeof line, p)) {
        fputs(line, stdout);
        int step, total;
        double l;
        if (sscanf(line, "step %d/%d loss %lf", &step, &total, &l) == 3 && n < 64) {
            assert_int_equal(step, n + 1);
            assert_true(strstr(line, " acc ") && strstr(line, " lr ") && strstr(line, " tok/s ") &&
                        strstr(line, " eta "));
            loss[n++] = l;
        }
    }
    int rc = pclose(p);
    assert_int_equal(rc, 0);
    assert_int_equal(n, 30);
    double first = 0, last = 0;
    for (int i = 0; i < 5; i++) {
        first += loss[i] / 5;
        last += loss[n - 5 + i] / 5;
    }
    printf("mean loss: first 5 steps %.4f, last 5 steps %.4f\n", first, last);
    assert_true(last < first - 0.3);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s TB-TRAIN-LOCAL\n", argv[0]);
        return 2;
    }
    tool = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_loss_falls_over_30_steps_on_fixture),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
