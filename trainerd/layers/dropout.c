#include "dropout.h"
#include "../backend.h"

void dropout_forward(const tb_backend *be, real *y, const real *x, const tb_dropout *d,
                     uint32_t site, size_t n) {
    be->dense.dropout_fwd(y, x, d, site, n);
}

void dropout_backward(const tb_backend *be, real *dx, const real *dy, const tb_dropout *d,
                      uint32_t site, size_t n) {
    be->dense.dropout_bwd(dx, dy, d, site, n);
}
