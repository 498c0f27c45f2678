/* CPU kernels of the "dense" op family (private to trainerd/cpu/); see ops/ops_dense.h. */
#ifndef TB_DENSE_CPU_H
#define TB_DENSE_CPU_H
#include "../backend.h"

void dense_cpu_linear_fwd(real *y, const real *x, const real *w, size_t n, int in, int out);
void dense_cpu_linear_bwd(real *dx, real *dw, const real *dy, const real *x, const real *w,
                          size_t n, int in, int out);
void dense_cpu_bitlinear_quant_w(int8_t *wq, real *sw, const real *w, size_t count);
void dense_cpu_bitlinear_quant_x(int8_t *xq, real *stats, const real *x, size_t n, int in);
void dense_cpu_bitlinear_fwd(real *y, const int8_t *xq, const real *stats, const int8_t *wq,
                             const real *sw, size_t n, int in, int out);
void dense_cpu_bitlinear_bwd(real *dx, real *dw, real *dxhat, const real *dy, const real *x,
                             const int8_t *xq, const real *stats, const int8_t *wq,
                             const real *sw, size_t n, int in, int out);
void dense_cpu_norm_fwd(real *y, real *stats, const real *x, const real *const *prm, int type,
                        size_t n, int C);
void dense_cpu_norm_bwd(real *dx, real *const *dprm, const real *dy, const real *stats,
                        const real *x, const real *const *prm, int type, size_t n, int C);
void dense_cpu_norm_bwd_to(real *dx, const real *base, real *const *dprm, const real *dy,
                           const real *stats, const real *x, const real *const *prm, int type,
                           size_t n, int C);
void dense_cpu_dropout_fwd(real *y, const real *x, const tb_dropout *d, uint32_t site,
                           size_t n);
void dense_cpu_dropout_bwd(real *dx, const real *dy, const tb_dropout *d, uint32_t site,
                           size_t n);
/* m[k] = dropout_factor(d, site, i0 + k) for k < n (one Philox block per 4 elements). */
void dense_cpu_dropout_factors(real *m, const tb_dropout *d, uint32_t site, uint64_t i0,
                               size_t n);
void dense_cpu_embed_fwd(real *out, const int32_t *ids, const real *table, size_t n, int C);
void dense_cpu_embed_bwd(real *dtable, const real *dout, const int32_t *ids, size_t n, int C);
void dense_cpu_conv1d_fwd(real *y, const real *x, const real *w, const real *bias, int B, int T,
                          int C, int k);
void dense_cpu_conv1d_bwd(real *dx, real *dw, real *dbias, const real *dy, const real *x,
                          const real *w, int B, int T, int C, int k);
void dense_cpu_posenc_apply(real *y, const real *x, const real *a, const real *b,
                            int hyperbolic, int transpose, size_t n, int T, int H, int hs,
                            size_t ld);
void dense_cpu_attn_fwd(real *out, real *probs, real *rowstat, const real *q, const real *k,
                        const real *v, size_t ldq, size_t ldkv, const uint8_t *key_mask,
                        int sigmoid, const tb_dropout *d, uint32_t site, int B, int T, int H,
                        int Hkv, int hs);
void dense_cpu_attn_bwd(real *dq, real *dk, real *dv, real *work, const real *dout,
                        const real *out, const real *probs, const real *rowstat, const real *q, const real *k,
                        const real *v, size_t ldq, size_t ldkv, const uint8_t *key_mask,
                        int sigmoid, const tb_dropout *d, uint32_t site, int B, int T, int H,
                        int Hkv, int hs);
void dense_cpu_xent_fwd(real *lse, double *sum, int64_t *count, int64_t *correct,
                        const real *logits, const int32_t *labels, size_t n, int V);
void dense_cpu_xent_bwd(real *dlogits, const real *logits, const real *lse,
                        const int32_t *labels, real scale, size_t n, int V);
void dense_cpu_axpy(real *y, const real *x, real a, const real *z, size_t n);
void dense_cpu_sum_squares(double *out, const real *z, size_t n);

#endif
