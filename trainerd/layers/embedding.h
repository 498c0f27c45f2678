/* Token embedding (MODEL.md section 4), then dropout (site TB_DROPOUT_SITE_EMB):
 *   plain: table [V, C] (name emb.weight);
 *   factorized: table [V, Cl] (emb.embedding.weight), then if conv a Conv1d(Cl -> Cl,
 *   kernel k, padding k/2 both sides, bias; first T outputs kept) along T
 *   (emb.conv.weight [Cl, Cl, k], emb.conv.bias [Cl]), then lin(Cl -> C) (emb.proj.weight).
 * Ids must lie in [0, V): embedding_check_ids validates outside input. */
#ifndef TB_EMBEDDING_H
#define TB_EMBEDDING_H
#include <stddef.h>
#include <stdint.h>
#include "../real.h"
#include "tb_err.h"
#include "linear.h"
#include "dropout.h"

struct tb_backend;

typedef struct tb_embedding {
    int V, C;
    int factorized, conv; /* conv only when factorized */
    int Cl, k;            /* factorized width, conv kernel */
    real *table, *dtable; /* (V, C) plain or (V, Cl) factorized */
    real *conv_w, *dconv_w; /* (Cl, Cl, k) */
    real *conv_b, *dconv_b; /* (Cl) */
    tb_linear proj;         /* (C, Cl) */
} tb_embedding;

/* 0 if every id lies in [0, V), else -1 naming the position and value. */
int embedding_check_ids(tb_err *err, const int32_t *ids, size_t n, int V);

size_t embedding_act_count(const tb_embedding *p, int B, int T);
size_t embedding_scratch_count(const tb_embedding *p, int B, int T);

void embedding_forward(const struct tb_backend *be,
                       real *out,            // (B, T, C)
                       real *act,            // embedding_act_count
                       const int32_t *ids,   // (B, T)
                       const tb_embedding *p, const tb_dropout *d, int B, int T);
/* dtable (rows of ids), conv and proj grads += ... */
void embedding_backward(const struct tb_backend *be,
                        real *scratch,       // embedding_scratch_count
                        const real *dout,    // (B, T, C)
                        const real *act, const int32_t *ids, const tb_embedding *p,
                        const tb_dropout *d, int B, int T);

#endif
