/* CUDA kernels on the CPU emulation of tests/cuda_emu, against the CPU backend. The MoE
 * scatter backward (moe_kernels.cuh: dye bit for bit, dgate within 1e-6); the BitLinear
 * quantiser (bit for bit), LN0 backward and dynamic_tanh norm with a warp per row
 * (dense_kernels.cuh); the Mamba scan
 * (scan_kernels.cuh, within 1e-5); the retention
 * core on the bf16 tensor-core decay tiles (ret_tc_kernels.cuh); and the bf16 tensor-core
 * fused attention kernels (trainerd/cuda/flash_tc_kernels.cuh) on the
 * CPU emulation of tests/cuda_emu (a thread block as POSIX threads, the mma of PTX's
 * m16n8k16 fragment layouts) against the CPU backend's attention: out, the log-sum-exp,
 * and what the backward added to dq, dk, dv within the bf16 mode's bound (2e-2,
 * max|emu - cpu| / max|cpu| per tensor; for the gradients over the added part) over
 * odd T and head sizes, every head-size class (32, 64, 128), GQA, strided q/k/v, a key
 * mask with a fully masked batch row, and dropout both ways (per element, and by Philox
 * block when T % 4 == 0). What it shows: the kernels' fragment, tile and mask arithmetic
 * is right by the PTX specification, in CI, without a GPU; tests/cuda runs the same
 * kernels on one (cuda_test_dense_more_vs_cpu). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include "backend.h"
#include "kernels_emu.h"
#include "layers/dropout.h"

#define TOL 2e-2
#define TOL_PRINT getenv("TB_EMU_PRINT") /* set: print every error, assert none */

static uint64_t rng = 0x243F6A8885A308D3ull;
static float urand(float lo, float hi) {
    rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
    return lo + (hi - lo) * (float)((double)(rng >> 11) / 9007199254740992.0);
}
static float *rand_buf(size_t n, float lo, float hi) {
    float *x = malloc((n ? n : 1) * sizeof(float));
    assert_non_null(x);
    for (size_t i = 0; i < n; i++) x[i] = urand(lo, hi);
    return x;
}
static float *copy_buf(const float *x, size_t n) {
    float *y = malloc((n ? n : 1) * sizeof(float));
    assert_non_null(y);
    memcpy(y, x, n * sizeof(float));
    return y;
}
static double rel_err(const float *a, const float *b, size_t n) {
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - (double)b[i]);
        if (!(e <= d)) d = e;
        if (fabs((double)b[i]) > m) m = fabs((double)b[i]);
    }
    return d / (m > 1e-30 ? m : 1e-30);
}

/* The error of an accumulated gradient, on what the op added: max|(a - init) - (b - init)|
 * / max|b - init| (an op that overwrote instead of adding shows up here too). */
static double rel_err_added(const float *a, const float *b, const float *init, size_t n) {
    double d = 0, m = 0;
    for (size_t i = 0; i < n; i++) {
        double x = (double)a[i] - init[i], y = (double)b[i] - init[i], e = fabs(x - y);
        if (!(e <= d)) d = e;
        if (fabs(y) > m) m = fabs(y);
    }
    return d / (m > 1e-30 ? m : 1e-30);
}

static double worst[5];
static const char *const names[5] = {"out", "lse", "dq", "dk", "dv"};

static void test_emulated_tensor_core_attention_matches_cpu(void **state) {
    (void)state;
    rng = 0x243F6A8885A308D3ull; /* the same inputs whatever ran before */
    const tb_backend *cpu = tb_backend_cpu();
    /* B, T, H, Hkv, hs, extra stride, q and k amplitude. Not T = 1 or 2: there dq and dk
     * are zero (or, with a masked key, become zero) in exact arithmetic, and a relative
     * bound on rounding noise around zero means nothing. Amplitude 6: scores of a few
     * tens, where bf16 q and k alone would move probabilities by several percent (the
     * split score product of tc_mm_ss3 is what keeps these within the bound). */
    static const int sh[][7] = {{1, 9, 1, 1, 3, 0, 2},   {2, 5, 2, 1, 7, 3, 2},    {1, 33, 4, 2, 16, 0, 2},
                                {2, 70, 2, 2, 33, 1, 2}, {1, 97, 2, 1, 64, 0, 2},  {1, 70, 2, 1, 128, 5, 2},
                                {1, 132, 2, 2, 64, 0, 2}, {1, 96, 2, 1, 100, 3, 2}, {2, 64, 4, 2, 32, 0, 6},
                                {1, 80, 2, 1, 64, 1, 6}};
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++)
        for (int masked = 0; masked < 2; masked++)
            for (int drop = 0; drop < 2; drop++) {
                if (sh[s][1] >= 64 && masked != drop) continue; /* the long ones: both off, both on */
                int B = sh[s][0], T = sh[s][1], H = sh[s][2], Hkv = sh[s][3], hs = sh[s][4];
                size_t ldq = (size_t)H * hs + sh[s][5], ldkv = (size_t)Hkv * hs + sh[s][5];
                size_t ntok = (size_t)B * T, nq = ntok * ldq, nkv = ntok * ldkv, no = ntok * H * hs;
                size_t nr = (size_t)B * H * T;
                tb_dropout d = {0.2f, 77, 3, 2, drop};
                uint8_t *mask = NULL;
                if (masked) {
                    mask = malloc(ntok);
                    assert_non_null(mask);
                    for (size_t t = 0; t < ntok; t++) mask[t] = urand(0, 1) < 0.7f;
                    if (B > 1)
                        for (int t = 0; t < T; t++) mask[(size_t)T + t] = 0; /* batch row 1 fully masked */
                }
                float amp = (float)sh[s][6];
                float *q = rand_buf(nq, -amp, amp), *k = rand_buf(nkv, -amp, amp), *v = rand_buf(nkv, -1, 1);
                float *dout = rand_buf(no, -1, 1);
                float *dq = rand_buf(nq, -1, 1), *dk = rand_buf(nkv, -1, 1), *dv = rand_buf(nkv, -1, 1);
                float *edq = copy_buf(dq, nq), *edk = copy_buf(dk, nkv), *edv = copy_buf(dv, nkv);
                float *idq = copy_buf(dq, nq), *idk = copy_buf(dk, nkv), *idv = copy_buf(dv, nkv);
                float *out = calloc(no ? no : 1, 4), *eout = calloc(no ? no : 1, 4);
                float *rs = calloc(nr, 4), *ers = calloc(nr, 4), *probs = calloc(nr * T, 4);
                float *work = calloc((size_t)T, 4);
                assert_true(out && eout && rs && ers && probs && work);
                cpu->dense.attn_fwd(out, probs, rs, q, k, v, ldq, ldkv, mask, 0, &d, 1, B, T, H, Hkv, hs);
                cpu->dense.attn_bwd(dq, dk, dv, work, dout, out, probs, rs, q, k, v, ldq, ldkv, mask, 0, &d, 1, B, T,
                                    H, Hkv, hs);
                tbc_emu_flash_fwd(eout, ers, q, k, v, ldq, ldkv, mask, &d, 1, B, T, H, Hkv, hs);
                tbc_emu_flash_bwd(edq, edk, edv, dout, eout, ers, q, k, v, ldq, ldkv, mask, &d, 1, B, T, H, Hkv, hs);
                double e[5] = {rel_err(eout, out, no), rel_err(ers, rs, nr), rel_err_added(edq, dq, idq, nq),
                               rel_err_added(edk, dk, idk, nkv), rel_err_added(edv, dv, idv, nkv)};
                for (int i = 0; i < 5; i++) {
                    if (!(e[i] <= worst[i])) worst[i] = e[i];
                    if (!(e[i] <= TOL) || TOL_PRINT)
                        print_message("%s B=%d T=%d H=%d Hkv=%d hs=%d amp=%d mask=%d drop=%d: rel err %.3e\n",
                                      names[i], B, T, H, Hkv, hs, sh[s][6], masked, drop, e[i]);
                    if (!TOL_PRINT) assert_true(e[i] <= TOL);
                }
                free(q), free(k), free(v), free(dout), free(dq), free(dk), free(dv), free(edq), free(edk), free(edv);
                free(idq), free(idk), free(idv);
                free(out), free(eout), free(rs), free(ers), free(probs), free(work), free(mask);
            }
    for (int i = 0; i < 5; i++) printf("emulated tensor-core attention %-3s worst rel err %.3e\n", names[i], worst[i]);
}

/* The retention core through the tensor-core decay tiles (forward: range 0 or 2; backward:
 * dq += D(dy, v, k), dk += D(v, dy, q), dv += D(k, q, dy) with the reversed range, as
 * seq_cuda.cu's cu_retention_backward) against the CPU backend's retention. */
static void test_emulated_tensor_core_retention_matches_cpu(void **state) {
    (void)state;
    rng = 0x13198A2E03707344ull;
    const tb_backend *cpu = tb_backend_cpu();
    /* B, T, H, hs */
    static const int sh[][4] = {{1, 16, 1, 5}, {2, 37, 3, 16}, {1, 70, 2, 64}, {1, 130, 2, 33}, {1, 65, 1, 128},
                                {1, 100, 2, 100}};
    double wf = 0, wq = 0, wk = 0, wv = 0;
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++)
        for (int bidir = 0; bidir < 2; bidir++) {
            int B = sh[s][0], T = sh[s][1], H = sh[s][2], hs = sh[s][3];
            size_t n = (size_t)B * T * H * hs;
            float *q = rand_buf(n, -1, 1), *k = rand_buf(n, -1, 1), *v = rand_buf(n, -1, 1), *dy = rand_buf(n, -1, 1);
            float *y = calloc(n, 4), *ey = calloc(n, 4);
            float *dq = rand_buf(n, -1, 1), *dk = rand_buf(n, -1, 1), *dv = rand_buf(n, -1, 1);
            float *edq = copy_buf(dq, n), *edk = copy_buf(dk, n), *edv = copy_buf(dv, n);
            float *idq = copy_buf(dq, n), *idk = copy_buf(dk, n), *idv = copy_buf(dv, n);
            assert_true(y && ey);
            cpu->seq.retention_forward(y, q, k, v, B, T, H, hs, bidir, cpu);
            cpu->seq.retention_backward(dq, dk, dv, dy, q, k, v, B, T, H, hs, bidir, cpu);
            int fwd = bidir ? 2 : 0, rev = bidir ? 2 : 1;
            tbc_emu_decay_tiled(ey, q, k, v, B, T, H, hs, fwd, 0);
            tbc_emu_decay_tiled(edq, dy, v, k, B, T, H, hs, fwd, 1);
            tbc_emu_decay_tiled(edk, v, dy, q, B, T, H, hs, rev, 1);
            tbc_emu_decay_tiled(edv, k, q, dy, B, T, H, hs, rev, 1);
            double e[4] = {rel_err(ey, y, n), rel_err_added(edq, dq, idq, n), rel_err_added(edk, dk, idk, n),
                           rel_err_added(edv, dv, idv, n)};
            static const char *const rn[4] = {"y", "dq", "dk", "dv"};
            for (int i = 0; i < 4; i++) {
                if (!(e[i] <= TOL) || TOL_PRINT)
                    print_message("retention %s B=%d T=%d H=%d hs=%d bidirectional=%d: rel err %.3e\n", rn[i], B, T,
                                  H, hs, bidir, e[i]);
                if (!TOL_PRINT) assert_true(e[i] <= TOL);
            }
            if (!(e[0] <= wf)) wf = e[0];
            if (!(e[1] <= wq)) wq = e[1];
            if (!(e[2] <= wk)) wk = e[2];
            if (!(e[3] <= wv)) wv = e[3];
            free(q), free(k), free(v), free(dy), free(y), free(ey), free(dq), free(dk), free(dv);
            free(edq), free(edk), free(edv), free(idq), free(idk), free(idv);
        }
    printf("emulated tensor-core retention worst rel err y %.3e dq %.3e dk %.3e dv %.3e\n", wf, wq, wk, wv);
}

/* The MoE scatter backward (a warp per expert row) against the CPU's: dye and dgate
 * accumulate onto random values; order a permutation of the n = tokens · K slots. */
static void test_emulated_moe_scatter_backward_matches_cpu(void **state) {
    (void)state;
    rng = 0xA4093822299F31D0ull;
    const tb_backend *cpu = tb_backend_cpu();
    static const int sh[][3] = {{1, 1, 1}, {5, 2, 0}, {7, 2, 33}, {40, 2, 257}, {33, 3, 64}}; /* tokens, K, C */
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++) {
        int ntok = sh[s][0], K = sh[s][1], C = sh[s][2], n = ntok * K;
        size_t nc = (size_t)n * C;
        int32_t *order = malloc((size_t)n * sizeof(int32_t));
        assert_non_null(order);
        for (int j = 0; j < n; j++) order[j] = j;
        for (int j = n - 1; j > 0; j--) { /* shuffle: expert rows in any token order */
            int i = (int)(urand(0, 1) * (float)(j + 1)) % (j + 1), t = order[i];
            order[i] = order[j], order[j] = t;
        }
        float *dout = rand_buf((size_t)ntok * C, -1, 1), *ye = rand_buf(nc, -1, 1), *gate = rand_buf((size_t)n, 0, 1);
        float *dye = rand_buf(nc, -1, 1), *dgate = rand_buf((size_t)n, -1, 1);
        float *edye = copy_buf(dye, nc), *edgate = copy_buf(dgate, (size_t)n);
        cpu->seq.moe_scatter_backward(dye, dgate, dout, ye, gate, order, n, K, C, cpu);
        tbc_emu_moe_scatter_bwd(edye, edgate, dout, ye, gate, order, n, K, C);
        /* dye: the same products and one addition each: the same bits */
        assert_memory_equal(edye, dye, nc * sizeof(float));
        double e = rel_err(edgate, dgate, (size_t)n);
        if (!(e <= 1e-6)) print_message("dgate tokens=%d K=%d C=%d: rel err %.3e\n", ntok, K, C, e);
        assert_true(e <= 1e-6);
        free(order), free(dout), free(ye), free(gate), free(dye), free(dgate), free(edye), free(edgate);
    }
}

/* The Mamba scan, forward and backward (every gradient accumulated onto random values),
 * against the CPU: state sizes 1, 5, 8, 16 (two channels per warp), 17 and 32, channel
 * counts that leave part of a warp and of a block empty, T across chunk boundaries. The
 * bound is the fp32 mode's (1e-5): the kernels sum in another order than the CPU. */
static void test_emulated_scan_matches_cpu(void **state) {
    (void)state;
    rng = 0x082EFA98EC4E6C89ull;
    const tb_backend *cpu = tb_backend_cpu();
    static const int sh[][5] = {{1, 1, 1, 1, 1},  {2, 9, 3, 5, 7},   {1, 17, 33, 16, 16}, {2, 20, 40, 16, 20},
                                {1, 8, 5, 8, 8},   {1, 12, 3, 17, 17}, {1, 10, 2, 32, 32}}; /* B, T, Di, N, ld */
    double worst = 0;
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++) {
        int B = sh[s][0], T = sh[s][1], Di = sh[s][2], N = sh[s][3], ld = sh[s][4];
        size_t nx = (size_t)B * T * Di, nbc = (size_t)B * T * ld, nst = nx * N;
        float *xc = rand_buf(nx, -1, 1), *delta = rand_buf(nx, 0.01f, 0.5f), *A_log = rand_buf((size_t)Di * N, -1, 1);
        float *Bm = rand_buf(nbc, -1, 1), *Cm = rand_buf(nbc, -1, 1), *D = rand_buf((size_t)Di, -1, 1);
        float *dy = rand_buf(nx, -1, 1);
        float *y = calloc(nx, 4), *ey = calloc(nx, 4), *st = calloc(nst, 4), *est = calloc(nst, 4);
        assert_true(y && ey && st && est);
        float *g[6] = {rand_buf(nx, -1, 1), rand_buf(nx, -1, 1), rand_buf((size_t)Di * N, -1, 1),
                       rand_buf(nbc, -1, 1), rand_buf(nbc, -1, 1), rand_buf((size_t)Di, -1, 1)};
        size_t gn[6] = {nx, nx, (size_t)Di * N, nbc, nbc, (size_t)Di};
        float *eg[6], *ig[6];
        for (int k = 0; k < 6; k++) eg[k] = copy_buf(g[k], gn[k]), ig[k] = copy_buf(g[k], gn[k]);
        cpu->seq.scan_forward(y, st, xc, delta, A_log, Bm, Cm, D, B, T, Di, N, ld, cpu);
        cpu->seq.scan_backward(g[0], g[1], g[2], g[3], g[4], g[5], dy, st, xc, delta, A_log, Bm, Cm, D, B, T, Di, N,
                               ld, cpu);
        tbc_emu_scan_fwd(ey, est, xc, delta, A_log, Bm, Cm, D, B, T, Di, N, ld);
        tbc_emu_scan_bwd(eg[0], eg[1], eg[2], eg[3], eg[4], eg[5], dy, est, xc, delta, A_log, Bm, Cm, D, B, T, Di, N,
                         ld);
        static const char *const nm[7] = {"y", "dxc", "ddelta", "dA_log", "dBm", "dCm", "dD"};
        double e[7];
        e[0] = rel_err(ey, y, nx);
        for (int k = 0; k < 6; k++) e[k + 1] = rel_err_added(eg[k], g[k], ig[k], gn[k]);
        for (int k = 0; k < 7; k++) {
            if (!(e[k] <= 1e-5) || TOL_PRINT)
                print_message("scan %s B=%d T=%d Di=%d N=%d: rel err %.3e\n", nm[k], B, T, Di, N, e[k]);
            if (!TOL_PRINT) assert_true(e[k] <= 1e-5);
            if (e[k] > worst) worst = e[k];
        }
        free(xc), free(delta), free(A_log), free(Bm), free(Cm), free(D), free(dy), free(y), free(ey), free(st),
            free(est);
        for (int k = 0; k < 6; k++) free(g[k]), free(eg[k]), free(ig[k]);
    }
    printf("emulated scan worst rel err %.3e\n", worst);
}

/* The warp-per-row BitLinear quantiser against the CPU's, bit for bit (codes and the three
 * statistics), and the warp-per-row LN0 backward against the CPU's formula
 * (cpu/dense_linear.c) within 1e-6; row widths across every register class (8 .. 64
 * values per lane) and their edges, an all-zero row and a constant row. */
static void test_emulated_bitlinear_rows_match_cpu(void **state) {
    (void)state;
    rng = 0x452821E638D01377ull;
    const tb_backend *cpu = tb_backend_cpu();
    static const int ins[] = {1, 31, 33, 256, 257, 512, 700, 1024, 1025, 2048};
    for (size_t s = 0; s < sizeof ins / sizeof ins[0]; s++) {
        int in = ins[s];
        size_t n = 11, nx = n * (size_t)in;
        float *x = rand_buf(nx, -3, 3);
        memset(x, 0, (size_t)in * 4); /* row 0 all zero */
        for (int j = 0; j < in; j++) x[(size_t)in + j] = 0.25f; /* row 1 constant */
        int8_t *q = malloc(nx), *eq = malloc(nx);
        float *st = calloc(3 * n, 4), *est = calloc(3 * n, 4);
        assert_true(q && eq && st && est);
        cpu->dense.bitlinear_quant_x(q, st, x, n, in);
        assert_int_equal(tbc_emu_quant_x(eq, est, x, n, in), 0);
        assert_memory_equal(est, st, 3 * n * sizeof(float));
        assert_memory_equal(eq, q, nx);
        /* LN0 backward onto random dx, with the CPU's formula */
        float *g = rand_buf(nx, -1, 1), *dx = rand_buf(nx, -1, 1), *edx = copy_buf(dx, nx), *idx = copy_buf(dx, nx);
        float *inc = calloc(nx, sizeof(float));
        assert_non_null(inc);
        for (size_t t = 0; t < n; t++) {
            const float *gr = g + t * in, *xr = x + t * in;
            float mean = st[3 * t], rstd = st[3 * t + 1];
            double sg = 0, sgx = 0;
            for (int j = 0; j < in; j++) {
                float xh = (xr[j] - mean) * rstd;
                sg += gr[j];
                sgx += (double)(gr[j] * xh);
            }
            float mg = (float)(sg / in), mgx = (float)(sgx / in);
            for (int j = 0; j < in; j++) {
                float xh = (xr[j] - mean) * rstd;
                inc[t * in + j] = rstd * (gr[j] - mg - xh * mgx);
                dx[t * in + j] += inc[t * in + j];
            }
        }
        assert_int_equal(tbc_emu_ln0_bwd(edx, g, x, st, n, in, 0), 0);
        double e = rel_err_added(edx, dx, idx, nx);
        if (!(e <= 1e-6)) print_message("ln0 backward in=%d: rel err %.3e\n", in, e);
        assert_true(e <= 1e-6);
        /* set: the values alone, written over whatever dx held (NaN here: never read) */
        for (size_t i = 0; i < nx; i++) edx[i] = NAN;
        assert_int_equal(tbc_emu_ln0_bwd(edx, g, x, st, n, in, 1), 0);
        e = rel_err(edx, inc, nx);
        if (!(e <= 1e-6)) print_message("ln0 backward (set) in=%d: rel err %.3e\n", in, e);
        assert_true(e <= 1e-6);
        free(inc);
        free(x), free(q), free(eq), free(st), free(est), free(g), free(dx), free(edx), free(idx);
    }
}

/* The warp-per-row dynamic_tanh norm (forward: y and the (mean, sd) statistics; backward:
 * dx accumulated) against the CPU backend's within 1e-5 (its double sums run in another
 * order), widths across the register classes. */
static void test_emulated_dynamic_tanh_norm_rows_match_cpu(void **state) {
    (void)state;
    rng = 0xBE5466CF34E90C6Cull;
    const tb_backend *cpu = tb_backend_cpu();
    static const int cs[] = {2, 31, 100, 256, 300, 513, 1024, 1500, 2048};
    for (size_t s = 0; s < sizeof cs / sizeof cs[0]; s++) {
        int C = cs[s];
        size_t n = 9, nx = n * (size_t)C;
        float *x = rand_buf(nx, -2, 3), *al = rand_buf((size_t)C, 0.2f, 1.5f), *be = rand_buf((size_t)C, -0.5f, 0.5f);
        for (int j = 0; j < C; j++) x[j] = 0.5f; /* a constant row: sd 0 */
        const float *prm[2] = {al, be};
        float *y = calloc(nx, 4), *ey = calloc(nx, 4), *st = calloc(2 * n, 4), *est = calloc(2 * n, 4);
        assert_true(y && ey && st && est);
        cpu->dense.norm_fwd(y, st, x, prm, 0, n, C);
        assert_int_equal(tbc_emu_dyt_norm_fwd(ey, est, x, al, be, n, C), 0);
        double ef = rel_err(ey, y, nx), es = rel_err(est, st, 2 * n);
        float *dy = rand_buf(nx, -1, 1), *dx = rand_buf(nx, -1, 1), *edx = copy_buf(dx, nx), *idx = copy_buf(dx, nx);
        float *da = rand_buf((size_t)C, -1, 1), *db = rand_buf((size_t)C, -1, 1);
        float *dprm[2] = {da, db};
        cpu->dense.norm_bwd(dx, dprm, dy, st, x, prm, 0, n, C);
        assert_int_equal(tbc_emu_dyt_norm_bwd(edx, dy, st, x, al, be, n, C), 0);
        double eb = rel_err_added(edx, dx, idx, nx);
        if (!(ef <= 1e-5 && es <= 1e-5 && eb <= 1e-5))
            print_message("dynamic_tanh C=%d: y %.3e stats %.3e dx %.3e\n", C, ef, es, eb);
        assert_true(ef <= 1e-5 && es <= 1e-5 && eb <= 1e-5);
        free(x), free(al), free(be), free(y), free(ey), free(st), free(est), free(dy), free(dx), free(edx), free(idx);
        free(da), free(db);
    }
}

/* The 16-byte BitLinear output scale, x̃ and Ŵ kernels: bit for bit the per-element
 * expressions of the scalar kernels (and of the CPU: y = acc / (s_x · s_w), x̃ = x_q / s_x),
 * over a grid smaller than the work (grid-stride loops). */
static void test_emulated_bitlinear_scale_and_xtilde_vectorised_bitwise(void **state) {
    (void)state;
    rng = 0xC0AC29B7C97C50DDull;
    static const int sh[][2] = {{1, 4}, {7, 12}, {33, 1024}, {5, 3072}}; /* n, width */
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++) {
        size_t n = (size_t)sh[s][0], w = (size_t)sh[s][1], nw = n * w;
        float *st = rand_buf(3 * n, 0.5f, 40.0f), sw = 17.25f;
        float *y = aligned_alloc(16, ((nw * 4 + 15) / 16) * 16);
        int8_t *xq = aligned_alloc(16, ((nw + 15) / 16) * 16);
        float *xt = aligned_alloc(16, ((nw * 4 + 15) / 16) * 16), *want = malloc(nw * 4);
        assert_true(y && xq && xt && want);
        for (size_t i = 0; i < nw; i++) {
            int32_t acc = (int32_t)(urand(-1, 1) * 500000.0f);
            memcpy(&y[i], &acc, 4);
            want[i] = (float)acc / (st[3 * (i / w) + 2] * sw);
            xq[i] = (int8_t)(int)(urand(-128, 127.99f));
        }
        tbc_emu_bitlinear_scale4(y, st, &sw, n, (int)w);
        assert_memory_equal(y, want, nw * 4);
        for (size_t i = 0; i < nw; i++) want[i] = (float)xq[i] / st[3 * (i / w) + 2];
        tbc_emu_xtilde4(xt, xq, st, n, (int)w);
        assert_memory_equal(xt, want, nw * 4);
        float c = 1.0f / sw; /* Ŵ from the same codes read as ternary */
        for (size_t i = 0; i < nw; i++) xq[i] = (int8_t)(xq[i] % 2), want[i] = xq[i] > 0 ? c : xq[i] < 0 ? -c : 0.0f;
        tbc_emu_wtilde4(xt, xq, &sw, nw);
        assert_memory_equal(xt, want, nw * 4);
        free(st), free(y), free(xq), free(xt), free(want);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_emulated_bitlinear_scale_and_xtilde_vectorised_bitwise),
        cmocka_unit_test(test_emulated_dynamic_tanh_norm_rows_match_cpu),
        cmocka_unit_test(test_emulated_bitlinear_rows_match_cpu),
        cmocka_unit_test(test_emulated_scan_matches_cpu),
        cmocka_unit_test(test_emulated_moe_scatter_backward_matches_cpu),
        cmocka_unit_test(test_emulated_tensor_core_retention_matches_cpu),
        cmocka_unit_test(test_emulated_tensor_core_attention_matches_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
