/* `tbctl plot CSV -o OUT.png` on a tb-trainerd CSV (written by the daemon's own writer)
 * produces a non-empty PNG; skipped with a message when gnuplot is not installed. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include "checkpoint.h"
#include "records.h"

#define TBCTL_BIN TB_BINARY_DIR "/tbctl/tbctl"

static void test_tbctl_plot_writes_nonempty_png(void **state) {
    (void)state;
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        printf("skipped: gnuplot is not installed (Debian package gnuplot-nox)\n");
        skip();
    }
    char dir[128], csv[256], png[256], cmd[1024];
    snprintf(dir, sizeof dir, "/tmp/tdplot.%d", (int)getpid());
    td_rmtree(dir);
    mkdir(dir, 0750);
    snprintf(csv, sizeof csv, "%s/trainerd.csv", dir);
    snprintf(png, sizeof png, "%s/loss.png", dir);
    tb_err err;
    FILE *f = td_csv_open(csv, &err);
    assert_non_null(f);
    for (int s = 1; s <= 40; s++) {
        td_record r;
        memset(&r, 0, sizeof r);
        r.timestamp = 1.7e9 + s;
        r.step = r.global_step = s;
        r.loss = 9.0 * exp(-s / 20.0);
        r.accuracy = 0.5 * (1 - exp(-s / 10.0));
        r.learning_rate = 1e-3 * (s < 10 ? s / 10.0 : 1.0);
        r.tokens_per_s = 1000 + 10 * s;
        r.val_loss = s % 10 ? NAN : r.loss * 1.1;
        r.val_accuracy = s % 10 ? NAN : r.accuracy * 0.9;
        assert_int_equal(td_csv_write(f, &r, &err), 0);
    }
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s plot %s -o %s", TBCTL_BIN, csv, png);
    assert_int_equal(system(cmd), 0);
    FILE *p = fopen(png, "rb");
    assert_non_null(p);
    unsigned char sig[8];
    assert_int_equal(fread(sig, 1, 8, p), 8);
    fseek(p, 0, SEEK_END);
    long size = ftell(p);
    fclose(p);
    assert_memory_equal(sig, "\x89PNG\r\n\x1a\n", 8);
    assert_true(size > 1000);
    /* not a trainerd CSV: an error naming the missing column */
    snprintf(cmd, sizeof cmd, "printf 'a,b\\n1,2\\n' > %s/x.csv; %s plot %s/x.csv -o %s/x.png 2>%s/err",
             dir, TBCTL_BIN, dir, dir, dir);
    assert_true(system(cmd) != 0);
    snprintf(cmd, sizeof cmd, "grep -q 'no column global_step' %s/err", dir);
    assert_int_equal(system(cmd), 0);
    td_rmtree(dir);
}

int main(void) {
    const struct CMUnitTest t[] = {cmocka_unit_test(test_tbctl_plot_writes_nonempty_png)};
    return cmocka_run_group_tests(t, NULL, NULL);
}
