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
#include <unistd.h>
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

/* Runs the tool; returns the losses of its CSV lines (step, loss) in steps[]/loss[]. */
static int run_csv(const char *args, const char *csv, int *steps, char loss[][32], int max) {
    char cmd[4096];
    unlink(csv);
    snprintf(cmd, sizeof cmd,
             "%s --preset tiny --data %s/fixture/fixture-00000.jsonl.gz --tokenizer "
             "%s/fixture/spm.model --seq-len 32 --batch 2 --accum 2 --lr-scale 10 --seed 5 "
             "--csv %s %s > %s.log 2>&1",
             tool, TB_BINARY_DIR, TB_BINARY_DIR, csv, args, csv);
    int rc = system(cmd);
    if (rc != 0) {
        snprintf(cmd, sizeof cmd, "cat %s.log", csv);
        if (system(cmd)) {}
        fail_msg("tb-train-local %s: status %d", args, rc);
    }
    FILE *f = fopen(csv, "r");
    assert_non_null(f);
    int n = 0;
    char line[512];
    while (n < max && fgets(line, sizeof line, f))
        if (sscanf(line, "%d,%31[^,]", &steps[n], loss[n]) == 2) n++;
    fclose(f);
    return n;
}

/* --interleave 3 with --parallel: saved mid-block (step 4 = block 2, step 1 of 3) and
 * resumed, the last 4 losses equal an uninterrupted run's bit for bit (as printed); and
 * the interleaved rows are not the consecutive ones. */
static void test_interleave_resume_is_exact(void **s) {
    (void)s;
    char dir[1024], a[1200], b[1200], c[1200], args[3000];
    snprintf(dir, sizeof dir, "%s/tl_interleave_%d", TB_BINARY_DIR, (int)getpid());
    snprintf(a, sizeof a, "%s.a.csv", dir);
    snprintf(b, sizeof b, "%s.b.csv", dir);
    snprintf(c, sizeof c, "%s.c.csv", dir);
    int sa[16], sb[16], sc[16];
    char la[16][32], lb[16][32], lc[16][32];
    int na = run_csv("--steps 8 --interleave 3 --parallel", a, sa, la, 16);
    assert_int_equal(na, 8);
    snprintf(args, sizeof args, "--steps 8 --interleave 3 --parallel --stop-after 4 --save %s", dir);
    assert_int_equal(run_csv(args, b, sb, lb, 16), 4);
    snprintf(args, sizeof args, "--steps 8 --interleave 3 --parallel --resume %s", dir);
    int nb = run_csv(args, b, sb, lb, 16);
    assert_int_equal(nb, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(sb[i], 5 + i);
        printf("step %d: uninterrupted %s, resumed %s\n", sb[i], la[4 + i], lb[i]);
        assert_string_equal(la[4 + i], lb[i]);
    }
    int nc = run_csv("--steps 2 --interleave 1 --parallel", c, sc, lc, 16);
    assert_int_equal(nc, 2);
    int nrun = run_csv("--steps 2 --interleave 3 --parallel", c, sc, lb, 16);
    assert_int_equal(nrun, 2);
    assert_string_not_equal(lc[0], lb[0]); /* different rows in step 1 */
    char cmd[2400];
    snprintf(cmd, sizeof cmd, "rm -rf %s %s.*", dir, dir);
    if (system(cmd)) {}
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s TB-TRAIN-LOCAL\n", argv[0]);
        return 2;
    }
    tool = argv[1];
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_loss_falls_over_30_steps_on_fixture),
        cmocka_unit_test(test_interleave_resume_is_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
