#include "../backend.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "core_cpu.h"

static tb_backend cpu_backend;
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

/* The writing forms of the accumulating backward ops (ops_dense.h, ops_seq.h): the output
 * zeroed, then the accumulating op (whichever implementation init chose), the values the
 * layers got from a zero fill and the op. */
static void zero_rows(real *p, size_t rows, size_t cols, size_t ld) {
    for (size_t r = 0; r < rows; r++) memset(p + r * ld, 0, cols * sizeof(real));
}

static void cpu_bitlinear_bwd_set(real *dx, real *dw, real *dxhat, const real *dy, const real *x,
                                  const int8_t *xq, const real *stats, const int8_t *wq,
                                  const real *sw, size_t n, int in, int out) {
    zero_rows(dx, n, (size_t)in, (size_t)in);
    cpu_backend.dense.bitlinear_bwd(dx, dw, dxhat, dy, x, xq, stats, wq, sw, n, in, out);
}

static void cpu_attn_bwd_set(real *dq, real *dk, real *dv, real *work, const real *dout,
                             const real *out, const real *probs, const real *rowstat,
                             const real *q, const real *k, const real *v, size_t ldq, size_t ldkv,
                             const uint8_t *key_mask, int sigmoid, const tb_dropout *d,
                             uint32_t site, int B, int T, int H, int Hkv, int hs) {
    size_t rows = (size_t)B * (size_t)T;
    zero_rows(dq, rows, (size_t)H * (size_t)hs, ldq);
    zero_rows(dk, rows, (size_t)Hkv * (size_t)hs, ldkv);
    zero_rows(dv, rows, (size_t)Hkv * (size_t)hs, ldkv);
    cpu_backend.dense.attn_bwd(dq, dk, dv, work, dout, out, probs, rowstat, q, k, v, ldq, ldkv,
                               key_mask, sigmoid, d, site, B, T, H, Hkv, hs);
}

static void cpu_act_backward_set(real *dx, const real *dy, const real *x, size_t n, int kind,
                                 const struct tb_backend *be) {
    zero_rows(dx, 1, n, n);
    be->seq.act_backward(dx, dy, x, n, kind, be);
}

static void cpu_moe_scatter_backward_set(real *dye, real *dgate, const real *dout, const real *ye,
                                         const real *gate, const int32_t *order, int n, int K,
                                         int C, const struct tb_backend *be) {
    if (n > 0 && C > 0) zero_rows(dye, (size_t)n, (size_t)C, (size_t)C);
    be->seq.moe_scatter_backward(dye, dgate, dout, ye, gate, order, n, K, C, be);
}

static void cpu_moe_scatter_slots_set(real *out, const real *ye, const real *gate,
                                      const int32_t *sel, const int32_t *slot, int ntok, int K,
                                      int C, const struct tb_backend *be) {
    if (ntok > 0 && C > 0) zero_rows(out, (size_t)ntok, (size_t)C, (size_t)C);
    be->seq.moe_scatter_slots(out, ye, gate, sel, slot, ntok, K, C, be);
}

static void cpu_moe_gather_backward_slots_set(real *dx, const real *dxe, const int32_t *sel,
                                              const int32_t *slot, int ntok, int K, int C,
                                              const struct tb_backend *be) {
    if (ntok > 0 && C > 0) zero_rows(dx, (size_t)ntok, (size_t)C, (size_t)C);
    be->seq.moe_gather_backward_slots(dx, dxe, sel, slot, ntok, K, C, be);
}

static void cpu_bitlinear_quant_w_many(int8_t *codes, real *scales, const real *w,
                                       const tb_quant_w_range *r, int n) {
    for (int i = 0; i < n; i++)
        cpu_backend.dense.bitlinear_quant_w(codes + r[i].code_off, scales + r[i].scale,
                                            w + r[i].w_off, r[i].count);
}

static void cpu_backend_init(void) {
    cpu_backend.name = "cpu";
    tb_cpu_ops_core_init(&cpu_backend.core);
    tb_cpu_ops_dense_init(&cpu_backend.dense);
    const char *ref = getenv("TB_CPU_REFERENCE");
    if (!ref || !*ref || *ref == '0') tb_cpu_core_accelerate_dense(&cpu_backend.dense);
    tb_cpu_ops_seq_init(&cpu_backend.seq);
    cpu_backend.dense.bitlinear_bwd_set = cpu_bitlinear_bwd_set;
    cpu_backend.dense.attn_bwd_set = cpu_attn_bwd_set;
    cpu_backend.dense.bitlinear_quant_w_many = cpu_bitlinear_quant_w_many;
    cpu_backend.dense.sum_squares_dev = cpu_backend.dense.sum_squares; /* host memory */
    cpu_backend.seq.act_backward_set = cpu_act_backward_set;
    cpu_backend.seq.moe_scatter_backward_set = cpu_moe_scatter_backward_set;
    cpu_backend.seq.moe_scatter_slots_set = cpu_moe_scatter_slots_set;
    cpu_backend.seq.moe_gather_backward_slots_set = cpu_moe_gather_backward_slots_set;
    cpu_backend.impl = NULL;
}

const tb_backend *tb_backend_cpu(void) {
    pthread_once(&cpu_once, cpu_backend_init);
    return &cpu_backend;
}
