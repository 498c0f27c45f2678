/* C entry points of the emulated CUDA kernels (kernels_emu.cpp), host pointers. The fused
 * attention: the op contract of dense.attn_fwd / attn_bwd with probs == NULL (rowstat =
 * log-sum-exp, dq, dk, dv accumulated). */
#ifndef TB_KERNELS_EMU_H
#define TB_KERNELS_EMU_H
#include <stddef.h>
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif
struct tb_dropout;
void tbc_emu_flash_fwd(float *out, float *lse, const float *q, const float *k, const float *v, size_t ldq,
                       size_t ldkv, const uint8_t *mask, const struct tb_dropout *drop, uint32_t site, int B, int T,
                       int H, int Hkv, int hs);
void tbc_emu_flash_bwd(float *dq, float *dk, float *dv, const float *dout, const float *out, const float *lse,
                       const float *q, const float *k, const float *v, size_t ldq, size_t ldkv, const uint8_t *mask,
                       const struct tb_dropout *drop, uint32_t site, int B, int T, int H, int Hkv, int hs);
/* out_r (+)= Σ_o c γ_h^|r-o| (a_r · b_o) cv_o (c = 1/sqrt(hs), γ_h of the retnet heads) over
 * o <= r (range 0), o >= r (1) or all o (2): the decay tiles on tensor cores. */
void tbc_emu_decay_tiled(float *out, const float *a, const float *b, const float *cv, int B, int T, int H, int hs,
                         int range, int accumulate);
/* seq.moe_scatter_backward (dye, dgate accumulated). */
void tbc_emu_moe_scatter_bwd(float *dye, float *dgate, const float *dout, const float *ye, const float *gate,
                             const int32_t *order, int n, int K, int C);
/* seq.scan_forward (states written at chunk ends only) and seq.scan_backward (every
 * gradient accumulated; states from tbc_emu_scan_fwd). */
void tbc_emu_scan_fwd(float *y, float *states, const float *xc, const float *delta, const float *A_log,
                      const float *Bm, const float *Cm, const float *D, int B, int T, int Di, int N, int ld);
void tbc_emu_scan_bwd(float *dxc, float *ddelta, float *dA_log, float *dBm, float *dCm, float *dD, const float *dy,
                      const float *states, const float *xc, const float *delta, const float *A_log, const float *Bm,
                      const float *Cm, const float *D, int B, int T, int Di, int N, int ld);
/* dense.bitlinear_quant_x and the LN0 backward inside dense.bitlinear_bwd (dx +=), the
 * warp-per-row kernels; -1 where in > 2048 (not their case). */
int tbc_emu_quant_x(int8_t *xq, float *stats, const float *x, size_t n, int in);
int tbc_emu_ln0_bwd(float *dx, const float *g, const float *x, const float *stats, size_t n, int in, int set);
/* dense.norm_fwd and the dx of dense.norm_bwd for dynamic_tanh (parameters α, β), the
 * warp-per-row kernels; -1 where C > 2048. */
int tbc_emu_dyt_norm_fwd(float *y, float *stats, const float *x, const float *al, const float *be, size_t n, int C);
int tbc_emu_dyt_norm_bwd(float *dx, const float *dy, const float *stats, const float *x, const float *al,
                         const float *be, size_t n, int C);
/* The vectorised BitLinear output scale (y: int32 products in, floats out, in place) and
 * x̃ = x_q / s_x (out, in multiples of 4; y, xt 16-byte aligned). */
void tbc_emu_bitlinear_scale4(float *y, const float *stats, const float *sw, size_t n, int out);
void tbc_emu_xtilde4(float *xt, const int8_t *xq, const float *stats, size_t n, int in);
/* Ŵ = w_q / s_w, four codes per thread (count a multiple of 4). */
void tbc_emu_wtilde4(float *wt, const int8_t *wq, const float *sw, size_t count);
#ifdef __cplusplus
}
#endif
#endif
