/* Seq family on CUDA vs the CPU backend, second part: the element-wise ops (silu, gelu,
 * softplus with bias, a ⊙ silu(g), column copies), the causal depthwise conv, the
 * selective scan (the GPU keeps only chunk-end states: those rows are compared, and each
 * backward reads its own side's states), the Titan memory read (with a zero q row for
 * the norm's eps branch) and MoE routing (sel, order, offsets exact; probs, gates, L_bal
 * within tolerance), its backward, gather and scatter (and their backwards). Backward ops
 * accumulate onto random gradients. Skips (exit 77) without a device. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include "cuda_test_util.h"

static char shape[200];

static void chk(const char *name, ct_t t) {
    double e = ct_cmp(name, t);
    if (!(e <= CT_TOL)) print_message("%s %s: rel err %.3e\n", name, shape, e);
    assert_true(e <= CT_TOL);
}

static void test_elementwise_ops_match_cpu(void **state) {
    (void)state;
    const tb_backend *G = ct_gpu, *Cp = ct_cpu;
    static const int sh[][4] = {{1, 1, 1, 1}, {7, 5, 9, 6}, {300, 33, 70, 40}, {1000, 129, 129, 300}};
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++) {
        size_t rows = (size_t)sh[s][0];
        int cols = sh[s][1], lda = sh[s][2], ldg = sh[s][3];
        size_t n = rows * cols;
        snprintf(shape, sizeof shape, "rows=%zu cols=%d lda=%d ldg=%d", rows, cols, lda, ldg);
        for (int kind = 0; kind < 2; kind++) {
            ct_t x = ct_rand(n, -6, 6), y = ct_out(n), dy = ct_rand(n, -1, 1), dx = ct_rand(n, -1, 1);
            G->seq.act_forward(y.d, x.d, n, kind, G);
            Cp->seq.act_forward(y.h, x.h, n, kind, Cp);
            chk(kind ? "seq.act_forward gelu" : "seq.act_forward silu", y);
            G->seq.act_backward(dx.d, dy.d, x.d, n, kind, G);
            Cp->seq.act_backward(dx.h, dy.h, x.h, n, kind, Cp);
            chk(kind ? "seq.act_backward gelu" : "seq.act_backward silu", dx);
            /* the writing form over poison against the CPU's from zero */
            ct_t sx = ct_out(n);
            G->seq.act_backward_set(sx.d, dy.d, x.d, n, kind, G);
            Cp->seq.act_backward(sx.h, dy.h, x.h, n, kind, Cp);
            chk(kind ? "seq.act_backward_set gelu" : "seq.act_backward_set silu", sx);
            ct_tfree(x), ct_tfree(y), ct_tfree(dy), ct_tfree(dx), ct_tfree(sx);
        }
        ct_t x = ct_rand(n, -25, 25), bias = ct_rand(cols, -3, 3), y = ct_out(n), dy = ct_rand(n, -1, 1),
             dx = ct_rand(n, -1, 1), db = ct_rand(cols, -1, 1);
        G->seq.softplus_bias_forward(y.d, x.d, bias.d, rows, cols, G);
        Cp->seq.softplus_bias_forward(y.h, x.h, bias.h, rows, cols, Cp);
        chk("seq.softplus_bias_forward", y);
        G->seq.softplus_bias_backward(dx.d, db.d, dy.d, x.d, bias.d, rows, cols, G);
        Cp->seq.softplus_bias_backward(dx.h, db.h, dy.h, x.h, bias.h, rows, cols, Cp);
        chk("seq.softplus_bias_backward dx", dx);
        chk("seq.softplus_bias_backward dbias", db);
        ct_tfree(x), ct_tfree(bias), ct_tfree(y), ct_tfree(dy), ct_tfree(dx), ct_tfree(db);
        ct_t a = ct_rand(rows * lda, -2, 2), g = ct_rand(rows * ldg, -6, 6), ym = ct_out(n), dym = ct_rand(n, -1, 1),
             da = ct_rand(rows * lda, -1, 1), dg = ct_rand(rows * ldg, -1, 1);
        G->seq.mul_silu_forward(ym.d, a.d, g.d, rows, cols, lda, ldg, G);
        Cp->seq.mul_silu_forward(ym.h, a.h, g.h, rows, cols, lda, ldg, Cp);
        chk("seq.mul_silu_forward", ym);
        G->seq.mul_silu_backward(da.d, dg.d, dym.d, a.d, g.d, rows, cols, lda, ldg, G);
        Cp->seq.mul_silu_backward(da.h, dg.h, dym.h, a.h, g.h, rows, cols, lda, ldg, Cp);
        chk("seq.mul_silu_backward da", da);
        chk("seq.mul_silu_backward dg", dg);
        /* copy_cols into a's slice from g's slice, then add_cols back. */
        G->seq.copy_cols(a.d, g.d, rows, cols, lda, ldg, G);
        Cp->seq.copy_cols(a.h, g.h, rows, cols, lda, ldg, Cp);
        chk("seq.copy_cols", a);
        G->seq.add_cols(g.d, da.d, rows, cols, ldg, lda, G);
        Cp->seq.add_cols(g.h, da.h, rows, cols, ldg, lda, Cp);
        chk("seq.add_cols", g);
        ct_tfree(a), ct_tfree(g), ct_tfree(ym), ct_tfree(dym), ct_tfree(da), ct_tfree(dg);
    }
}

static void test_conv_causal_fwd_bwd_match_cpu(void **state) {
    (void)state;
    static const int sh[][4] = {{1, 1, 1, 1}, {2, 5, 3, 4}, {3, 40, 130, 4}, {1, 300, 7, 3}, {2, 3, 5, 6}};
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++) {
        int B = sh[s][0], T = sh[s][1], Di = sh[s][2], k = sh[s][3];
        size_t n = (size_t)B * T * Di;
        snprintf(shape, sizeof shape, "B=%d T=%d Di=%d k=%d", B, T, Di, k);
        ct_t x = ct_rand(n, -1, 1), w = ct_rand((size_t)Di * k, -1, 1), bias = ct_rand(Di, -1, 1), y = ct_out(n);
        ct_t dy = ct_rand(n, -1, 1), dx = ct_rand(n, -1, 1), dw = ct_rand((size_t)Di * k, -1, 1), db = ct_rand(Di, -1, 1);
        ct_gpu->seq.conv_causal_forward(y.d, x.d, w.d, bias.d, B, T, Di, k, ct_gpu);
        ct_cpu->seq.conv_causal_forward(y.h, x.h, w.h, bias.h, B, T, Di, k, ct_cpu);
        chk("seq.conv_causal_forward y", y);
        ct_gpu->seq.conv_causal_backward(dx.d, dw.d, db.d, dy.d, x.d, w.d, B, T, Di, k, ct_gpu);
        ct_cpu->seq.conv_causal_backward(dx.h, dw.h, db.h, dy.h, x.h, w.h, B, T, Di, k, ct_cpu);
        chk("seq.conv_causal_backward dx", dx);
        chk("seq.conv_causal_backward dw", dw);
        chk("seq.conv_causal_backward dbias", db);
        ct_tfree(x), ct_tfree(w), ct_tfree(bias), ct_tfree(y), ct_tfree(dy), ct_tfree(dx), ct_tfree(dw), ct_tfree(db);
    }
}

#define SCAN_CHUNK 8 /* trainerd/cuda/scan_cuda.cu SC_L */

static void test_selective_scan_fwd_bwd_chunked_recompute_match_cpu(void **state) {
    (void)state;
    static const int sh[][5] = {{1, 1, 1, 1, 1}, {2, 9, 5, 16, 40}, {1, 37, 33, 32, 70}, {3, 20, 17, 7, 7},
                                {2, 64, 40, 16, 48}};
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++) {
        int B = sh[s][0], T = sh[s][1], Di = sh[s][2], N = sh[s][3], ld = sh[s][4];
        size_t rows = (size_t)B * T, n = rows * Di, ns = n * N;
        snprintf(shape, sizeof shape, "B=%d T=%d Di=%d N=%d ld=%d", B, T, Di, N, ld);
        ct_t xc = ct_rand(n, -1, 1), dl = ct_rand(n, 0.01f, 0.5f), Al = ct_rand((size_t)Di * N, -1, 1),
             Bm = ct_rand(rows * ld, -1, 1), Cm = ct_rand(rows * ld, -1, 1), D = ct_rand(Di, -1, 1);
        ct_t y = ct_out(n), st = ct_out(ns);
        ct_gpu->seq.scan_forward(y.d, st.d, xc.d, dl.d, Al.d, Bm.d, Cm.d, D.d, B, T, Di, N, ld, ct_gpu);
        ct_cpu->seq.scan_forward(y.h, st.h, xc.h, dl.h, Al.h, Bm.h, Cm.h, D.h, B, T, Di, N, ld, ct_cpu);
        chk("seq.scan_forward y", y);
        { /* checkpoint rows only */
            float *g = ct_hmalloc(ns * 4);
            ct_down(g, st.d, ns * 4);
            double e = 0;
            size_t nch = (size_t)(T + SCAN_CHUNK - 1) / SCAN_CHUNK;
            assert_int_equal(ct_gpu->seq.scan_state_every, SCAN_CHUNK);
            for (int b = 0; b < B; b++)
                for (int t = SCAN_CHUNK - 1; t < T; t += SCAN_CHUNK) { /* compact rows on the GPU */
                    size_t o = ((size_t)b * T + t) * Di * N, og = ((size_t)b * nch + t / SCAN_CHUNK) * Di * N;
                    double ee = ct_rel_err(g + og, st.h + o, (size_t)Di * N);
                    if (!(ee <= e)) e = ee;
                }
            ct_record("seq.scan_forward states@chunk", e);
            if (!(e <= CT_TOL)) print_message("scan states %s: rel err %.3e\n", shape, e);
            assert_true(e <= CT_TOL);
            free(g);
        }
        ct_t dy = ct_rand(n, -1, 1), dxc = ct_rand(n, -1, 1), ddl = ct_rand(n, -1, 1),
             dAl = ct_rand((size_t)Di * N, -1, 1), dB = ct_rand(rows * ld, -1, 1), dC = ct_rand(rows * ld, -1, 1),
             dD = ct_rand(Di, -1, 1);
        ct_gpu->seq.scan_backward(dxc.d, ddl.d, dAl.d, dB.d, dC.d, dD.d, dy.d, st.d, xc.d, dl.d, Al.d, Bm.d, Cm.d, D.d,
                                  B, T, Di, N, ld, ct_gpu);
        ct_cpu->seq.scan_backward(dxc.h, ddl.h, dAl.h, dB.h, dC.h, dD.h, dy.h, st.h, xc.h, dl.h, Al.h, Bm.h, Cm.h, D.h,
                                  B, T, Di, N, ld, ct_cpu);
        chk("seq.scan_backward dxc", dxc);
        chk("seq.scan_backward ddelta", ddl);
        chk("seq.scan_backward dA_log", dAl);
        chk("seq.scan_backward dBm", dB);
        chk("seq.scan_backward dCm", dC);
        chk("seq.scan_backward dD", dD);
        ct_tfree(xc), ct_tfree(dl), ct_tfree(Al), ct_tfree(Bm), ct_tfree(Cm), ct_tfree(D), ct_tfree(y), ct_tfree(st);
        ct_tfree(dy), ct_tfree(dxc), ct_tfree(ddl), ct_tfree(dAl), ct_tfree(dB), ct_tfree(dC), ct_tfree(dD);
    }
}

static void test_titan_fwd_bwd_match_cpu(void **state) {
    (void)state;
    /* T >= 16 with heads up to 128: the forward and dv in tiles; the rest the row kernel */
    static const int sh[][4] = {{1, 1, 1, 1},   {2, 5, 3, 7},   {1, 33, 2, 64},
                                {2, 70, 4, 32}, {1, 40, 1, 200}, {2, 150, 2, 100}};
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++) {
        int B = sh[s][0], T = sh[s][1], H = sh[s][2], hs = sh[s][3];
        size_t n = (size_t)B * T * H * hs;
        snprintf(shape, sizeof shape, "B=%d T=%d H=%d hs=%d", B, T, H, hs);
        ct_t q = ct_rand(n, -1, 1), k = ct_rand(n, -1, 1), v = ct_rand(n, -1, 1), dec = ct_rand(H, -2, 2);
        if (T > 2) { /* a zero q head row: the eps branch of the normalisation */
            memset(q.h + (size_t)hs * H, 0, (size_t)hs * 4);
            tb_err err = {{0}};
            tb_cuda_h2d(q.d, q.h, n * 4, &err);
        }
        ct_t r = ct_out(n), qn = ct_out(n), kn = ct_out(n);
        ct_gpu->seq.titan_forward(r.d, qn.d, kn.d, q.d, k.d, v.d, dec.d, B, T, H, hs, ct_gpu);
        ct_cpu->seq.titan_forward(r.h, qn.h, kn.h, q.h, k.h, v.h, dec.h, B, T, H, hs, ct_cpu);
        chk("seq.titan_forward r", r);
        chk("seq.titan_forward qn", qn);
        chk("seq.titan_forward kn", kn);
        ct_t dr = ct_rand(n, -1, 1), dq = ct_rand(n, -1, 1), dk = ct_rand(n, -1, 1), dv = ct_rand(n, -1, 1),
             dd = ct_rand(H, -1, 1);
        ct_gpu->seq.titan_backward(dq.d, dk.d, dv.d, dd.d, dr.d, q.d, k.d, qn.d, kn.d, v.d, dec.d, B, T, H, hs, ct_gpu);
        ct_cpu->seq.titan_backward(dq.h, dk.h, dv.h, dd.h, dr.h, q.h, k.h, qn.h, kn.h, v.h, dec.h, B, T, H, hs, ct_cpu);
        chk("seq.titan_backward dq", dq);
        chk("seq.titan_backward dk", dk);
        chk("seq.titan_backward dv", dv);
        chk("seq.titan_backward ddecay", dd);
        ct_tfree(q), ct_tfree(k), ct_tfree(v), ct_tfree(dec), ct_tfree(r), ct_tfree(qn), ct_tfree(kn);
        ct_tfree(dr), ct_tfree(dq), ct_tfree(dk), ct_tfree(dv), ct_tfree(dd);
    }
}

/* The fixed-capacity layout (layers/moe.c): moe_pad_order (exact) and the gather /
 * scatter ops over the E·P padded rows, padding rows included (order < 0: gather writes
 * zeros, the writing scatter backward zero dye rows, nothing else touches them). P as the
 * layer takes it: the capacity, at most ntok, rounded up to 16 (ntok without one). */
static void moe_padded_match_cpu(int32_t *order, int32_t *gorder, int32_t *off, int32_t *goff,
                                 const int32_t *sel, int32_t *gsel, int ntok, int E, int K, int C,
                                 double cf, ct_t gate) {
    int P = ntok;
    if (cf > 0) {
        double c = ceil(cf * K * (double)ntok / E);
        P = c < ntok ? (int)c : ntok;
        P = (P + 15) & ~15;
    }
    size_t R = (size_t)E * P, A = (size_t)ntok * K;
    int32_t *pad = ct_hmalloc(R * 4), *hp = ct_hmalloc(R * 4), *gpad = ct_poisoned(R * 4);
    int32_t *slot = ct_hmalloc(A * 4), *hsl = ct_hmalloc(A * 4), *gslot = ct_poisoned(A * 4);
    ct_gpu->seq.moe_pad_order(gpad, gslot, gorder, goff, E, P, ct_gpu);
    ct_cpu->seq.moe_pad_order(pad, slot, order, off, E, P, ct_cpu);
    ct_down(hp, gpad, R * 4);
    ct_down(hsl, gslot, A * 4);
    assert_memory_equal(hp, pad, R * 4);
    for (size_t a = 0; a < A; a++) /* written for the kept assignments only */
        if (sel[a] >= 0) assert_int_equal(hsl[a], slot[a]);
    ct_record("seq.moe_pad_order pad/slot (exact)", 0.0);
    int rows = (int)R;
    ct_t x = ct_rand((size_t)ntok * C, -1, 1), xe = ct_out(R * C), dxe = ct_rand(R * C, -1, 1),
         dx = ct_rand((size_t)ntok * C, -1, 1), ye = ct_rand(R * C, -1, 1), out = ct_rand((size_t)ntok * C, -1, 1),
         dout = ct_rand((size_t)ntok * C, -1, 1), dye = ct_rand(R * C, -1, 1), dg = ct_rand(A, -1, 1),
         sdy = ct_out(R * C);
    ct_gpu->seq.moe_gather(xe.d, x.d, gpad, rows, K, C, ct_gpu);
    ct_cpu->seq.moe_gather(xe.h, x.h, pad, rows, K, C, ct_cpu);
    chk("seq.moe_gather padded", xe);
    ct_gpu->seq.moe_gather_backward(dx.d, dxe.d, gpad, rows, K, C, ct_gpu);
    ct_cpu->seq.moe_gather_backward(dx.h, dxe.h, pad, rows, K, C, ct_cpu);
    chk("seq.moe_gather_backward padded", dx);
    ct_gpu->seq.moe_scatter(out.d, ye.d, gate.d, gpad, rows, K, C, ct_gpu);
    ct_cpu->seq.moe_scatter(out.h, ye.h, gate.h, pad, rows, K, C, ct_cpu);
    chk("seq.moe_scatter padded", out);
    ct_gpu->seq.moe_scatter_backward(dye.d, dg.d, dout.d, ye.d, gate.d, gpad, rows, K, C, ct_gpu);
    ct_cpu->seq.moe_scatter_backward(dye.h, dg.h, dout.h, ye.h, gate.h, pad, rows, K, C, ct_cpu);
    chk("seq.moe_scatter_backward padded dye", dye);
    chk("seq.moe_scatter_backward padded dgate", dg);
    ct_gpu->seq.moe_scatter_backward_set(sdy.d, dg.d, dout.d, ye.d, gate.d, gpad, rows, K, C, ct_gpu);
    ct_cpu->seq.moe_scatter_backward(sdy.h, dg.h, dout.h, ye.h, gate.h, pad, rows, K, C, ct_cpu);
    chk("seq.moe_scatter_backward_set padded dye", sdy);
    chk("seq.moe_scatter_backward_set padded dgate", dg);
    /* the token sums by slot: the values of the padded row-order ops above */
    ct_gpu->seq.moe_scatter_slots(out.d, ye.d, gate.d, gsel, gslot, ntok, K, C, ct_gpu);
    ct_cpu->seq.moe_scatter(out.h, ye.h, gate.h, pad, rows, K, C, ct_cpu);
    chk("seq.moe_scatter_slots", out);
    { /* the writing form over poison (not read): the bits of a zero fill and the adding
       * form (checked against the CPU above), on the GPU and on the CPU */
        size_t no = (size_t)ntok * C;
        float *zero = calloc(no ? no : 1, 4), *hso = ct_hmalloc(no * 4), *want = ct_hmalloc(no * 4),
              *hz = ct_hmalloc(no * 4);
        float *gso = ct_poisoned(no * 4), *gz = ct_up(zero, no * 4);
        ct_gpu->seq.moe_scatter_slots_set(gso, ye.d, gate.d, gsel, gslot, ntok, K, C, ct_gpu);
        ct_gpu->seq.moe_scatter_slots(gz, ye.d, gate.d, gsel, gslot, ntok, K, C, ct_gpu);
        ct_down(hso, gso, no * 4), ct_down(hz, gz, no * 4);
        assert_memory_equal(hso, hz, no * 4);
        for (size_t i = 0; i < no; i++) want[i] = (float)NAN;
        ct_cpu->seq.moe_scatter_slots_set(want, ye.h, gate.h, sel, slot, ntok, K, C, ct_cpu);
        memset(hz, 0, no * 4);
        ct_cpu->seq.moe_scatter_slots(hz, ye.h, gate.h, sel, slot, ntok, K, C, ct_cpu);
        assert_memory_equal(want, hz, no * 4);
        ct_record("seq.moe_scatter_slots_set (bitwise)", 0.0);
        /* the same for the token sums of the gradient */
        tb_cuda_free(gso), tb_cuda_free(gz);
        gso = ct_poisoned(no * 4), gz = ct_up(zero, no * 4);
        ct_gpu->seq.moe_gather_backward_slots_set(gso, dxe.d, gsel, gslot, ntok, K, C, ct_gpu);
        ct_gpu->seq.moe_gather_backward_slots(gz, dxe.d, gsel, gslot, ntok, K, C, ct_gpu);
        ct_down(hso, gso, no * 4), ct_down(hz, gz, no * 4);
        assert_memory_equal(hso, hz, no * 4);
        for (size_t i = 0; i < no; i++) want[i] = (float)NAN;
        ct_cpu->seq.moe_gather_backward_slots_set(want, dxe.h, sel, slot, ntok, K, C, ct_cpu);
        memset(hz, 0, no * 4);
        ct_cpu->seq.moe_gather_backward_slots(hz, dxe.h, sel, slot, ntok, K, C, ct_cpu);
        assert_memory_equal(want, hz, no * 4);
        ct_record("seq.moe_gather_backward_slots_set (bitwise)", 0.0);
        tb_cuda_free(gso), tb_cuda_free(gz), free(hso), free(want), free(hz), free(zero);
    }
    ct_gpu->seq.moe_gather_backward_slots(dx.d, dxe.d, gsel, gslot, ntok, K, C, ct_gpu);
    ct_cpu->seq.moe_gather_backward(dx.h, dxe.h, pad, rows, K, C, ct_cpu);
    chk("seq.moe_gather_backward_slots", dx);
    { /* and the CPU's own slot ops give the same bits as its row-order ones */
        float *o2 = ct_hmalloc((size_t)ntok * C * 4), *d2 = ct_hmalloc((size_t)ntok * C * 4);
        memcpy(o2, out.h, (size_t)ntok * C * 4), memcpy(d2, dx.h, (size_t)ntok * C * 4);
        ct_cpu->seq.moe_scatter(out.h, ye.h, gate.h, pad, rows, K, C, ct_cpu);
        ct_cpu->seq.moe_scatter_slots(o2, ye.h, gate.h, sel, slot, ntok, K, C, ct_cpu);
        assert_memory_equal(o2, out.h, (size_t)ntok * C * 4);
        ct_cpu->seq.moe_gather_backward(dx.h, dxe.h, pad, rows, K, C, ct_cpu);
        ct_cpu->seq.moe_gather_backward_slots(d2, dxe.h, sel, slot, ntok, K, C, ct_cpu);
        assert_memory_equal(d2, dx.h, (size_t)ntok * C * 4);
        free(o2), free(d2);
    }
    ct_tfree(x), ct_tfree(xe), ct_tfree(dxe), ct_tfree(dx), ct_tfree(ye), ct_tfree(out), ct_tfree(dout);
    ct_tfree(dye), ct_tfree(dg), ct_tfree(sdy);
    free(pad), free(hp), free(slot), free(hsl);
    tb_cuda_free(gpad), tb_cuda_free(gslot);
}

static void test_moe_route_gather_scatter_match_cpu(void **state) {
    (void)state;
    /* ntok, E, K, renorm, cf·100, C (64 and 1028: the row kernels' 16-byte form, 1028 with
     * two blocks over a row's columns) */
    static const int sh[][6] = {{1, 1, 1, 1, 0, 1},      {7, 4, 2, 1, 100, 5},    {100, 8, 2, 1, 125, 37},
                                {257, 16, 4, 0, 50, 64}, {50, 256, 3, 1, 0, 3},   {600, 8, 2, 1, 20, 17},
                                {96, 4, 2, 1, 125, 1028}};
    for (size_t s = 0; s < sizeof sh / sizeof sh[0]; s++) {
        int ntok = sh[s][0], E = sh[s][1], K = sh[s][2], renorm = sh[s][3], C = sh[s][5];
        double cf = sh[s][4] / 100.0;
        size_t A = (size_t)ntok * K;
        snprintf(shape, sizeof shape, "ntok=%d E=%d K=%d renorm=%d cf=%g C=%d", ntok, E, K, renorm, cf, C);
        ct_t logits = ct_rand((size_t)ntok * E, -3, 3), probs = ct_out((size_t)ntok * E), gate = ct_out(A),
             lbal = ct_out(1);
        int32_t *sel = ct_hmalloc(A * 4), *order = ct_hmalloc(A * 4), *off = ct_hmalloc((E + 1) * 4);
        int32_t *gsel = ct_poisoned(A * 4), *gorder = ct_poisoned(A * 4), *goff = ct_poisoned((E + 1) * 4);
        ct_gpu->seq.moe_route_forward(probs.d, gsel, gate.d, gorder, goff, lbal.d, logits.d, ntok, E, K, renorm, cf,
                                      ct_gpu);
        ct_cpu->seq.moe_route_forward(probs.h, sel, gate.h, order, off, lbal.h, logits.h, ntok, E, K, renorm, cf,
                                      ct_cpu);
        chk("seq.moe_route_forward probs", probs);
        chk("seq.moe_route_forward gate", gate);
        chk("seq.moe_route_forward lbal", lbal);
        int32_t *hs = ct_hmalloc(A * 4), *ho = ct_hmalloc(A * 4), *hf = ct_hmalloc((E + 1) * 4);
        ct_down(hs, gsel, A * 4);
        ct_down(hf, goff, (E + 1) * 4);
        assert_memory_equal(hs, sel, A * 4);
        assert_memory_equal(hf, off, (E + 1) * 4);
        int nk = off[E];
        ct_down(ho, gorder, (size_t)nk * 4);
        assert_memory_equal(ho, order, (size_t)nk * 4);
        ct_record("seq.moe_route sel/order/offsets (exact)", 0.0);
        ct_t dgate = ct_rand(A, -1, 1), dlog = ct_rand((size_t)ntok * E, -1, 1);
        ct_gpu->seq.moe_route_backward(dlog.d, dgate.d, probs.d, gsel, 0.01f, ntok, E, K, renorm, ct_gpu);
        ct_cpu->seq.moe_route_backward(dlog.h, dgate.h, probs.h, sel, 0.01f, ntok, E, K, renorm, ct_cpu);
        chk("seq.moe_route_backward dlogits", dlog);
        if (nk > 0) {
            ct_t x = ct_rand((size_t)ntok * C, -1, 1), xe = ct_out((size_t)nk * C), dxe = ct_rand((size_t)nk * C, -1, 1),
                 dx = ct_rand((size_t)ntok * C, -1, 1), ye = ct_rand((size_t)nk * C, -1, 1),
                 out = ct_rand((size_t)ntok * C, -1, 1), dout = ct_rand((size_t)ntok * C, -1, 1),
                 dye = ct_rand((size_t)nk * C, -1, 1), dg2 = ct_rand(A, -1, 1);
            ct_gpu->seq.moe_gather(xe.d, x.d, gorder, nk, K, C, ct_gpu);
            ct_cpu->seq.moe_gather(xe.h, x.h, order, nk, K, C, ct_cpu);
            chk("seq.moe_gather", xe);
            ct_gpu->seq.moe_gather_backward(dx.d, dxe.d, gorder, nk, K, C, ct_gpu);
            ct_cpu->seq.moe_gather_backward(dx.h, dxe.h, order, nk, K, C, ct_cpu);
            chk("seq.moe_gather_backward", dx);
            ct_gpu->seq.moe_scatter(out.d, ye.d, gate.d, gorder, nk, K, C, ct_gpu);
            ct_cpu->seq.moe_scatter(out.h, ye.h, gate.h, order, nk, K, C, ct_cpu);
            chk("seq.moe_scatter", out);
            ct_gpu->seq.moe_scatter_backward(dye.d, dg2.d, dout.d, ye.d, gate.d, gorder, nk, K, C, ct_gpu);
            ct_cpu->seq.moe_scatter_backward(dye.h, dg2.h, dout.h, ye.h, gate.h, order, nk, K, C, ct_cpu);
            chk("seq.moe_scatter_backward dye", dye);
            chk("seq.moe_scatter_backward dgate", dg2);
            { /* the writing form: dye over poison against the CPU's from zero; dgate added */
                ct_t sdy = ct_out(dye.n);
                ct_gpu->seq.moe_scatter_backward_set(sdy.d, dg2.d, dout.d, ye.d, gate.d, gorder, nk, K, C, ct_gpu);
                ct_cpu->seq.moe_scatter_backward(sdy.h, dg2.h, dout.h, ye.h, gate.h, order, nk, K, C, ct_cpu);
                chk("seq.moe_scatter_backward_set dye", sdy);
                chk("seq.moe_scatter_backward_set dgate", dg2);
                ct_tfree(sdy);
            }
            ct_tfree(x), ct_tfree(xe), ct_tfree(dxe), ct_tfree(dx), ct_tfree(ye), ct_tfree(out), ct_tfree(dout);
            ct_tfree(dye), ct_tfree(dg2);
        }
        moe_padded_match_cpu(order, gorder, off, goff, sel, gsel, ntok, E, K, C, cf, gate);
        ct_tfree(logits), ct_tfree(probs), ct_tfree(gate), ct_tfree(lbal), ct_tfree(dgate), ct_tfree(dlog);
        free(sel), free(order), free(off), free(hs), free(ho), free(hf);
        tb_cuda_free(gsel), tb_cuda_free(gorder), tb_cuda_free(goff);
    }
}

int main(void) {
    ct_init_or_skip();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_elementwise_ops_match_cpu),
        cmocka_unit_test(test_conv_causal_fwd_bwd_match_cpu),
        cmocka_unit_test(test_selective_scan_fwd_bwd_chunked_recompute_match_cpu),
        cmocka_unit_test(test_titan_fwd_bwd_match_cpu),
        cmocka_unit_test(test_moe_route_gather_scatter_match_cpu),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    ct_summary();
    return rc;
}
