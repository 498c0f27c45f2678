#include "posenc.h"
#include <math.h>
#include <string.h>
#include "../backend.h"

static const char *const kind_names[] = {"none", "hope", "hope_hyperbolic", "rope"};

int posenc_kind_parse(const char *name, tb_pos_kind *kind) {
    for (int i = 0; i < 4; i++)
        if (strcmp(name, kind_names[i]) == 0) {
            *kind = (tb_pos_kind)i;
            return 0;
        }
    return -1;
}

const char *posenc_kind_name(tb_pos_kind kind) {
    return (unsigned)kind < 4 ? kind_names[kind] : "?";
}

size_t posenc_table_count(int T, int hs) {
    return 2 * (size_t)T * (size_t)(hs / 2);
}

void posenc_table(real *tab, tb_pos_kind kind, double base, double damping, int layer, int T,
                  int hs) {
    int P = hs / 2;
    real *a = tab, *b = tab + (size_t)T * P;
    double g = 1.0 + 0.05 * layer;
    for (int i = 0; i < P; i++) {
        double f;
        if (kind == TB_POS_ROPE)
            f = pow(base, -2.0 * i / hs);
        else
            f = P == 1 ? 1.0 : exp(-log(base) * i / (P - 1));
        for (int t = 0; t < T; t++) {
            double av = 1, bv = 0;
            switch (kind) {
            case TB_POS_HOPE: {
                double th = t * f * g;
                av = cos(th);
                bv = sin(th);
                break;
            }
            case TB_POS_HOPE_HYPERBOLIC: {
                double th = t * f * g;
                th = th > 12 ? 12 : th < -12 ? -12 : th;
                double rho = exp(-damping * g * t);
                av = rho * cosh(th);
                bv = rho * sinh(th);
                break;
            }
            case TB_POS_ROPE: {
                double th = t * f;
                av = cos(th);
                bv = sin(th);
                break;
            }
            case TB_POS_NONE:
                break;
            }
            a[(size_t)t * P + i] = (real)av;
            b[(size_t)t * P + i] = (real)bv;
        }
    }
}

/* The first w columns of n rows ld apart (rows do not overlap unless y == x). */
static void copy_rows(const tb_backend *be, real *y, const real *x, size_t n, size_t w,
                      size_t ld) {
    if (y == x) return;
    be->seq.copy_cols(y, x, n, (int)w, (int)ld, (int)ld, be);
}

void posenc_forward(const tb_backend *be, real *y, const real *x, const real *tab,
                    tb_pos_kind kind, int B, int T, int H, int hs, size_t ld) {
    if (kind == TB_POS_NONE) {
        copy_rows(be, y, x, (size_t)B * T, (size_t)H * hs, ld);
        return;
    }
    be->dense.posenc_apply(y, x, tab, tab + (size_t)T * (hs / 2),
                           kind == TB_POS_HOPE_HYPERBOLIC, 0, (size_t)B * T, T, H, hs, ld);
}

void posenc_backward(const tb_backend *be, real *dx, const real *dy, const real *tab,
                     tb_pos_kind kind, int B, int T, int H, int hs, size_t ld) {
    if (kind == TB_POS_NONE) {
        copy_rows(be, dx, dy, (size_t)B * T, (size_t)H * hs, ld);
        return;
    }
    be->dense.posenc_apply(dx, dy, tab, tab + (size_t)T * (hs / 2),
                           kind == TB_POS_HOPE_HYPERBOLIC, 1, (size_t)B * T, T, H, hs, ld);
}
