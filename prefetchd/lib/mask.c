/* MLM masking (mask.h gives the exact definition). */
#include "mask.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tb_rng.h"

int tb_mask_init(tb_mask *m, const tb_spm *spm, double p, tb_err *err) {
    memset(m, 0, sizeof *m);
    if (!(p > 0.0 && p < 1.0)) return tb_err_set(err, "mask: probability %g is not in (0, 1)", p);
    tb_spm_specials sp = tb_spm_get_specials(spm);
    if (sp.mask < 0) return tb_err_set(err, "mask: tokenizer has no [MASK] piece");
    if (sp.pad < 0) return tb_err_set(err, "mask: tokenizer has no [PAD] piece");
    int32_t V = tb_spm_vocab_size(spm);
    if (V <= 0) return tb_err_set(err, "mask: tokenizer has no pieces");
    m->p = p;
    m->mask_tenths = 8;
    m->mask_id = sp.mask;
    m->pad_id = sp.pad;
    m->vocab = V;
    m->special = calloc((size_t)V, 1);
    m->normal = malloc((size_t)V * sizeof *m->normal);
    if (!m->special || !m->normal) {
        tb_mask_free(m);
        return tb_err_set(err, "mask: out of memory for %d ids", V);
    }
    const int32_t named[] = {sp.cls, sp.sep, sp.mask, sp.pad, sp.unk, sp.bos, sp.eos};
    for (size_t i = 0; i < sizeof named / sizeof named[0]; i++)
        if (named[i] >= 0 && named[i] < V) m->special[named[i]] = 1;
    for (int32_t id = 0; id < V; id++) {
        if (tb_spm_is_special(spm, id)) m->special[id] = 1;
        if (!m->special[id]) m->normal[m->n_normal++] = id;
    }
    if (m->n_normal == 0) {
        tb_mask_free(m);
        return tb_err_set(err, "mask: tokenizer has no non-special ids");
    }
    return 0;
}

void tb_mask_free(tb_mask *m) {
    if (!m) return;
    free(m->special);
    free(m->normal);
    memset(m, 0, sizeof *m);
}

int tb_mask_share_tenths(double share) {
    if (!(share >= 0.2 && share <= 1.0)) return -1;
    double t = share * 10.0;
    long k = lround(t);
    return fabs(t - (double)k) > 1e-9 || k % 2 ? -1 : (int)k;
}

int tb_mask_set_share(tb_mask *m, double share, tb_err *err) {
    int k = tb_mask_share_tenths(share);
    if (k < 0)
        return tb_err_set(err, "mask: [MASK] share %g is not one of 0.2, 0.4, 0.6, 0.8, 1", share);
    m->mask_tenths = k;
    return 0;
}

size_t tb_mask_count(double p, size_t n) {
    if (n == 0) return 0;
    size_t k = (size_t)floor(p * (double)n + 1e-9);
    if (k < 1) k = 1;
    if (k > n) k = n;
    return k;
}

size_t tb_mask_apply(int32_t *ids, int32_t *labels, uint32_t *scratch, size_t T,
                     const tb_mask *m, uint64_t seed, uint64_t epoch, uint64_t sample) {
    size_t n = 0;
    for (size_t t = 0; t < T; t++) {
        labels[t] = TB_MASK_IGNORE;
        int32_t id = ids[t];
        int special = id < 0 || id >= m->vocab || m->special[id] || id == m->pad_id;
        if (!special) scratch[n++] = (uint32_t)t;
    }
    size_t k = tb_mask_count(m->p, n);
    tb_rng r;
    tb_rng_init(&r, seed, TB_RNG_MASK, (uint32_t)epoch, (uint32_t)sample,
                (uint32_t)(sample >> 32));
    /* Partial Fisher-Yates: scratch[0..k) become the chosen positions. */
    for (size_t i = 0; i < k; i++) {
        size_t j = i + tb_rng_below(&r, (uint32_t)(n - i));
        uint32_t tmp = scratch[i];
        scratch[i] = scratch[j];
        scratch[j] = tmp;
    }
    for (size_t i = 0; i < k; i++) {
        size_t t = scratch[i];
        labels[t] = ids[t];
        uint32_t u = tb_rng_below(&r, 10);
        if (u < (uint32_t)m->mask_tenths) {
            ids[t] = m->mask_id;
        } else if (u < (uint32_t)(m->mask_tenths + (10 - m->mask_tenths) / 2)) {
            ids[t] = m->normal[tb_rng_below(&r, (uint32_t)m->n_normal)];
        }
    }
    return k;
}
