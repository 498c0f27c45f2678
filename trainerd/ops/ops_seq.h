/* Op family "seq" of the backend table (see trainerd/backend.h for conventions):
 * retention, the selective scan, the causal depthwise conv, the Titan memory, MoE
 * routing and the few element-wise ops the Mamba and MoE layers need.
 *
 * Conventions (backend.h): forward ops overwrite their outputs; backward ops ACCUMULATE
 * (+=) into every gradient output. Token-major tensors are (B, T, ·) with b-major tokens
 * (b·T + t); channels that feed heads are head-major (h·hs + d), MODEL.md top.
 * Integer side outputs (MoE routing) are int32 in the backend's memory. */
#ifndef TB_OPS_SEQ_H
#define TB_OPS_SEQ_H
#include <stddef.h>
#include <stdint.h>
#include "../real.h"

struct tb_backend;

/* The largest expert count the CPU routing supports (per-token scratch lives on the
 * stack); the config must reject more. */
#define TB_MOE_MAX_EXPERTS 256

/* Expert activation of the FFN (MODEL.md 7). */
enum tb_act_kind { TB_ACT_SILU = 0, TB_ACT_GELU = 1 /* exact erf gelu */ };

typedef struct tb_ops_seq {
    /* Retention core (MODEL.md 6 'retnet'), per head h with H heads of width hs:
     *   y_n = Σ_m (q_n · k_m / sqrt(hs)) γ_h^|n-m| [m ≤ n unless bidirectional] v_m,
     *   γ_h = 1 - exp(ln(1/32) + (ln(1/512) - ln(1/32)) h/(H-1)), γ_0 = 1 - 1/32 if H = 1.
     * Computed in the quadratic (parallel) form; the backward recomputes q·k and dy·v, so
     * nothing is stored. */
    void (*retention_forward)(real *y,       // (B, T, H*hs)
                              const real *q, // (B, T, H*hs)
                              const real *k, // (B, T, H*hs)
                              const real *v, // (B, T, H*hs)
                              int B, int T, int H, int hs, int bidirectional,
                              const struct tb_backend *be);
    void (*retention_backward)(real *dq,       // (B, T, H*hs) +=
                               real *dk,       // (B, T, H*hs) +=
                               real *dv,       // (B, T, H*hs) +=
                               const real *dy, // (B, T, H*hs)
                               const real *q, const real *k, const real *v, // (B, T, H*hs)
                               int B, int T, int H, int hs, int bidirectional,
                               const struct tb_backend *be);

    /* Selective scan (MODEL.md 6 'mamba'), A = -exp(A_log), h_{-1} = 0:
     *   h_t = exp(Δ_t A) ⊙ h_{t-1} + (Δ_t Bm_t) xc_t;  y_t = h_t Cm_t + D ⊙ xc_t.
     * Bm and Cm rows are ld_bc reals apart (they are column slices of x_proj's output).
     * The forward keeps states in `states` for the reverse-time backward: with E =
     * scan_state_every (0 counts as 1), the state of each t with t % E == E - 1, as row
     * b·ceil(T / E) + t / E of Di·N reals (B·ceil(T / E)·Di·N reals in all). The CPU keeps
     * every state (E = 1); a GPU backend keeps chunk ends and recomputes inside chunks. */
    void (*scan_forward)(real *y,            // (B, T, Di)
                         real *states,       // (B, ceil(T / E), Di, N) out, for the backward
                         const real *xc,     // (B, T, Di)
                         const real *delta,  // (B, T, Di)
                         const real *A_log,  // (Di, N)
                         const real *Bm,     // (B, T, ld_bc), first N used
                         const real *Cm,     // (B, T, ld_bc), first N used
                         const real *D,      // (Di)
                         int B, int T, int Di, int N, int ld_bc,
                         const struct tb_backend *be);
    void (*scan_backward)(real *dxc,          // (B, T, Di) +=
                          real *ddelta,       // (B, T, Di) +=
                          real *dA_log,       // (Di, N) +=
                          real *dBm,          // (B, T, ld_bc) +=, first N
                          real *dCm,          // (B, T, ld_bc) +=, first N
                          real *dD,           // (Di) +=
                          const real *dy,     // (B, T, Di)
                          const real *states, // (B, ceil(T / E), Di, N) from the forward
                          const real *xc, const real *delta, // (B, T, Di)
                          const real *A_log,  // (Di, N)
                          const real *Bm, const real *Cm, // (B, T, ld_bc)
                          const real *D,      // (Di)
                          int B, int T, int Di, int N, int ld_bc,
                          const struct tb_backend *be);

    /* Causal depthwise Conv1d (PyTorch weight [Di, 1, k]), k-1 zeros on the left:
     *   y_t[i] = bias[i] + Σ_j w[i, j] x_{t-(k-1)+j}[i]   (tap k-1 is the current token). */
    void (*conv_causal_forward)(real *y,          // (B, T, Di)
                                const real *x,    // (B, T, Di)
                                const real *w,    // (Di, k)
                                const real *bias, // (Di)
                                int B, int T, int Di, int k, const struct tb_backend *be);
    void (*conv_causal_backward)(real *dx,       // (B, T, Di) +=
                                 real *dw,       // (Di, k) +=
                                 real *dbias,    // (Di) +=
                                 const real *dy, // (B, T, Di)
                                 const real *x,  // (B, T, Di)
                                 const real *w,  // (Di, k)
                                 int B, int T, int Di, int k, const struct tb_backend *be);

    /* Titan memory read (MODEL.md 6, paper eq. 31-32), per head h of width hs:
     *   qn = q / max(‖q‖, 1e-12), kn likewise (per head); a = sigmoid(decay[h]);
     *   M_t = a M_{t-1} + (1 - a) kn_t v_tᵀ;  r_t = M_tᵀ qn_t,
     * evaluated in the equivalent parallel form r_t = (1-a) Σ_{s≤t} a^{t-s} (qn_t·kn_s) v_s.
     * qn and kn are outputs kept for the backward. */
    void (*titan_forward)(real *r,           // (B, T, H*hs)
                          real *qn,          // (B, T, H*hs) out
                          real *kn,          // (B, T, H*hs) out
                          const real *q,     // (B, T, H*hs)
                          const real *k,     // (B, T, H*hs)
                          const real *v,     // (B, T, H*hs)
                          const real *decay, // (H) the mem_decay logits
                          int B, int T, int H, int hs, const struct tb_backend *be);
    void (*titan_backward)(real *dq,          // (B, T, H*hs) +=
                           real *dk,          // (B, T, H*hs) +=
                           real *dv,          // (B, T, H*hs) +=
                           real *ddecay,      // (H) +=
                           const real *dr,    // (B, T, H*hs)
                           const real *q, const real *k, // (B, T, H*hs)
                           const real *qn, const real *kn, // (B, T, H*hs) from the forward
                           const real *v,     // (B, T, H*hs)
                           const real *decay, // (H)
                           int B, int T, int H, int hs, const struct tb_backend *be);

    /* MoE routing (MODEL.md 7) over ntok tokens from router logits:
     *   probs = softmax(logits); top-K by a stable descending sort (ties: lower index);
     *   gate = p_topk / Σ p_topk if renorm else p_topk;
     *   capacity ceil(cf·K·ntok/E) computed in double (cf = 0: none); each expert accepts
     *   its assignments in token order; sel[t·K+j] = e when kept, -1-e when dropped;
     *   order lists the kept assignment indices (t·K+j) grouped by expert, token order
     *   inside; offsets[e]..offsets[e+1] is expert e's range (offsets[E] = kept count);
     *   lbal[0] = E Σ_e f_e P_e with f_e counted before capacity drops. */
    void (*moe_route_forward)(real *probs,        // (ntok, E)
                              int32_t *sel,       // (ntok, K)
                              real *gate,         // (ntok, K) (also for dropped ones)
                              int32_t *order,     // (ntok*K), first offsets[E] used
                              int32_t *offsets,   // (E + 1)
                              real *lbal,         // (1)
                              const real *logits, // (ntok, E)
                              int ntok, int E, int K, int renorm, double cf,
                              const struct tb_backend *be);
    /* dlogits += ∂/∂logits of Σ dgate ⊙ gate (kept assignments only) + bal_scale · L_bal
     * (bal_scale = λ_bal / number of MoE evaluations; f_e is piecewise constant). */
    void (*moe_route_backward)(real *dlogits,      // (ntok, E) +=
                               const real *dgate,  // (ntok, K)
                               const real *probs,  // (ntok, E)
                               const int32_t *sel, // (ntok, K)
                               real bal_scale, int ntok, int E, int K, int renorm,
                               const struct tb_backend *be);
    /* Expert-padded order (the fixed-capacity layout, no host synchronisation): for e < E,
     * i < P: pad[e·P + i] = order[offsets[e] + i] when i < offsets[e+1] - offsets[e],
     * else -1 (a padding row). P >= each expert's kept count (its capacity). And its
     * inverse: slot[a] = the padded row of each kept assignment a (entries of dropped
     * assignments, sel < 0, are not written). */
    void (*moe_pad_order)(int32_t *pad,           // (E·P)
                          int32_t *slot,          // (ntok*K)
                          const int32_t *order,   // (ntok*K)
                          const int32_t *offsets, // (E + 1)
                          int E, int P, const struct tb_backend *be);
    /* moe_scatter over padded rows by token: out[t] += gate[a] · ye[slot[a]] for the kept
     * assignments a = t·K + k (sel[a] >= 0) in ascending slot order (expert order): the
     * values of moe_scatter over the rows of `pad`, with no sort. */
    void (*moe_scatter_slots)(real *out,           // (ntok, C) +=
                              const real *ye,      // (E·P, C)
                              const real *gate,    // (ntok, K)
                              const int32_t *sel,  // (ntok, K)
                              const int32_t *slot, // (ntok, K)
                              int ntok, int K, int C, const struct tb_backend *be);
    /* Likewise moe_gather_backward: dx[t] += dxe[slot[a]] over t's kept assignments in
     * ascending slot order. */
    void (*moe_gather_backward_slots)(real *dx,            // (ntok, C) +=
                                      const real *dxe,     // (E·P, C)
                                      const int32_t *sel,  // (ntok, K)
                                      const int32_t *slot, // (ntok, K)
                                      int ntok, int K, int C, const struct tb_backend *be);
    /* In the four ops below, a row j with order[j] < 0 is padding (moe_pad_order): gather
     * writes zeros to it, gather_backward and scatter skip it, scatter_backward leaves its
     * dye alone (the writing form writes zeros) and touches no dgate. */
    /* xe[j] = x[order[j] / K] for j < n. */
    void (*moe_gather)(real *xe,             // (n, C)
                       const real *x,        // (ntok, C)
                       const int32_t *order, // (n)
                       int n, int K, int C, const struct tb_backend *be);
    /* dx[order[j] / K] += dxe[j]. */
    void (*moe_gather_backward)(real *dx,             // (ntok, C) +=
                                const real *dxe,      // (n, C)
                                const int32_t *order, // (n)
                                int n, int K, int C, const struct tb_backend *be);
    /* out[order[j] / K] += gate[order[j]] · ye[j] (accumulates: experts summed in order). */
    void (*moe_scatter)(real *out,            // (ntok, C) +=
                        const real *ye,       // (n, C)
                        const real *gate,     // (ntok, K)
                        const int32_t *order, // (n)
                        int n, int K, int C, const struct tb_backend *be);
    /* dye[j] += gate[a] dout[a / K];  dgate[a] += dout[a / K] · ye[j], a = order[j]. */
    void (*moe_scatter_backward)(real *dye,            // (n, C) +=
                                 real *dgate,          // (ntok, K) +=
                                 const real *dout,     // (ntok, C)
                                 const real *ye,       // (n, C)
                                 const real *gate,     // (ntok, K)
                                 const int32_t *order, // (n)
                                 int n, int K, int C, const struct tb_backend *be);

    /* Element-wise helpers of these layers (rows × cols with row strides, so column
     * slices of a wider tensor can be read and written in place). */
    /* y = act(x) (TB_ACT_SILU or TB_ACT_GELU), n elements. */
    void (*act_forward)(real *y, const real *x, size_t n, int kind, const struct tb_backend *be);
    void (*act_backward)(real *dx /* += */, const real *dy, const real *x, size_t n, int kind,
                         const struct tb_backend *be);
    /* y = softplus(x + bias[col]) (x for x > 20), rows × cols. */
    void (*softplus_bias_forward)(real *y,          // (rows, cols)
                                  const real *x,    // (rows, cols)
                                  const real *bias, // (cols)
                                  size_t rows, int cols, const struct tb_backend *be);
    void (*softplus_bias_backward)(real *dx,       // (rows, cols) +=
                                   real *dbias,    // (cols) +=
                                   const real *dy, // (rows, cols)
                                   const real *x,  // (rows, cols)
                                   const real *bias, // (cols)
                                   size_t rows, int cols, const struct tb_backend *be);
    /* y = a ⊙ silu(g); a and g rows lda / ldg apart, y contiguous (rows, cols). */
    void (*mul_silu_forward)(real *y, const real *a, const real *g, size_t rows, int cols,
                             int lda, int ldg, const struct tb_backend *be);
    void (*mul_silu_backward)(real *da /* += */, real *dg /* += */, const real *dy,
                              const real *a, const real *g, size_t rows, int cols, int lda,
                              int ldg, const struct tb_backend *be);
    /* dst[r, c] = src[r, c] (dst rows ldd apart, src rows lds apart): column slices. */
    void (*copy_cols)(real *dst, const real *src, size_t rows, int cols, int ldd, int lds,
                      const struct tb_backend *be);
    /* dst[r, c] += src[r, c]: the backward of copy_cols (with the roles swapped). */
    void (*add_cols)(real *dst, const real *src, size_t rows, int cols, int ldd, int lds,
                     const struct tb_backend *be);

    /* The scan's state spacing E (scan_forward): 1 (or 0) keeps every state. */
    int scan_state_every;

    /* act_backward and moe_scatter_backward with dx, resp. dye, written (=) instead of
     * added, their old contents not read (dgate is still added to): a gradient that starts
     * at zero without a zero fill. */
    void (*act_backward_set)(real *dx, const real *dy, const real *x, size_t n, int kind,
                             const struct tb_backend *be);
    void (*moe_scatter_backward_set)(real *dye, real *dgate, const real *dout, const real *ye,
                                     const real *gate, const int32_t *order, int n, int K, int C,
                                     const struct tb_backend *be);
    /* moe_scatter_slots / moe_gather_backward_slots with out / dx written: the bits of a
     * zero fill then the adding op. */
    void (*moe_scatter_slots_set)(real *out, const real *ye, const real *gate, const int32_t *sel,
                                  const int32_t *slot, int ntok, int K, int C,
                                  const struct tb_backend *be);
    void (*moe_gather_backward_slots_set)(real *dx, const real *dxe, const int32_t *sel,
                                          const int32_t *slot, int ntok, int K, int C,
                                          const struct tb_backend *be);
} tb_ops_seq;

/* Reals of the scan's kept states for B x T tokens at spacing every (scan_forward). */
static inline size_t tb_scan_states_count(int every, int B, int T, int Di, int N) {
    size_t e = every > 1 ? (size_t)every : 1;
    return (size_t)B * (((size_t)T + e - 1) / e) * (size_t)Di * (size_t)N;
}

#endif
