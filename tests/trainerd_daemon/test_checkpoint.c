/* Checkpoint directories: atomic save, verification, newest-valid scan skipping torn and
 * corrupt ones, retention (rolling K, best K, never zero) and disk full on a small tmpfs. */
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include "checkpoint.h"
#include "tb_log.h"

typedef struct blob_ctx {
    size_t size;
    unsigned char fill;
} blob_ctx;

static int write_blobs(const char *dir, void *arg, tb_err *err) {
    blob_ctx *c = arg;
    const char *names[] = {"a.bin", "b.bin"};
    for (int i = 0; i < 2; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s/%s", dir, names[i]);
        FILE *f = fopen(p, "wb");
        if (!f) return tb_err_set(err, "open %s: %s", p, strerror(errno));
        unsigned char *buf = malloc(c->size);
        memset(buf, c->fill + i, c->size);
        size_t w = fwrite(buf, 1, c->size, f);
        free(buf);
        int bad = w != c->size || fflush(f) != 0;
        int e = errno;
        if (fclose(f) || bad) return tb_err_set(err, "write %s: %s", p, strerror(e));
    }
    return 0;
}
static const char *const FILES[] = {"a.bin", "b.bin"};

static char root[256];

static int setup(void **state) {
    (void)state;
    snprintf(root, sizeof root, "/tmp/td_ckpt_test.%d", (int)getpid());
    td_rmtree(root);
    return 0;
}
static int teardown(void **state) {
    (void)state;
    td_rmtree(root);
    return 0;
}

static void save(int64_t step, unsigned tags, double metric, td_ckpt_info *out) {
    blob_ctx c = {1000, (unsigned char)step};
    tb_err err;
    int rc = td_ckpt_save(root, step, tags, metric, FILES, 2, write_blobs, &c, out, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(rc, 0);
}

static void test_save_then_newest_is_valid_and_verified(void **state) {
    (void)state;
    td_ckpt_info a, b, n;
    save(10, TD_CKPT_ROLLING, 2.0, &a);
    save(20, TD_CKPT_ROLLING, 1.5, &b);
    tb_err err;
    assert_int_equal(td_ckpt_newest(root, &n, &err), 1);
    assert_string_equal(n.name, b.name);
    assert_int_equal(n.step, 20);
    assert_true(n.valid);
    assert_true(fabs(n.metric - 1.5) < 1e-12);
    assert_int_equal(n.tags, TD_CKPT_ROLLING);
}

static void corrupt(const char *name, const char *file, int truncate_it) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s/%s", root, name, file);
    if (truncate_it) {
        assert_int_equal(truncate(p, 10), 0);
    } else {
        FILE *f = fopen(p, "r+b");
        assert_non_null(f);
        fseek(f, 100, SEEK_SET);
        fputc(0x77, f);
        fclose(f);
    }
}

static void test_torn_and_corrupt_checkpoints_are_skipped(void **state) {
    (void)state;
    td_ckpt_info a, b, c, n;
    save(10, TD_CKPT_ROLLING, NAN, &a);
    save(20, TD_CKPT_ROLLING, NAN, &b);
    save(30, TD_CKPT_ROLLING, NAN, &c);
    corrupt(c.name, "a.bin", 0);  /* bit rot: crc mismatch */
    corrupt(b.name, "b.bin", 1);  /* torn: short file */
    tb_err err;
    assert_int_equal(td_ckpt_newest(root, &n, &err), 1);
    assert_string_equal(n.name, a.name);
    /* A directory without a manifest (crash before the manifest) is not valid either. */
    char p[512];
    snprintf(p, sizeof p, "%s/%s/manifest.json", root, a.name);
    assert_int_equal(unlink(p), 0);
    assert_int_equal(td_ckpt_newest(root, &n, &err), 0);
}

static void test_leftover_tmp_directory_is_ignored_and_cleaned(void **state) {
    (void)state;
    td_ckpt_info a, n;
    save(10, TD_CKPT_ROLLING, NAN, &a);
    char p[512];
    snprintf(p, sizeof p, "%s/.tmp-ckpt-000000000020-000009", root);
    assert_int_equal(mkdir(p, 0750), 0);
    tb_err err;
    assert_int_equal(td_ckpt_newest(root, &n, &err), 1);
    assert_string_equal(n.name, a.name);
    assert_int_equal(td_ckpt_clean_tmp(root, &err), 1);
    struct stat st;
    assert_int_not_equal(stat(p, &st), 0);
}

static int count_valid(void) {
    td_ckpt_info *v;
    int n, k = 0;
    tb_err err;
    assert_int_equal(td_ckpt_scan(root, 0, &v, &n, &err), 0);
    for (int i = 0; i < n; i++) k += v[i].valid;
    free(v);
    return k;
}

static void test_retention_keeps_rolling_k_best_k_and_tagged(void **state) {
    (void)state;
    td_ckpt_info info[8];
    double metric[8] = {5, 1, 4, 3, 0.5, 6, 7, 8};
    for (int i = 0; i < 8; i++)
        save((i + 1) * 10, i == 2 ? TD_CKPT_EPOCH : TD_CKPT_ROLLING, metric[i], &info[i]);
    tb_err err;
    int rm = td_ckpt_retain(root, 2, 2, &err);
    /* kept: newest 2 (80, 70), best 2 (metric 0.5 -> 50, 1 -> 20), epoch (30). */
    assert_int_equal(rm, 3);
    assert_int_equal(count_valid(), 5);
    int keep_idx[] = {1, 2, 4, 6, 7};
    for (size_t k = 0; k < sizeof keep_idx / sizeof keep_idx[0]; k++) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/%s", root, info[keep_idx[k]].name);
        td_ckpt_info ci;
        assert_int_equal(td_ckpt_verify(dir, &ci, &err), 0);
    }
}

static void test_retention_counts_only_valid_and_never_leaves_zero(void **state) {
    (void)state;
    td_ckpt_info a, b, c;
    save(10, TD_CKPT_ROLLING, NAN, &a);
    save(20, TD_CKPT_ROLLING, NAN, &b);
    save(30, TD_CKPT_ROLLING, NAN, &c);
    corrupt(c.name, "a.bin", 0);
    corrupt(b.name, "a.bin", 0);
    tb_err err;
    /* keep 1 rolling: the newest VALID (10) stays although two newer corrupt ones exist. */
    assert_true(td_ckpt_retain(root, 1, 0, &err) >= 0);
    td_ckpt_info n;
    assert_int_equal(td_ckpt_newest(root, &n, &err), 1);
    assert_string_equal(n.name, a.name);
    /* keep 0 still keeps one. */
    assert_true(td_ckpt_retain(root, 0, 0, &err) >= 0);
    assert_int_equal(count_valid(), 1);
}

static void test_disk_full_during_save_leaves_previous_intact(void **state) {
    (void)state;
    if (geteuid() != 0 || unshare(CLONE_NEWNS) != 0 ||
        mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0) {
        skip(); /* needs root for a private tmpfs mount */
    }
    mkdir(root, 0750);
    if (mount("tmpfs", root, "tmpfs", 0, "size=64k") != 0) {
        fprintf(stderr, "cannot mount tmpfs on %s: %s\n", root, strerror(errno));
        skip();
    }
    td_ckpt_info a, n;
    blob_ctx small = {8000, 1};
    tb_err err;
    assert_int_equal(td_ckpt_save(root, 10, TD_CKPT_ROLLING, NAN, FILES, 2, write_blobs, &small,
                                  &a, &err), 0);
    blob_ctx big = {40000, 2}; /* 2 x 40 kB does not fit next to the first one in 64 kB */
    int rc = td_ckpt_save(root, 20, TD_CKPT_ROLLING, NAN, FILES, 2, write_blobs, &big, NULL, &err);
    assert_int_equal(rc, -1);
    fprintf(stderr, "expected error: %s\n", err.msg);
    assert_non_null(strstr(err.msg, "No space left on device"));
    assert_non_null(strstr(err.msg, "step 20"));
    assert_int_equal(td_ckpt_newest(root, &n, &err), 1);
    assert_string_equal(n.name, a.name);
    /* Nothing of the failed save is left behind. */
    td_ckpt_info *v;
    int cnt;
    assert_int_equal(td_ckpt_scan(root, 0, &v, &cnt, &err), 0);
    free(v);
    assert_int_equal(cnt, 1);
    assert_int_equal(td_ckpt_clean_tmp(root, &err), 0);
    umount(root);
}

int main(void) {
    tb_log_init("test_checkpoint", TB_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_save_then_newest_is_valid_and_verified, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_and_corrupt_checkpoints_are_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leftover_tmp_directory_is_ignored_and_cleaned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention_keeps_rolling_k_best_k_and_tagged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention_counts_only_valid_and_never_leaves_zero, setup, teardown),
        cmocka_unit_test_setup_teardown(test_disk_full_during_save_leaves_previous_intact, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
