/* Op family "dense" of the backend table (see trainerd/backend.h for conventions):
 * linear and BitLinear, norms, dropout, embedding gather and Conv1d, position encoding,
 * the attention core, and the masked cross-entropy. Layers in trainerd/layers/ compose
 * them; the math of each is in the layer header named in its comment.
 * n = number of tokens (B·T, b-major), sizes in elements. */
#ifndef TB_OPS_DENSE_H
#define TB_OPS_DENSE_H
#include <stddef.h>
#include <stdint.h>
#include "../real.h"
#include "../layers/dropout.h"

struct tb_backend;

/* The attention backward's signature (attn_bwd, attn_bwd_set below). */
/* One tensor of bitlinear_quant_w_many: offsets into the weights and the codes, its
 * element count and the index of its scale. */
typedef struct tb_quant_w_range {
    size_t w_off, code_off, count, scale;
} tb_quant_w_range;

typedef void (*tb_attn_bwd_fn)(real *dq, real *dk, real *dv, real *work,
                               const real *dout,   // (n, H·hs)
                               const real *out,    // (n, H·hs)
                               const real *probs, const real *rowstat,
                               const real *q, const real *k, const real *v, size_t ldq,
                               size_t ldkv, const uint8_t *key_mask, int sigmoid,
                               const tb_dropout *d, uint32_t site, int B, int T, int H, int Hkv,
                               int hs);

typedef struct tb_ops_dense {
    /* Plain linear (layers/linear.h). fwd: y = x Wᵀ. bwd: dx += dy W (dx may be NULL),
     * dw += dyᵀ x (dw may be NULL). Sums run over the reduction index in ascending order,
     * accumulated onto the existing value. */
    void (*linear_fwd)(real *y,        // (n, out)
                       const real *x,  // (n, in)
                       const real *w,  // (out, in)
                       size_t n, int in, int out);
    void (*linear_bwd)(real *dx,       // (n, in) +=, or NULL
                       real *dw,       // (out, in) +=, or NULL
                       const real *dy, // (n, out)
                       const real *x,  // (n, in)
                       const real *w,  // (out, in)
                       size_t n, int in, int out);

    /* BitLinear (layers/linear.h, MODEL.md section 2). */
    /* wq = clamp(rint(w · s_w), -1, 1), *sw = 1 / max(mean |w|, 1e-5) (mean summed in
     * ascending index order in double). */
    void (*bitlinear_quant_w)(int8_t *wq,    // (count)
                              real *sw,      // [1]
                              const real *w, // (count)
                              size_t count);
    /* bitlinear_quant_w over n tensors at once (the model's refresh after each optimizer
     * step): tensor i is w + r[i].w_off (r[i].count values), its codes codes +
     * r[i].code_off, its scale scales[r[i].scale]; the values of n separate calls (CUDA:
     * three launches for all of them instead of four a tensor). */
    void (*bitlinear_quant_w_many)(int8_t *codes, real *scales, const real *w,
                                   const tb_quant_w_range *r, int n);
    /* LN0 + activation quantiser; stats[t] = (mean, rstd, s_x). */
    void (*bitlinear_quant_x)(int8_t *xq,    // (n, in)
                              real *stats,   // (n, 3)
                              const real *x, // (n, in)
                              size_t n, int in);
    /* y = (real)(Σ_j xq·wq, int32) / (s_x · s_w). */
    void (*bitlinear_fwd)(real *y,            // (n, out)
                          const int8_t *xq,   // (n, in)
                          const real *stats,  // (n, 3)
                          const int8_t *wq,   // (out, in)
                          const real *sw,     // [1]
                          size_t n, int in, int out);
    /* STE backward: dxhat = dy · w̃ (scratch; holds dx̂ on return when dx != NULL;
     * w̃ = wq / s_w elementwise, sum over out ascending), dw += dyᵀ · x̃ (x̃ = xq / s_x, accumulated over tokens ascending),
     * dx += LN0ᵀ(dxhat) (x̂ recomputed from x and stats). dx may be NULL. */
    void (*bitlinear_bwd)(real *dx,          // (n, in) +=, or NULL
                          real *dw,          // (out, in) +=
                          real *dxhat,       // (n, in) scratch
                          const real *dy,    // (n, out)
                          const real *x,     // (n, in)
                          const int8_t *xq,  // (n, in)
                          const real *stats, // (n, 3)
                          const int8_t *wq,  // (out, in)
                          const real *sw,    // [1]
                          size_t n, int in, int out);
    /* bitlinear_bwd with dx = LN0ᵀ(dxhat) written, not added (dx not NULL, not read): the
     * backward of a BitLinear whose input gradient starts at zero (the CPU zeroes dx and
     * adds; CUDA stores, with no fill and no read of dx). */
    void (*bitlinear_bwd_set)(real *dx, real *dw, real *dxhat, const real *dy, const real *x,
                              const int8_t *xq, const real *stats, const int8_t *wq,
                              const real *sw, size_t n, int in, int out);

    /* Norms (layers/norm.h); type is a tb_norm_type; prm/dprm in the type's tensor order;
     * stats: norm_act_count(type, n) reals. */
    void (*norm_fwd)(real *y,                // (n, C)
                     real *stats,            // (n, 2) or unused
                     const real *x,          // (n, C)
                     const real *const *prm, // the type's tensors
                     int type, size_t n, int C);
    void (*norm_bwd)(real *dx,               // (n, C) +=
                     real *const *dprm,      // += the type's tensors' grads
                     const real *dy,         // (n, C)
                     const real *stats,      // (n, 2) or unused
                     const real *x,          // (n, C)
                     const real *const *prm, int type, size_t n, int C);
    /* norm_bwd from base into dx: dx = base + the input gradient, with the bits of
     * dx <- base (base NULL: a zero fill) then norm_bwd; base may be dx (norm_bwd itself).
     * Saves the fill or copy pass and, with base NULL, the read of dx. */
    void (*norm_bwd_to)(real *dx, const real *base, real *const *dprm, const real *dy,
                        const real *stats, const real *x, const real *const *prm, int type,
                        size_t n, int C);

    /* Dropout (layers/dropout.h): fwd overwrites y (y may equal x), bwd accumulates. */
    void (*dropout_fwd)(real *y, const real *x, const tb_dropout *d, uint32_t site, size_t n);
    void (*dropout_bwd)(real *dx, const real *dy, const tb_dropout *d, uint32_t site, size_t n);

    /* Embedding gather and its scatter-add (ids already validated in [0, V)). */
    void (*embed_fwd)(real *out,            // (n, C)
                      const int32_t *ids,   // (n)
                      const real *table,    // (V, C)
                      size_t n, int C);
    void (*embed_bwd)(real *dtable,         // (V, C) +=
                      const real *dout,     // (n, C)
                      const int32_t *ids,   // (n)
                      size_t n, int C);
    /* Conv1d along T over channels-last data (layers/embedding.h): padding k/2 on both
     * sides, first T outputs kept: y[b,t,o] = bias[o] + Σ_{i,j} w[o,i,j] x[b, t+j-k/2, i]. */
    void (*conv1d_fwd)(real *y,         // (B, T, C)
                       const real *x,   // (B, T, C)
                       const real *w,   // (C, C, k)
                       const real *bias,// (C)
                       int B, int T, int C, int k);
    void (*conv1d_bwd)(real *dx,        // (B, T, C) +=
                       real *dw,        // (C, C, k) +=
                       real *dbias,     // (C) +=
                       const real *dy,  // (B, T, C)
                       const real *x,   // (B, T, C)
                       const real *w,   // (C, C, k)
                       int B, int T, int C, int k);

    /* Position encoding (layers/posenc.h) on heads of hs channels, pairs (2i, 2i+1),
     * tables a, b of (T, hs/2): rotation (hyperbolic = 0):
     *   y0 = a x0 - b x1, y1 = b x0 + a x1;  hyperbolic: y0 = a x0 + b x1, y1 = b x0 + a x1.
     * transpose = 1 applies the transposed map (the backward). Overwrites y (y may
     * equal x); an odd last channel is copied. Rows are tokens b·T + t with stride ld. */
    void (*posenc_apply)(real *y,        // (n, ld) heads at h·hs
                         const real *x,  // (n, ld)
                         const real *a,  // (T, hs/2)
                         const real *b,  // (T, hs/2)
                         int hyperbolic, int transpose, size_t n, int T, int H, int hs,
                         size_t ld);

    /* Attention core (layers/attention.h) with GQA (query head h reads kv head
     * h / (H / Hkv)) and a key padding mask (nonzero = attend; NULL = all). Row b·T + t of
     * q has stride ldq, of k and v stride ldkv; head h at offset h·hs.
     * softmax (sigmoid = 0): P = softmax(q kᵀ / sqrt(hs)) over unmasked keys, probs = P;
     * sigmoid: W = σ(q kᵀ / sqrt(hs)) (masked: 0), probs = W, rowstat = ΣW + 1e-6,
     * P = W / rowstat. softmax: rowstat = log Σ_j exp(s_ij) over the unmasked keys (the
     * row's log-sum-exp of the scaled scores; 0 for a query with every key masked).
     * A query with every key masked has P = 0. Dropout on P at `site`
     * (element ((b·H + h)·T + i)·T + j). out = P̃ v, heads merged head-major.
     * probs may be NULL for softmax when attn_recomputes(hs) says so: the backend keeps
     * no P and its backward recomputes it from q, k and rowstat (fused attention). */
    void (*attn_fwd)(real *out,          // (n, H·hs)
                     real *probs,        // (B, H, T, T)
                     real *rowstat,      // (B, H, T)
                     const real *q, const real *k, const real *v, size_t ldq, size_t ldkv,
                     const uint8_t *key_mask, // (B, T) or NULL
                     int sigmoid, const tb_dropout *d, uint32_t site,
                     int B, int T, int H, int Hkv, int hs);
    /* dq, dk, dv += (strides as q, k, v); work: T reals. out: the forward's output. */
    tb_attn_bwd_fn attn_bwd;
    /* attn_bwd with dq, dk, dv written (=), their old contents (and the row strides'
     * padding) not read. */
    tb_attn_bwd_fn attn_bwd_set;
    /* NULL, or 1 when attn_fwd / attn_bwd take probs == NULL for softmax attention with
     * head size hs (the layers then allocate no (B, H, T, T) buffer). */
    int (*attn_recomputes)(int hs);

    /* Masked cross-entropy and accuracy (layers/loss.h). Labels -100 are ignored, others
     * lie in [0, V). fwd: lse[t] = logsumexp(logits[t]) for supervised rows, *sum = Σ CE
     * (double), *count, *correct (argmax, lowest index on ties). bwd: dlogits[t] =
     * scale · (softmax(logits[t]) - onehot(label)) for supervised rows, 0 for the others
     * (written, not added: dlogits may be logits itself, each element read before it is
     * written, so the model keeps one (n, V) buffer for both). */
    void (*xent_fwd)(real *lse,           // (n)
                     double *sum, int64_t *count, int64_t *correct,
                     const real *logits,  // (n, V)
                     const int32_t *labels, // (n)
                     size_t n, int V);
    void (*xent_bwd)(real *dlogits,       // (n, V) =, may equal logits
                     const real *logits, const real *lse, const int32_t *labels, real scale,
                     size_t n, int V);

    /* Small element-wise helpers the layers need: y = x + a·z (y may equal x or z);
     * *out = Σ z² (double, ascending). */
    void (*axpy)(real *y, const real *x, real a, const real *z, size_t n);
    void (*sum_squares)(double *out, const real *z, size_t n);
    /* The same sum into *out in the backend's memory (a device double on a GPU): queued,
     * not waited for (read later with core.to_host, together with other results). */
    void (*sum_squares_dev)(double *out, const real *z, size_t n);
} tb_ops_dense;

#endif
