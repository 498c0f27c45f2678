#include "norm.h"
#include <string.h>
#include "../backend.h"

static const char *const type_names[] = {"dynamic_tanh", "dyt", "derf", "layer_norm",
                                         "rms_norm"};
static const int nparams[] = {2, 3, 4, 2, 1};
static const char *const pnames[][TB_NORM_MAX_PARAMS] = {
    {"alpha", "beta"},
    {"alpha", "gamma", "beta"},
    {"alpha", "s", "gamma", "beta"},
    {"weight", "bias"},
    {"weight"},
};
/* init value and whether the tensor is a scalar [1] */
static const double pinit[][TB_NORM_MAX_PARAMS] = {
    {1, 0}, {0.5, 1, 0}, {1, 0, 1, 0}, {1, 0}, {1}};
static const int pscalar[][TB_NORM_MAX_PARAMS] = {
    {0, 0}, {1, 0, 0}, {1, 1, 0, 0}, {0, 0}, {0}};

int norm_type_parse(const char *name, tb_norm_type *type) {
    for (int i = 0; i < 5; i++)
        if (strcmp(name, type_names[i]) == 0) {
            *type = (tb_norm_type)i;
            return 0;
        }
    return -1;
}

const char *norm_type_name(tb_norm_type type) {
    return (unsigned)type < 5 ? type_names[type] : "?";
}

int norm_param_count(tb_norm_type type) {
    return nparams[type];
}

const char *norm_param_name(tb_norm_type type, int i) {
    return pnames[type][i];
}

size_t norm_param_size(tb_norm_type type, int i, int C) {
    return pscalar[type][i] ? 1 : (size_t)C;
}

size_t norm_param_total(tb_norm_type type, int C) {
    size_t s = 0;
    for (int i = 0; i < nparams[type]; i++) s += norm_param_size(type, i, C);
    return s;
}

void norm_param_init(tb_norm_type type, int i, real *p, int C) {
    size_t n = norm_param_size(type, i, C);
    for (size_t j = 0; j < n; j++) p[j] = (real)pinit[type][i];
}

size_t norm_act_count(tb_norm_type type, size_t ntok) {
    return (type == TB_NORM_DYT || type == TB_NORM_DERF) ? 0 : 2 * ntok;
}

void norm_forward(const tb_backend *be, real *y, real *act, const real *x, const tb_norm *p,
                  size_t ntok) {
    const real *prm[TB_NORM_MAX_PARAMS] = {p->p[0], p->p[1], p->p[2], p->p[3]};
    be->dense.norm_fwd(y, act, x, prm, (int)p->type, ntok, p->C);
}

void norm_backward(const tb_backend *be, real *dx, const real *dy, const real *act,
                   const real *x, const tb_norm *p, size_t ntok) {
    const real *prm[TB_NORM_MAX_PARAMS] = {p->p[0], p->p[1], p->p[2], p->p[3]};
    be->dense.norm_bwd(dx, p->dp, dy, act, x, prm, (int)p->type, ntok, p->C);
}

void norm_backward_to(const tb_backend *be, real *dx, const real *base, const real *dy,
                      const real *act, const real *x, const tb_norm *p, size_t ntok) {
    const real *prm[TB_NORM_MAX_PARAMS] = {p->p[0], p->p[1], p->p[2], p->p[3]};
    be->dense.norm_bwd_to(dx, base, p->dp, dy, act, x, prm, (int)p->type, ntok, p->C);
}
