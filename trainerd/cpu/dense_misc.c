/* Element-wise and gather kernels of the dense family: dropout, embedding, Conv1d,
 * position encoding, cross-entropy, small helpers. */
#include <math.h>
#include <string.h>
#include "dense_cpu.h"

#define DROP_CHUNK 256

/* dropout_factor(d, site, i0 + k) for k < n, computing each Philox block once: element
 * i is word i % 4 of block i / 4, exactly tb_rng_at's mapping (the CUDA kernels use it). */
void dense_cpu_dropout_factors(real *m, const tb_dropout *d, uint32_t site, uint64_t i0,
                               size_t n) {
    tb_rng r;
    tb_rng_init(&r, d->seed, TB_RNG_DROPOUT, d->step, d->layer, site);
    uint32_t thr = dropout_threshold(d->p), ctr[4] = {r.ctr[0], r.ctr[1], r.ctr[2], 0}, out[4];
    real keep = (real)(1.0 / (1.0 - (double)d->p));
    size_t k = 0;
    while (k < n) {
        uint64_t i = i0 + k;
        ctr[3] = (uint32_t)(i / 4);
        tb_philox4x32(out, ctr, r.key);
        for (unsigned w = (unsigned)(i % 4); w < 4 && k < n; w++, k++)
            m[k] = (out[w] >> 8) >= thr ? keep : R(0.0);
    }
}

void dense_cpu_dropout_fwd(real *y, const real *x, const tb_dropout *d, uint32_t site,
                           size_t n) {
    if (!dropout_active(d)) {
        if (y != x) memmove(y, x, n * sizeof(real));
        return;
    }
    real m[DROP_CHUNK];
    for (size_t i0 = 0; i0 < n; i0 += DROP_CHUNK) {
        size_t c = n - i0 < DROP_CHUNK ? n - i0 : DROP_CHUNK;
        dense_cpu_dropout_factors(m, d, site, i0, c);
        for (size_t i = 0; i < c; i++) y[i0 + i] = x[i0 + i] * m[i];
    }
}

void dense_cpu_dropout_bwd(real *dx, const real *dy, const tb_dropout *d, uint32_t site,
                           size_t n) {
    if (!dropout_active(d)) {
        for (size_t i = 0; i < n; i++) dx[i] += dy[i];
        return;
    }
    real m[DROP_CHUNK];
    for (size_t i0 = 0; i0 < n; i0 += DROP_CHUNK) {
        size_t c = n - i0 < DROP_CHUNK ? n - i0 : DROP_CHUNK;
        dense_cpu_dropout_factors(m, d, site, i0, c);
        for (size_t i = 0; i < c; i++) dx[i0 + i] += dy[i0 + i] * m[i];
    }
}

void dense_cpu_embed_fwd(real *out, const int32_t *ids, const real *table, size_t n, int C) {
    for (size_t t = 0; t < n; t++)
        memcpy(out + t * C, table + (size_t)ids[t] * C, (size_t)C * sizeof(real));
}

/* Scatter-add in token order (repeated ids accumulate). */
void dense_cpu_embed_bwd(real *dtable, const real *dout, const int32_t *ids, size_t n, int C) {
    for (size_t t = 0; t < n; t++) {
        real *row = dtable + (size_t)ids[t] * C;
        const real *g = dout + t * C;
        for (int j = 0; j < C; j++) row[j] += g[j];
    }
}

/* y[b,t,o] = bias[o] + Σ_j Σ_i w[o,i,j] x[b, t+j-k/2, i] (zero outside [0, T)). */
void dense_cpu_conv1d_fwd(real *y, const real *x, const real *w, const real *bias, int B, int T,
                          int C, int k) {
    int pad = k / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            real *yr = y + ((size_t)b * T + t) * C;
            for (int o = 0; o < C; o++) {
                real s = bias[o];
                for (int j = 0; j < k; j++) {
                    int ts = t + j - pad;
                    if (ts < 0 || ts >= T) continue;
                    const real *xr = x + ((size_t)b * T + ts) * C;
                    const real *wr = w + (size_t)o * C * k + j;
                    for (int i = 0; i < C; i++) s += wr[(size_t)i * k] * xr[i];
                }
                yr[o] = s;
            }
        }
}

void dense_cpu_conv1d_bwd(real *dx, real *dw, real *dbias, const real *dy, const real *x,
                          const real *w, int B, int T, int C, int k) {
    int pad = k / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const real *g = dy + ((size_t)b * T + t) * C;
            for (int o = 0; o < C; o++) {
                real go = g[o];
                dbias[o] += go;
                for (int j = 0; j < k; j++) {
                    int ts = t + j - pad;
                    if (ts < 0 || ts >= T) continue;
                    const real *xr = x + ((size_t)b * T + ts) * C;
                    real *dxr = dx + ((size_t)b * T + ts) * C;
                    const real *wr = w + (size_t)o * C * k + j;
                    real *dwr = dw + (size_t)o * C * k + j;
                    for (int i = 0; i < C; i++) {
                        dwr[(size_t)i * k] += go * xr[i];
                        dxr[i] += go * wr[(size_t)i * k];
                    }
                }
            }
        }
}

void dense_cpu_posenc_apply(real *y, const real *x, const real *a, const real *b,
                            int hyperbolic, int transpose, size_t n, int T, int H, int hs,
                            size_t ld) {
    int P = hs / 2;
    /* matrix [[a, s01·b], [s10·b, a]] */
    real s01 = hyperbolic ? R(1.0) : R(-1.0), s10 = R(1.0);
    if (transpose) {
        real tmp = s01;
        s01 = s10;
        s10 = tmp;
    }
    for (size_t r = 0; r < n; r++) {
        int t = (int)(r % (size_t)T);
        const real *ar = a + (size_t)t * P, *br = b + (size_t)t * P;
        for (int h = 0; h < H; h++) {
            const real *xr = x + r * ld + (size_t)h * hs;
            real *yr = y + r * ld + (size_t)h * hs;
            for (int i = 0; i < P; i++) {
                real x0 = xr[2 * i], x1 = xr[2 * i + 1];
                yr[2 * i] = ar[i] * x0 + s01 * br[i] * x1;
                yr[2 * i + 1] = s10 * br[i] * x0 + ar[i] * x1;
            }
            if (hs & 1) yr[hs - 1] = xr[hs - 1];
        }
    }
}

/* Row by row: max and argmax (first index), log-sum-exp with the sum in double. */
void dense_cpu_xent_fwd(real *lse, double *sum, int64_t *count, int64_t *correct,
                        const real *logits, const int32_t *labels, size_t n, int V) {
    double s = 0;
    int64_t cnt = 0, ok = 0;
    for (size_t t = 0; t < n; t++) {
        lse[t] = 0;
        int32_t y = labels[t];
        if (y < 0 || y >= V) continue;
        const real *z = logits + t * V;
        real m = z[0];
        int am = 0;
        for (int j = 1; j < V; j++)
            if (z[j] > m) {
                m = z[j];
                am = j;
            }
        double e = 0;
        for (int j = 0; j < V; j++) e += exp((double)(z[j] - m));
        real l = m + (real)log(e);
        lse[t] = l;
        s += (double)(l - z[y]);
        cnt++;
        ok += am == y;
    }
    *sum = s;
    *count = cnt;
    *correct = ok;
}

void dense_cpu_xent_bwd(real *dlogits, const real *logits, const real *lse,
                        const int32_t *labels, real scale, size_t n, int V) {
    for (size_t t = 0; t < n; t++) {
        int32_t y = labels[t];
        const real *z = logits + t * V;
        real *g = dlogits + t * V; /* may be z: element j is read, then written */
        if (y < 0 || y >= V) {
            for (int j = 0; j < V; j++) g[j] = 0;
            continue;
        }
        real l = lse[t];
        for (int j = 0; j < V; j++) g[j] = scale * r_exp(z[j] - l);
        g[y] -= scale;
    }
}

void dense_cpu_axpy(real *y, const real *x, real a, const real *z, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = x[i] + a * z[i];
}

void dense_cpu_sum_squares(double *out, const real *z, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)z[i] * z[i];
    *out = s;
}
