/* Seq family on CUDA vs the CPU backend: the retention core (causal and bidirectional),
 * forward and backward (accumulating onto random gradients), over shapes with odd sizes,
 * one head and several, head sizes below, at and above a warp (32); in fp32 (1e-5) and in
 * the bf16 mode with the tensor-core decay tiles (2e-2). Skips (exit 77) without a device. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include "cuda_test_util.h"

/* init: NULL, or the values an accumulating op started from (the error is then taken
 * over what the op added). */
static void check_dev_tol(const char *name, const float *d, const float *c, const float *init, size_t n,
                          const char *shape, double tol) {
    float *g = ct_hmalloc(n * 4);
    ct_down(g, d, n * 4);
    double e;
    if (!init) e = ct_rel_err(g, c, n);
    else {
        double dmax = 0, ymax = 0;
        for (size_t i = 0; i < n; i++) {
            double x = (double)g[i] - init[i], y = (double)c[i] - init[i];
            if (!(fabs(x - y) <= dmax)) dmax = fabs(x - y);
            if (fabs(y) > ymax) ymax = fabs(y);
        }
        e = dmax / (ymax > 1e-30 ? ymax : 1e-30);
    }
    ct_record(name, e);
    if (!(e <= tol)) print_message("%s %s: rel err %.3e\n", name, shape, e);
    assert_true(e <= tol);
    free(g);
}

/* tc: the bf16 mode with the tensor-core decay tiles (tb_cuda_tensor_core_tiles): bound
 * 2e-2, gradients over what the backward added. */
static void retention_cases(int tc) {
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
            double tol = tc ? CT_TOL_BF16 : CT_TOL;
            check_dev_tol(tc ? "seq.retention_forward bf16 tc y" : "seq.retention_forward y", gy, y, NULL, n, shape,
                          tol);
            float *i0 = ct_hmalloc(by), *i1 = ct_hmalloc(by), *i2 = ct_hmalloc(by);
            memcpy(i0, dq, by), memcpy(i1, dk, by), memcpy(i2, dv, by);
            ct_gpu->seq.retention_backward(gdq, gdk, gdv, gdy, gq, gk, gv, B, T, H, hs, bidir, ct_gpu);
            ct_cpu->seq.retention_backward(dq, dk, dv, dy, q, k, v, B, T, H, hs, bidir, ct_cpu);
            check_dev_tol(tc ? "seq.retention_backward bf16 tc dq" : "seq.retention_backward dq", gdq, dq,
                          tc ? i0 : NULL, n, shape, tol);
            check_dev_tol(tc ? "seq.retention_backward bf16 tc dk" : "seq.retention_backward dk", gdk, dk,
                          tc ? i1 : NULL, n, shape, tol);
            check_dev_tol(tc ? "seq.retention_backward bf16 tc dv" : "seq.retention_backward dv", gdv, dv,
                          tc ? i2 : NULL, n, shape, tol);
            free(i0), free(i1), free(i2);
            tb_cuda_free(gq), tb_cuda_free(gk), tb_cuda_free(gv), tb_cuda_free(gdy);
            tb_cuda_free(gdq), tb_cuda_free(gdk), tb_cuda_free(gdv), tb_cuda_free(gy);
            free(q), free(k), free(v), free(dy), free(dq), free(dk), free(dv), free(y);
        }
}

static void test_retention_fwd_bwd_match_cpu_causal_and_bidirectional(void **state) {
    (void)state;
    retention_cases(0);
}

/* The bf16 mode with the decay tiles on bf16 tensor cores (ret_tc_kernels.cuh). */
static void test_retention_bf16_tensor_core_tiles_match_cpu(void **state) {
    (void)state;
    if (ct_gpu->core.set_precision(TB_PREC_BF16) != TB_PREC_BF16) {
        print_message("SKIP part: no bf16 mode on this GPU: tensor-core retention not checked\n");
        return;
    }
    tb_cuda_tensor_core_tiles(1);
    retention_cases(1);
    tb_cuda_tensor_core_tiles(0);
    ct_gpu->core.set_precision(TB_PREC_FP32);
}

int main(void) {
    ct_init_or_skip();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retention_fwd_bwd_match_cpu_causal_and_bidirectional),
        cmocka_unit_test(test_retention_bf16_tensor_core_tiles_match_cpu),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    ct_summary();
    return rc;
}
