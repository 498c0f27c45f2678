/* Seq family on CUDA vs the CPU backend: the retention core (causal and bidirectional),
 * forward and backward (accumulating onto random gradients), over shapes with odd sizes,
 * one head and several, head sizes below, at and above a warp (32). Skips (exit 77)
 * without a device. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include "cuda_test_util.h"

static void check_dev(const char *name, const float *d, const float *c, size_t n, const char *shape) {
    float *g = ct_hmalloc(n * 4);
    ct_down(g, d, n * 4);
    double e = ct_rel_err(g, c, n);
    ct_record(name, e);
    if (!(e <= CT_TOL)) print_message("%s %s: rel err %.3e\n", name, shape, e);
    assert_true(e <= CT_TOL);
    free(g);
}

static void test_retention_fwd_bwd_match_cpu_causal_and_bidirectional(void **state) {
    (void)state;
    /* T < 16 or hs > 128: the row kernel; the rest the tiled one (head sizes 32 / 64 / 128) */
    static const int shapes[][4] = {{1, 1, 1, 1},   {2, 5, 3, 7},    {1, 33, 2, 64},  {2, 130, 4, 32},
                                    {1, 70, 1, 200}, {3, 17, 5, 33}, {2, 200, 2, 128}, {1, 97, 3, 100}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int bidir = 0; bidir < 2; bidir++) {
            int B = shapes[s][0], T = shapes[s][1], H = shapes[s][2], hs = shapes[s][3];
            size_t n = (size_t)B * T * H * hs, by = n * 4;
            char shape[96];
            snprintf(shape, sizeof shape, "B=%d T=%d H=%d hs=%d bidir=%d", B, T, H, hs, bidir);
            float *q = ct_hmalloc(by), *k = ct_hmalloc(by), *v = ct_hmalloc(by), *dy = ct_hmalloc(by),
                  *dq = ct_hmalloc(by), *dk = ct_hmalloc(by), *dv = ct_hmalloc(by), *y = ct_hmalloc(by);
            ct_fill(q, n, -1, 1), ct_fill(k, n, -1, 1), ct_fill(v, n, -1, 1), ct_fill(dy, n, -1, 1);
            ct_fill(dq, n, -1, 1), ct_fill(dk, n, -1, 1), ct_fill(dv, n, -1, 1);
            float *gq = ct_up(q, by), *gk = ct_up(k, by), *gv = ct_up(v, by), *gdy = ct_up(dy, by),
                  *gdq = ct_up(dq, by), *gdk = ct_up(dk, by), *gdv = ct_up(dv, by), *gy = ct_poisoned(by);
            ct_gpu->seq.retention_forward(gy, gq, gk, gv, B, T, H, hs, bidir, ct_gpu);
            ct_cpu->seq.retention_forward(y, q, k, v, B, T, H, hs, bidir, ct_cpu);
            check_dev("seq.retention_forward y", gy, y, n, shape);
            ct_gpu->seq.retention_backward(gdq, gdk, gdv, gdy, gq, gk, gv, B, T, H, hs, bidir, ct_gpu);
            ct_cpu->seq.retention_backward(dq, dk, dv, dy, q, k, v, B, T, H, hs, bidir, ct_cpu);
            check_dev("seq.retention_backward dq", gdq, dq, n, shape);
            check_dev("seq.retention_backward dk", gdk, dk, n, shape);
            check_dev("seq.retention_backward dv", gdv, dv, n, shape);
            tb_cuda_free(gq), tb_cuda_free(gk), tb_cuda_free(gv), tb_cuda_free(gdy);
            tb_cuda_free(gdq), tb_cuda_free(gdk), tb_cuda_free(gdv), tb_cuda_free(gy);
            free(q), free(k), free(v), free(dy), free(dq), free(dk), free(dv), free(y);
        }
}

int main(void) {
    ct_init_or_skip();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retention_fwd_bwd_match_cpu_causal_and_bidirectional),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    ct_summary();
    return rc;
}
