/* Dense family on CUDA vs the CPU backend, second part: dropout (the mask bit for bit),
 * embedding gather and its deterministic scatter-add (repeated ids), Conv1d, the position
 * encoding (rotation and hyperbolic, forward and transpose, odd head sizes, in place) and
 * the attention core (softmax and sigmoid, GQA, key mask with a fully masked batch row,
 * dropout, strided q/k/v, T and hs beyond one 128-thread block). Backward ops accumulate
 * onto random gradients; outputs are poisoned first. Skips (exit 77) without a device. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include "cuda_test_util.h"
#include "layers/dropout.h"

static char shape[200];

static void chk(const char *name, ct_t t) {
    double e = ct_cmp(name, t);
    if (!(e <= CT_TOL)) print_message("%s %s: rel err %.3e\n", name, shape, e);
    assert_true(e <= CT_TOL);
}

static void chk_tol(const char *name, ct_t t, double tol) {
    double e = ct_cmp(name, t);
    if (!(e <= tol)) print_message("%s %s: rel err %.3e (bound %.0e)\n", name, shape, e, tol);
    assert_true(e <= tol);
}

/* attn_bwd_set on the GPU into poisoned dq, dk, dv, judged as the accumulating op is: the
 * written values plus the starting values `before` against the CPU's accumulated result
 * (dq.h etc. after its attn_bwd from `before`), relative to that result's largest
 * magnitude (an all-zero exact gradient, as at T = 1, has no scale of its own), on the
 * H·hs resp. Hkv·hs columns of each row (the stride's padding is neither written nor
 * compared; a NaN left there fails). */
static void attn_set_check(const char *const names[3], float *const before[3], ct_t dq, ct_t dk, ct_t dv, ct_t dout, ct_t out,
                           const float *gprobs, ct_t rs, ct_t q, ct_t k, ct_t v, size_t ldq, size_t ldkv,
                           const uint8_t *gmask, int sig, const tb_dropout *d, int B, int T, int H, int Hkv, int hs,
                           double tol) {
    size_t ntok = (size_t)B * T;
    float *g[3] = {ct_poisoned(dq.n * 4), ct_poisoned(dk.n * 4), ct_poisoned(dv.n * 4)};
    assert_non_null(ct_gpu->dense.attn_bwd_set);
    ct_gpu->dense.attn_bwd_set(g[0], g[1], g[2], NULL, dout.d, out.d, gprobs, rs.d, q.d, k.d, v.d, ldq, ldkv, gmask,
                               sig, d, 1, B, T, H, Hkv, hs);
    const ct_t *t[3] = {&dq, &dk, &dv};
    size_t cols[3] = {(size_t)H * hs, (size_t)Hkv * hs, (size_t)Hkv * hs}, ld[3] = {ldq, ldkv, ldkv};
    for (int e = 0; e < 3; e++) {
        float *got = ct_hmalloc(t[e]->n * 4);
        ct_down(got, g[e], t[e]->n * 4);
        double dmax = 0, ymax = 0;
        for (size_t r = 0; r < ntok; r++)
            for (size_t c = 0; c < cols[e]; c++) {
                size_t i = r * ld[e] + c;
                double y = t[e]->h[i], err = fabs((double)got[i] + before[e][i] - y);
                if (!(err <= dmax)) dmax = err;
                if (fabs(y) > ymax) ymax = fabs(y);
            }
        double err = dmax / (ymax > 1e-30 ? ymax : 1e-30);
        const char *nm = names[e]; /* ct_record keeps the pointer: static names */
        ct_record(nm, err);
        if (!(err <= tol)) print_message("%s %s: rel err %.3e\n", nm, shape, err);
        assert_true(err <= tol);
        free(got);
        tb_cuda_free(g[e]);
    }
}

static void test_dropout_mask_and_scale_match_cpu(void **state) {
    (void)state;
    static const size_t ns[] = {1, 7, 1000, 4099};
    static const float ps[] = {0.0f, 0.1f, 0.5f};
    for (size_t a = 0; a < 4; a++)
        for (size_t b = 0; b < 3; b++)
            for (int inplace = 0; inplace < 2; inplace++) {
                size_t n = ns[a];
                tb_dropout d = {ps[b], 1234567 + a, 17, 3, 1};
                snprintf(shape, sizeof shape, "n=%zu p=%g inplace=%d", n, ps[b], inplace);
                ct_t x = ct_rand(n, -1, 1), y = inplace ? x : ct_out(n), dx = ct_rand(n, -1, 1), dy = ct_rand(n, -1, 1);
                ct_gpu->dense.dropout_fwd(y.d, x.d, &d, 5, n);
                ct_cpu->dense.dropout_fwd(y.h, x.h, &d, 5, n);
                chk("dense.dropout_fwd y", y);
                ct_gpu->dense.dropout_bwd(dx.d, dy.d, &d, 5, n);
                ct_cpu->dense.dropout_bwd(dx.h, dy.h, &d, 5, n);
                chk("dense.dropout_bwd dx", dx);
                ct_tfree(x), ct_tfree(dx), ct_tfree(dy);
                if (!inplace) ct_tfree(y);
            }
}

static void test_embed_gather_and_scatter_add_match_cpu(void **state) {
    (void)state;
    static const int sh[][3] = {{1, 1, 1}, {5, 33, 7}, {50, 700, 300}, {3, 1000, 33}, {2000, 257, 64}};
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++) {
        int V = sh[s][0], C = sh[s][2];
        size_t n = (size_t)sh[s][1];
        snprintf(shape, sizeof shape, "V=%d n=%zu C=%d", V, n, C);
        int32_t *ids = ct_hmalloc(n * 4);
        for (size_t t = 0; t < n; t++) ids[t] = (int32_t)(ct_u01() * V) % V;
        int32_t *gids = ct_up(ids, n * 4);
        ct_t table = ct_rand((size_t)V * C, -1, 1), out = ct_out(n * C), dout = ct_rand(n * C, -1, 1),
             dtab = ct_rand((size_t)V * C, -1, 1);
        ct_gpu->dense.embed_fwd(out.d, gids, table.d, n, C);
        ct_cpu->dense.embed_fwd(out.h, ids, table.h, n, C);
        chk("dense.embed_fwd out", out);
        ct_gpu->dense.embed_bwd(dtab.d, dout.d, gids, n, C);
        ct_cpu->dense.embed_bwd(dtab.h, dout.h, ids, n, C);
        chk("dense.embed_bwd dtable", dtab);
        ct_tfree(table), ct_tfree(out), ct_tfree(dout), ct_tfree(dtab);
        free(ids), tb_cuda_free(gids);
    }
}

static void test_conv1d_fwd_bwd_match_cpu(void **state) {
    (void)state;
    static const int sh[][4] = {{1, 1, 1, 1}, {2, 5, 3, 3}, {1, 9, 7, 4}, {3, 33, 20, 3}, {2, 17, 65, 5}, {1, 2, 4, 7}};
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++) {
        int B = sh[s][0], T = sh[s][1], C = sh[s][2], k = sh[s][3];
        size_t n = (size_t)B * T * C, nw = (size_t)C * C * k;
        snprintf(shape, sizeof shape, "B=%d T=%d C=%d k=%d", B, T, C, k);
        ct_t x = ct_rand(n, -1, 1), w = ct_rand(nw, -1, 1), bias = ct_rand(C, -1, 1), y = ct_out(n);
        ct_t dy = ct_rand(n, -1, 1), dx = ct_rand(n, -1, 1), dw = ct_rand(nw, -1, 1), db = ct_rand(C, -1, 1);
        ct_gpu->dense.conv1d_fwd(y.d, x.d, w.d, bias.d, B, T, C, k);
        ct_cpu->dense.conv1d_fwd(y.h, x.h, w.h, bias.h, B, T, C, k);
        chk("dense.conv1d_fwd y", y);
        ct_gpu->dense.conv1d_bwd(dx.d, dw.d, db.d, dy.d, x.d, w.d, B, T, C, k);
        ct_cpu->dense.conv1d_bwd(dx.h, dw.h, db.h, dy.h, x.h, w.h, B, T, C, k);
        chk("dense.conv1d_bwd dx", dx);
        chk("dense.conv1d_bwd dw", dw);
        chk("dense.conv1d_bwd dbias", db);
        ct_tfree(x), ct_tfree(w), ct_tfree(bias), ct_tfree(y), ct_tfree(dy), ct_tfree(dx), ct_tfree(dw), ct_tfree(db);
    }
}

static void test_posenc_rotation_and_hyperbolic_match_cpu(void **state) {
    (void)state;
    static const int sh[][5] = {{1, 1, 1, 1, 0}, {6, 3, 2, 7, 3}, {40, 20, 4, 16, 0}, {33, 11, 3, 33, 5}};
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++)
        for (int hyp = 0; hyp < 2; hyp++)
            for (int tr = 0; tr < 2; tr++)
                for (int inplace = 0; inplace < 2; inplace++) {
                    size_t n = (size_t)sh[s][0];
                    int T = sh[s][1], H = sh[s][2], hs = sh[s][3];
                    size_t ld = (size_t)H * hs + (size_t)sh[s][4];
                    snprintf(shape, sizeof shape, "n=%zu T=%d H=%d hs=%d ld=%zu hyp=%d tr=%d inplace=%d", n, T, H, hs,
                             ld, hyp, tr, inplace);
                    size_t P = (size_t)(hs / 2) ? (size_t)(hs / 2) : 1;
                    ct_t x = ct_rand(n * ld, -1, 1), a = ct_rand((size_t)T * P, -2, 2), b = ct_rand((size_t)T * P, -2, 2);
                    ct_t y = inplace ? x : ct_rand(n * ld, -1, 1);
                    ct_gpu->dense.posenc_apply(y.d, x.d, a.d, b.d, hyp, tr, n, T, H, hs, ld);
                    ct_cpu->dense.posenc_apply(y.h, x.h, a.h, b.h, hyp, tr, n, T, H, hs, ld);
                    chk("dense.posenc_apply y", y);
                    ct_tfree(x), ct_tfree(a), ct_tfree(b);
                    if (!inplace) ct_tfree(y);
                }
}

static void test_attention_softmax_sigmoid_gqa_mask_dropout_match_cpu(void **state) {
    (void)state;
    /* B, T, H, Hkv, hs, extra stride */
    static const int sh[][6] = {{1, 1, 1, 1, 1, 0},     {2, 5, 2, 1, 7, 3},    {1, 33, 4, 2, 16, 0},
                                {2, 130, 3, 3, 33, 1},  {1, 20, 2, 2, 200, 0}, {2, 97, 4, 2, 64, 0},
                                {1, 70, 2, 1, 128, 5},  {2, 64, 2, 2, 32, 0},  {1, 161, 2, 2, 100, 2},
                                /* T % 4 == 0: the fused kernels' dropout by Philox block */
                                {2, 132, 4, 2, 64, 0},  {1, 96, 2, 1, 128, 3}};
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++)
        for (int sig = 0; sig < 2; sig++)
            for (int masked = 0; masked < 2; masked++)
                for (int drop = 0; drop < 2; drop++)
                    for (int fused = 0; fused < 2; fused++) {
                    int B = sh[s][0], T = sh[s][1], H = sh[s][2], Hkv = sh[s][3], hs = sh[s][4];
                    /* fused: the GPU keeps no P (probs == NULL) where its backend offers it */
                    if (fused && (sig || !ct_gpu->dense.attn_recomputes ||
                                  !ct_gpu->dense.attn_recomputes(hs)))
                        continue;
                    size_t ldq = (size_t)H * hs + sh[s][5], ldkv = (size_t)Hkv * hs + sh[s][5];
                    size_t ntok = (size_t)B * T;
                    snprintf(shape, sizeof shape, "B=%d T=%d H=%d Hkv=%d hs=%d sigmoid=%d mask=%d drop=%d fused=%d",
                             B, T, H, Hkv, hs, sig, masked, drop, fused);
                    tb_dropout d = {0.2f, 99, 4, 1, drop};
                    uint8_t *mask = NULL, *gmask = NULL;
                    if (masked) {
                        mask = ct_hmalloc(ntok);
                        for (size_t t = 0; t < ntok; t++) mask[t] = ct_u01() < 0.7;
                        if (B > 1)
                            for (int t = 0; t < T; t++) mask[(size_t)T + t] = 0; /* batch 1 fully masked */
                        gmask = ct_up(mask, ntok);
                    }
                    ct_t q = ct_rand(ntok * ldq, -1, 1), k = ct_rand(ntok * ldkv, -1, 1), v = ct_rand(ntok * ldkv, -1, 1);
                    ct_t out = ct_out(ntok * H * hs), probs = ct_out((size_t)B * H * T * T), rs = ct_out((size_t)B * H * T);
                    ct_gpu->dense.attn_fwd(out.d, fused ? NULL : probs.d, rs.d, q.d, k.d, v.d, ldq, ldkv, gmask, sig,
                                           &d, 1, B, T, H, Hkv, hs);
                    ct_cpu->dense.attn_fwd(out.h, probs.h, rs.h, q.h, k.h, v.h, ldq, ldkv, mask, sig, &d, 1, B, T, H,
                                           Hkv, hs);
                    chk(fused ? "dense.attn_fwd fused out" : "dense.attn_fwd out", out);
                    if (!fused) chk("dense.attn_fwd probs", probs);
                    chk(fused ? "dense.attn_fwd fused lse" : "dense.attn_fwd rowstat", rs);
                    /* The backward reads each side's own probs (they agree to 1e-5). */
                    ct_t dout = ct_rand(ntok * H * hs, -1, 1), dq = ct_rand(ntok * ldq, -1, 1),
                         dk = ct_rand(ntok * ldkv, -1, 1), dv = ct_rand(ntok * ldkv, -1, 1);
                    float *work = ct_hmalloc((size_t)T * 4);
                    float *before[3] = {ct_hmalloc(dq.n * 4), ct_hmalloc(dk.n * 4), ct_hmalloc(dv.n * 4)};
                    memcpy(before[0], dq.h, dq.n * 4), memcpy(before[1], dk.h, dk.n * 4), memcpy(before[2], dv.h, dv.n * 4);
                    ct_gpu->dense.attn_bwd(dq.d, dk.d, dv.d, NULL, dout.d, out.d, fused ? NULL : probs.d, rs.d, q.d,
                                           k.d, v.d, ldq, ldkv, gmask, sig, &d, 1, B, T, H, Hkv, hs);
                    ct_cpu->dense.attn_bwd(dq.h, dk.h, dv.h, work, dout.h, out.h, probs.h, rs.h, q.h, k.h, v.h, ldq,
                                           ldkv, mask, sig, &d, 1, B, T, H, Hkv, hs);
                    chk(fused ? "dense.attn_bwd fused dq" : "dense.attn_bwd dq", dq);
                    chk(fused ? "dense.attn_bwd fused dk" : "dense.attn_bwd dk", dk);
                    chk(fused ? "dense.attn_bwd fused dv" : "dense.attn_bwd dv", dv);
                    static const char *const set_fused[3] = {"dense.attn_bwd_set fused dq", "dense.attn_bwd_set fused dk",
                                                             "dense.attn_bwd_set fused dv"};
                    static const char *const set_plain[3] = {"dense.attn_bwd_set dq", "dense.attn_bwd_set dk",
                                                             "dense.attn_bwd_set dv"};
                    attn_set_check(fused ? set_fused : set_plain, before, dq, dk, dv, dout, out, fused ? NULL : probs.d, rs,
                                   q, k, v, ldq, ldkv, gmask, sig, &d, B, T, H, Hkv, hs, CT_TOL);
                    free(before[0]), free(before[1]), free(before[2]);
                    ct_tfree(q), ct_tfree(k), ct_tfree(v), ct_tfree(out), ct_tfree(probs), ct_tfree(rs);
                    ct_tfree(dout), ct_tfree(dq), ct_tfree(dk), ct_tfree(dv);
                    free(work), free(mask);
                    if (gmask) tb_cuda_free(gmask);
                }
}

/* The bf16 mode's fused attention on bf16 tensor cores (flash_tc_cuda.cu, turned on with
 * tb_cuda_tensor_core_tiles): every output and gradient within the bf16 bound of the CPU's
 * fp32, and the same bits when run twice (no atomics). */
static void test_attention_bf16_tensor_cores_match_cpu(void **state) {
    (void)state;
    if (ct_gpu->core.set_precision(TB_PREC_BF16) != TB_PREC_BF16) {
        print_message("SKIP part: bf16 mode not available on this GPU: tensor-core attention not checked\n");
        return;
    }
    tb_cuda_tensor_core_tiles(1);
    /* B, T, H, Hkv, hs, extra stride, q and k amplitude: odd T and hs, every head-size
     * class, GQA, several tiles of keys and queries, and scores of a few tens (amplitude 6:
     * bf16 q and k alone put out 3.7e-2 off; the split score product keeps it ~3e-3). Not
     * T = 1 or 2: dq and dk are (or become, with a masked key) zero in exact arithmetic,
     * where a relative bound on rounding noise means nothing. */
    static const int sh[][7] = {{1, 9, 1, 1, 3, 0, 2},    {2, 5, 2, 1, 7, 3, 2},   {1, 33, 4, 2, 16, 0, 2},
                                {2, 130, 3, 3, 33, 1, 2}, {2, 97, 4, 2, 64, 0, 2}, {1, 70, 2, 1, 128, 5, 2},
                                {2, 132, 4, 2, 64, 0, 2}, {1, 96, 2, 1, 128, 3, 2}, {1, 300, 4, 1, 64, 0, 2},
                                {1, 200, 2, 2, 100, 2, 2}, {2, 64, 4, 2, 32, 0, 6}, {1, 150, 2, 1, 64, 1, 6},
                                {1, 90, 2, 1, 128, 0, 6}};
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++)
        for (int masked = 0; masked < 2; masked++)
            for (int drop = 0; drop < 2; drop++) {
                int B = sh[s][0], T = sh[s][1], H = sh[s][2], Hkv = sh[s][3], hs = sh[s][4];
                if (!ct_gpu->dense.attn_recomputes || !ct_gpu->dense.attn_recomputes(hs)) continue;
                size_t ldq = (size_t)H * hs + sh[s][5], ldkv = (size_t)Hkv * hs + sh[s][5];
                size_t ntok = (size_t)B * T;
                float amp = (float)sh[s][6];
                snprintf(shape, sizeof shape, "bf16 B=%d T=%d H=%d Hkv=%d hs=%d amp=%g mask=%d drop=%d", B, T, H,
                         Hkv, hs, amp, masked, drop);
                tb_dropout d = {0.2f, 77, 3, 2, drop};
                uint8_t *mask = NULL, *gmask = NULL;
                if (masked) {
                    mask = ct_hmalloc(ntok);
                    for (size_t t = 0; t < ntok; t++) mask[t] = ct_u01() < 0.7;
                    if (B > 1)
                        for (int t = 0; t < T; t++) mask[(size_t)T + t] = 0;
                    gmask = ct_up(mask, ntok);
                }
                ct_t q = ct_rand(ntok * ldq, -amp, amp), k = ct_rand(ntok * ldkv, -amp, amp),
                     v = ct_rand(ntok * ldkv, -1, 1);
                ct_t out = ct_out(ntok * H * hs), probs = ct_out((size_t)B * H * T * T), rs = ct_out((size_t)B * H * T);
                ct_t dout = ct_rand(ntok * H * hs, -1, 1), dq = ct_rand(ntok * ldq, -1, 1),
                     dk = ct_rand(ntok * ldkv, -1, 1), dv = ct_rand(ntok * ldkv, -1, 1);
                float *init[3] = {ct_hmalloc(dq.n * 4), ct_hmalloc(dk.n * 4), ct_hmalloc(dv.n * 4)};
                memcpy(init[0], dq.h, dq.n * 4), memcpy(init[1], dk.h, dk.n * 4), memcpy(init[2], dv.h, dv.n * 4);
                float *first[5] = {NULL};
                for (int rep = 0; rep < 3; rep++) {
                    /* the same inputs twice: the second run must give the first run's bits; a
                     * third backward with no forward right before it must give them too */
                    ct_reset(dq), ct_reset(dk), ct_reset(dv);
                    if (rep < 2)
                        ct_gpu->dense.attn_fwd(out.d, NULL, rs.d, q.d, k.d, v.d, ldq, ldkv, gmask, 0, &d, 1, B, T,
                                               H, Hkv, hs);
                    ct_gpu->dense.attn_bwd(dq.d, dk.d, dv.d, NULL, dout.d, out.d, NULL, rs.d, q.d, k.d, v.d, ldq,
                                           ldkv, gmask, 0, &d, 1, B, T, H, Hkv, hs);
                    ct_t res[5] = {out, rs, dq, dk, dv};
                    for (int e = 0; e < 5; e++) {
                        float *got = ct_fetch(res[e]);
                        if (rep == 0) {
                            first[e] = got;
                            continue;
                        }
                        assert_memory_equal(first[e], got, res[e].n * sizeof(float));
                        if (rep == 2) free(first[e]);
                        free(got);
                    }
                }
                ct_cpu->dense.attn_fwd(out.h, probs.h, rs.h, q.h, k.h, v.h, ldq, ldkv, mask, 0, &d, 1, B, T, H, Hkv,
                                       hs);
                float *work = ct_hmalloc((size_t)T * 4);
                ct_cpu->dense.attn_bwd(dq.h, dk.h, dv.h, work, dout.h, out.h, probs.h, rs.h, q.h, k.h, v.h, ldq, ldkv,
                                       mask, 0, &d, 1, B, T, H, Hkv, hs);
                chk_tol("dense.attn_fwd bf16 out", out, CT_TOL_BF16);
                chk_tol("dense.attn_fwd bf16 lse", rs, CT_TOL_BF16);
                static const char *const set_bf16[3] = {"dense.attn_bwd_set bf16 dq", "dense.attn_bwd_set bf16 dk",
                                                        "dense.attn_bwd_set bf16 dv"};
                attn_set_check(set_bf16, init, dq, dk, dv, dout, out, NULL, rs, q, k, v, ldq, ldkv, gmask, 0, &d, B, T, H,
                               Hkv, hs, CT_TOL_BF16);
                /* the gradients on what the backward added (it accumulates onto random values) */
                ct_t grads[3] = {dq, dk, dv};
                static const char *const gname[3] = {"dense.attn_bwd bf16 dq (added)", "dense.attn_bwd bf16 dk (added)",
                                                     "dense.attn_bwd bf16 dv (added)"};
                for (int e = 0; e < 3; e++) {
                    float *got = ct_fetch(grads[e]);
                    double dmax = 0, ymax = 0;
                    for (size_t i = 0; i < grads[e].n; i++) {
                        double x = (double)got[i] - init[e][i], y = (double)grads[e].h[i] - init[e][i];
                        if (!(fabs(x - y) <= dmax)) dmax = fabs(x - y);
                        if (fabs(y) > ymax) ymax = fabs(y);
                    }
                    double err = dmax / (ymax > 1e-30 ? ymax : 1e-30);
                    ct_record(gname[e], err);
                    if (!(err <= CT_TOL_BF16)) print_message("%s %s: rel err %.3e\n", gname[e], shape, err);
                    assert_true(err <= CT_TOL_BF16);
                    free(got), free(init[e]);
                }
                ct_tfree(q), ct_tfree(k), ct_tfree(v), ct_tfree(out), ct_tfree(probs), ct_tfree(rs);
                ct_tfree(dout), ct_tfree(dq), ct_tfree(dk), ct_tfree(dv);
                free(work), free(mask);
                if (gmask) tb_cuda_free(gmask);
            }
    tb_cuda_tensor_core_tiles(0);
    ct_gpu->core.set_precision(TB_PREC_FP32);
}

int main(void) {
    ct_init_or_skip();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dropout_mask_and_scale_match_cpu),
        cmocka_unit_test(test_embed_gather_and_scatter_add_match_cpu),
        cmocka_unit_test(test_conv1d_fwd_bwd_match_cpu),
        cmocka_unit_test(test_posenc_rotation_and_hyperbolic_match_cpu),
        cmocka_unit_test(test_attention_softmax_sigmoid_gqa_mask_dropout_match_cpu),
        cmocka_unit_test(test_attention_bf16_tensor_cores_match_cpu),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    ct_summary();
    return rc;
}
