#include "embedding.h"
#include "../backend.h"

int embedding_check_ids(tb_err *err, const int32_t *ids, size_t n, int V) {
    for (size_t t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= V)
            return tb_err_set(err, "token ids[%zu]: %d is outside [0, %d)", t, (int)ids[t], V);
    return 0;
}

/* Activations (factorized): e = table[ids] (n, Cl), c = conv(e) (n, Cl) when conv,
 * act of proj. Plain keeps nothing. */
size_t embedding_act_count(const tb_embedding *p, int B, int T) {
    size_t n = (size_t)B * T;
    if (!p->factorized) return 0;
    return n * p->Cl * (p->conv ? 2 : 1) + linear_act_count(&p->proj, n);
}

/* g (n, C) = dropoutᵀ(dout); factorized: dc (n, Cl), de (n, Cl), proj scratch. */
size_t embedding_scratch_count(const tb_embedding *p, int B, int T) {
    size_t n = (size_t)B * T;
    size_t s = n * p->C;
    if (p->factorized) s += 2 * n * p->Cl + linear_scratch_count(&p->proj, n);
    return s;
}

void embedding_forward(const tb_backend *be, real *out, real *act, const int32_t *ids,
                       const tb_embedding *p, const tb_dropout *d, int B, int T) {
    size_t n = (size_t)B * T;
    if (!p->factorized) {
        be->dense.embed_fwd(out, ids, p->table, n, p->C);
    } else {
        real *e = act, *x = e;
        be->dense.embed_fwd(e, ids, p->table, n, p->Cl);
        if (p->conv) {
            x = e + n * p->Cl;
            be->dense.conv1d_fwd(x, e, p->conv_w, p->conv_b, B, T, p->Cl, p->k);
        }
        linear_forward(be, out, x + n * p->Cl, x, &p->proj, n);
    }
    be->dense.dropout_fwd(out, out, d, TB_DROPOUT_SITE_EMB, n * p->C);
}

void embedding_backward(const tb_backend *be, real *scratch, const real *dout, const real *act,
                        const int32_t *ids, const tb_embedding *p, const tb_dropout *d, int B,
                        int T) {
    size_t n = (size_t)B * T;
    real *g = scratch;
    be->core.fill(g, R(0.0), n * p->C);
    be->dense.dropout_bwd(g, dout, d, TB_DROPOUT_SITE_EMB, n * p->C);
    if (!p->factorized) {
        be->dense.embed_bwd(p->dtable, g, ids, n, p->C);
        return;
    }
    const real *e = act, *x = p->conv ? e + n * p->Cl : e;
    real *dc = g + n * p->C, *de = dc + n * p->Cl, *lscr = de + n * p->Cl;
    be->core.fill(dc, R(0.0), 2 * n * p->Cl);
    linear_backward(be, dc, lscr, g, x + n * p->Cl, x, &p->proj, n);
    if (p->conv) {
        be->dense.conv1d_bwd(de, p->dconv_w, p->dconv_b, dc, e, p->conv_w, B, T, p->Cl, p->k);
        be->dense.embed_bwd(p->dtable, de, ids, n, p->Cl);
    } else {
        be->dense.embed_bwd(p->dtable, dc, ids, n, p->Cl);
    }
}
