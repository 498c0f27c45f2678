/* The io_uring file source returns exactly the file's bytes for several chunk sizes and
 * queue depths, identical to the forced pread fallback (API switch and TB_FORCE_PREAD). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "pf_test_util.h"
#include "source.h"

static pf_buf read_all(const char *path, size_t chunk, unsigned depth, int force, size_t step,
                       int *uring) {
    tb_source_file_opts o = {chunk, depth, force};
    tb_err e;
    tb_source *s = tb_source_open_file(path, &o, &e);
    if (!s) fail_msg("%s", e.msg);
    *uring = tb_source_file_uses_uring(s);
    pf_buf b = {0};
    char *tmp = malloc(step);
    for (;;) {
        int64_t n = tb_source_read(s, tmp, step, &e);
        assert_true(n >= 0);
        if (n == 0) break;
        pf_buf_add(&b, tmp, (size_t)n);
    }
    free(tmp);
    tb_source_close(s);
    return b;
}

static void test_uring_and_pread_give_file_bytes(void **st) {
    (void)st;
    char dir[600], path[700];
    pf_tmpdir(dir, sizeof dir, "source");
    snprintf(path, sizeof path, "%s/data.bin", dir);
    size_t n = 3 * 1000 * 1000 + 17;
    uint8_t *d = malloc(n);
    for (size_t i = 0; i < n; i++) d[i] = (uint8_t)(i * 2654435761u >> 13);
    pf_write(path, d, n);
    const size_t chunks[] = {4096, 65536 + 3, 1 << 20};
    const unsigned depths[] = {1, 4, 7};
    const size_t steps[] = {1000, 1 << 20, 5 << 20};
    int saw_uring = 0;
    for (int ci = 0; ci < 3; ci++)
        for (int di = 0; di < 3; di++)
            for (int force = 0; force < 2; force++) {
                int uring;
                pf_buf b = read_all(path, chunks[ci], depths[di], force, steps[(ci + di) % 3],
                                    &uring);
                assert_int_equal(b.n, n);
                assert_memory_equal(b.p, d, n);
                if (force) assert_false(uring);
                saw_uring |= uring;
                free(b.p);
            }
    if (!saw_uring) fprintf(stderr, "note: io_uring unavailable here; only pread was tested\n");
    setenv("TB_FORCE_PREAD", "1", 1);
    int uring;
    pf_buf b = read_all(path, 0, 0, 0, 1 << 16, &uring);
    assert_false(uring);
    assert_int_equal(b.n, n);
    assert_memory_equal(b.p, d, n);
    unsetenv("TB_FORCE_PREAD");
    free(b.p);
    /* an empty file and a missing one */
    snprintf(path, sizeof path, "%s/empty", dir);
    pf_write(path, "", 0);
    b = read_all(path, 0, 0, 0, 100, &uring);
    assert_int_equal(b.n, 0);
    free(b.p);
    tb_err e = {{0}};
    snprintf(path, sizeof path, "%s/missing", dir);
    assert_null(tb_source_open_file(path, NULL, &e));
    assert_non_null(strstr(e.msg, "missing"));
    assert_null(tb_source_open("https://example.org/x", NULL, NULL, &e));
    assert_non_null(strstr(e.msg, "no opener"));
    assert_true(tb_source_is_local("file:///x"));
    assert_true(tb_source_is_local("/a/b://c"));
    assert_false(tb_source_is_local("http://h/x"));
    free(d);
    pf_rmtree(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_uring_and_pread_give_file_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
