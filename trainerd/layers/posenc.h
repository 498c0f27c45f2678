/* Position encodings on q and k (MODEL.md section 5), per head of hs channels, pairs
 * (2i, 2i+1), P = hs/2 pairs; with odd hs the last channel passes unchanged.
 *   hope:  f_i = exp(-ln(base)·i/(P-1)) (f_0 = 1 when P = 1), g = 1 + 0.05·l,
 *          θ = t·f_i·g, rotation: y0 = x0 cos θ - x1 sin θ, y1 = x0 sin θ + x1 cos θ.
 *   hope_hyperbolic (the reference code): θ = clamp(t·f_i·g, -12, 12),
 *          ρ = exp(-damping·g·t), y0 = ρ(x0 cosh θ + x1 sinh θ), y1 = ρ(x0 sinh θ + x1 cosh θ).
 *   rope:  f_i = base^(-2i/hs), θ = t·f_i, the rotation.
 *   none.
 * Tables a = (cos θ | ρ cosh θ), b = (sin θ | ρ sinh θ) of shape (T, P) are computed in
 * double, then cast. The backward is the transposed map. */
#ifndef TB_POSENC_H
#define TB_POSENC_H
#include <stddef.h>
#include "../real.h"

struct tb_backend;

typedef enum tb_pos_kind {
    TB_POS_NONE = 0,
    TB_POS_HOPE,
    TB_POS_HOPE_HYPERBOLIC,
    TB_POS_ROPE,
} tb_pos_kind;

/* "hope", "hope_hyperbolic", "rope", "none" -> kind; 0 ok, -1 unknown. */
int posenc_kind_parse(const char *name, tb_pos_kind *kind);
const char *posenc_kind_name(tb_pos_kind kind);

/* Reals of the two tables: 2·T·(hs/2). */
size_t posenc_table_count(int T, int hs);
/* Fill a (T, hs/2) then b (T, hs/2), contiguous in `tab`, for logical layer `layer`. */
void posenc_table(real *tab, tb_pos_kind kind, double base, double damping, int layer, int T,
                  int hs);

/* y = pos(x) in place allowed; x rows of stride ld, H heads of hs at offset h·hs.
 * TB_POS_NONE copies (tab unused, may be NULL). */
void posenc_forward(const struct tb_backend *be, real *y, const real *x, const real *tab,
                    tb_pos_kind kind, int B, int T, int H, int hs, size_t ld);
/* dx = posᵀ(dy), overwriting (dx may equal dy). */
void posenc_backward(const struct tb_backend *be, real *dx, const real *dy, const real *tab,
                     tb_pos_kind kind, int B, int T, int H, int hs, size_t ld);

#endif
