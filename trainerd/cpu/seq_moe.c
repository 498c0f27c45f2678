/* MoE routing, gather and scatter on the CPU (MODEL.md 7). */
#include "../backend.h"
#include <math.h>
#include <stdlib.h>

static void cpu_moe_route_forward(real *probs, int32_t *sel, real *gate, int32_t *order,
                                  int32_t *offsets, real *lbal, const real *logits, int ntok,
                                  int E, int K, int renorm, double cf,
                                  const struct tb_backend *be) {
    (void)be;
    if (E > TB_MOE_MAX_EXPERTS || K > E || K < 1) abort(); /* the config validates these */
    size_t sE = (size_t)E, sK = (size_t)K;
    for (int e = 0; e <= E; e++) offsets[e] = 0;
    /* Capacity in assignments per expert, ceil(cf·K·tokens/E) in double. */
    int64_t cap = cf > 0 ? (int64_t)ceil(cf * (double)K * (double)ntok / (double)E) : INT64_MAX;
    for (int t = 0; t < ntok; t++) {
        const real *lt = logits + (size_t)t * sE;
        real *pt = probs + (size_t)t * sE;
        real mx = lt[0];
        for (int e = 1; e < E; e++)
            if (lt[e] > mx) mx = lt[e];
        real sum = 0;
        for (int e = 0; e < E; e++) sum += (pt[e] = r_exp(lt[e] - mx));
        for (int e = 0; e < E; e++) pt[e] /= sum;
        /* Top-K = the first K of a stable descending sort: repeatedly the largest not yet
         * taken, lower index on ties (strict >). */
        int32_t *st = sel + (size_t)t * sK;
        real psum = 0;
        for (int j = 0; j < K; j++) {
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int jj = 0; jj < j; jj++) taken |= st[jj] == e;
                if (taken) continue;
                if (best < 0 || pt[e] > pt[best]) best = e;
            }
            st[j] = best;
            psum += pt[best];
        }
        for (int j = 0; j < K; j++)
            gate[(size_t)t * sK + (size_t)j] = renorm ? pt[st[j]] / psum : pt[st[j]];
        /* Capacity: experts accept in token order; offsets[e+1] counts accepted so far. */
        for (int j = 0; j < K; j++) {
            int e = st[j];
            if ((int64_t)offsets[e + 1] < cap)
                offsets[e + 1]++;
            else
                st[j] = -1 - e;
        }
    }
    for (int e = 0; e < E; e++) offsets[e + 1] += offsets[e];
    /* order: kept assignment indices grouped by expert, token order inside. */
    for (int e = 0; e < E; e++) {
        int32_t pos = offsets[e];
        for (size_t a = 0; a < (size_t)ntok * sK; a++)
            if (sel[a] == e) order[pos++] = (int32_t)a;
    }
    /* L_bal = E Σ_e f_e P_e, f_e = #{t : e ∈ topK(t)} / (K·tokens) (before drops),
     * P_e = mean_t p_e(t). */
    double lb = 0;
    for (int e = 0; e < E; e++) {
        double cnt = 0, pe = 0;
        for (size_t a = 0; a < (size_t)ntok * sK; a++)
            cnt += (sel[a] == e || sel[a] == -1 - e);
        for (int t = 0; t < ntok; t++) pe += (double)probs[(size_t)t * sE + (size_t)e];
        lb += (cnt / ((double)K * (double)ntok)) * (pe / (double)ntok);
    }
    lbal[0] = (real)((double)E * lb);
}

static void cpu_moe_route_backward(real *dlogits, const real *dgate, const real *probs,
                                   const int32_t *sel, real bal_scale, int ntok, int E, int K,
                                   int renorm, const struct tb_backend *be) {
    (void)be;
    if (E > TB_MOE_MAX_EXPERTS) abort();
    size_t sE = (size_t)E, sK = (size_t)K;
    /* ∂(bal_scale·L_bal)/∂p_e(t) = bal_scale · E · f_e / tokens (f_e piecewise constant). */
    real dbal[TB_MOE_MAX_EXPERTS], dp[TB_MOE_MAX_EXPERTS];
    for (int e = 0; e < E; e++) {
        double cnt = 0;
        for (size_t a = 0; a < (size_t)ntok * sK; a++) cnt += (sel[a] == e || sel[a] == -1 - e);
        dbal[e] = (real)((double)bal_scale * (double)E * (cnt / ((double)K * (double)ntok)) /
                         (double)ntok);
    }
    for (int t = 0; t < ntok; t++) {
        const real *pt = probs + (size_t)t * sE;
        const int32_t *st = sel + (size_t)t * sK;
        const real *dg = dgate + (size_t)t * sK;
        for (int e = 0; e < E; e++) dp[e] = dbal[e];
        if (renorm) {
            /* g_j = p_{e_j} / S, S = Σ_j p_{e_j} (dropped ones included):
             * ∂/∂p_{e_m} = dg_m / S - Σ_j dg_j p_{e_j} / S². */
            real S = 0, cross = 0;
            for (int j = 0; j < K; j++) {
                int e = st[j] >= 0 ? st[j] : -1 - st[j];
                S += pt[e];
            }
            for (int j = 0; j < K; j++)
                if (st[j] >= 0) cross += dg[j] * pt[st[j]];
            for (int j = 0; j < K; j++) {
                int e = st[j] >= 0 ? st[j] : -1 - st[j];
                dp[e] += (st[j] >= 0 ? dg[j] / S : 0) - cross / (S * S);
            }
        } else {
            for (int j = 0; j < K; j++)
                if (st[j] >= 0) dp[st[j]] += dg[j];
        }
        /* softmax: dl_e = p_e (dp_e - Σ_j p_j dp_j). */
        real dot = 0;
        for (int e = 0; e < E; e++) dot += pt[e] * dp[e];
        real *dl = dlogits + (size_t)t * sE;
        for (int e = 0; e < E; e++) dl[e] += pt[e] * (dp[e] - dot);
    }
}

static void cpu_moe_gather(real *xe, const real *x, const int32_t *order, int n, int K, int C,
                           const struct tb_backend *be) {
    (void)be;
    for (int j = 0; j < n; j++) {
        real *dst = xe + (size_t)j * (size_t)C;
        if (order[j] < 0) { /* padding */
            for (int c = 0; c < C; c++) dst[c] = 0;
            continue;
        }
        const real *src = x + (size_t)(order[j] / K) * (size_t)C;
        for (int c = 0; c < C; c++) dst[c] = src[c];
    }
}

static void cpu_moe_gather_backward(real *dx, const real *dxe, const int32_t *order, int n,
                                    int K, int C, const struct tb_backend *be) {
    (void)be;
    for (int j = 0; j < n; j++) {
        if (order[j] < 0) continue; /* padding */
        real *dst = dx + (size_t)(order[j] / K) * (size_t)C;
        const real *src = dxe + (size_t)j * (size_t)C;
        for (int c = 0; c < C; c++) dst[c] += src[c];
    }
}

static void cpu_moe_scatter(real *out, const real *ye, const real *gate, const int32_t *order,
                            int n, int K, int C, const struct tb_backend *be) {
    (void)be;
    for (int j = 0; j < n; j++) {
        if (order[j] < 0) continue; /* padding */
        real g = gate[order[j]];
        real *dst = out + (size_t)(order[j] / K) * (size_t)C;
        const real *src = ye + (size_t)j * (size_t)C;
        for (int c = 0; c < C; c++) dst[c] += g * src[c];
    }
}

static void cpu_moe_scatter_backward(real *dye, real *dgate, const real *dout, const real *ye,
                                     const real *gate, const int32_t *order, int n, int K,
                                     int C, const struct tb_backend *be) {
    (void)be;
    for (int j = 0; j < n; j++) {
        if (order[j] < 0) continue; /* padding */
        real g = gate[order[j]];
        const real *d = dout + (size_t)(order[j] / K) * (size_t)C;
        const real *y = ye + (size_t)j * (size_t)C;
        real *dy = dye + (size_t)j * (size_t)C;
        real acc = 0;
        for (int c = 0; c < C; c++) {
            dy[c] += g * d[c];
            acc += d[c] * y[c];
        }
        dgate[order[j]] += acc;
    }
}

static void cpu_moe_pad_order(int32_t *pad, int32_t *slot, const int32_t *order,
                              const int32_t *offsets, int E, int P, const struct tb_backend *be) {
    (void)be;
    for (int e = 0; e < E; e++) {
        int n = offsets[e + 1] - offsets[e];
        for (int i = 0; i < P; i++) {
            size_t r = (size_t)e * P + i;
            pad[r] = i < n ? order[offsets[e] + i] : -1;
            if (i < n) slot[order[offsets[e] + i]] = (int32_t)r;
        }
    }
}

/* Token t's kept assignments' slots in ascending order (K <= TB_MOE_MAX_EXPERTS, distinct
 * experts, so distinct slots); returns their count and writes the assignment indices. */
static int kept_by_slot(int32_t *as, const int32_t *sel, const int32_t *slot, int t, int K) {
    int m = 0;
    for (int k = 0; k < K; k++) {
        int32_t a = t * K + k;
        if (sel[a] < 0) continue;
        int i = m++;
        while (i > 0 && slot[as[i - 1]] > slot[a]) as[i] = as[i - 1], i--;
        as[i] = a;
    }
    return m;
}

/* dst[t] += (gate[a] ·) src[slot[a]] over token t's kept assignments in slot order. */
static void slots_sum(real *dst_all, const real *src_all, const real *gate, const int32_t *sel,
                      const int32_t *slot, int ntok, int K, int C) {
    int32_t as[TB_MOE_MAX_EXPERTS];
    for (int t = 0; t < ntok; t++) {
        int m = kept_by_slot(as, sel, slot, t, K);
        real *dst = dst_all + (size_t)t * (size_t)C;
        for (int j = 0; j < m; j++) {
            const real *src = src_all + (size_t)slot[as[j]] * (size_t)C;
            if (gate) {
                real g = gate[as[j]];
                for (int c = 0; c < C; c++) dst[c] += g * src[c];
            } else {
                for (int c = 0; c < C; c++) dst[c] += src[c];
            }
        }
    }
}

static void cpu_moe_scatter_slots(real *out, const real *ye, const real *gate, const int32_t *sel,
                                  const int32_t *slot, int ntok, int K, int C,
                                  const struct tb_backend *be) {
    (void)be;
    slots_sum(out, ye, gate, sel, slot, ntok, K, C);
}

static void cpu_moe_gather_backward_slots(real *dx, const real *dxe, const int32_t *sel,
                                          const int32_t *slot, int ntok, int K, int C,
                                          const struct tb_backend *be) {
    (void)be;
    slots_sum(dx, dxe, NULL, sel, slot, ntok, K, C);
}

void tb_cpu_seq_moe_init(tb_ops_seq *ops);
void tb_cpu_seq_moe_init(tb_ops_seq *ops) {
    ops->moe_route_forward = cpu_moe_route_forward;
    ops->moe_route_backward = cpu_moe_route_backward;
    ops->moe_pad_order = cpu_moe_pad_order;
    ops->moe_scatter_slots = cpu_moe_scatter_slots;
    ops->moe_gather_backward_slots = cpu_moe_gather_backward_slots;
    ops->moe_gather = cpu_moe_gather;
    ops->moe_gather_backward = cpu_moe_gather_backward;
    ops->moe_scatter = cpu_moe_scatter;
    ops->moe_scatter_backward = cpu_moe_scatter_backward;
}
