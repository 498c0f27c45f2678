/* A small pool of fp64 parameter tensors with their gradients, for the layer gradient
 * checks: each tensor is filled U(-scale, scale) + base from the test RNG, one stream per
 * tensor in creation order. */
#ifndef TB_PARAM_POOL_H
#define TB_PARAM_POOL_H
#include <stddef.h>
#include <stdint.h>
#include "layers/linear.h"
#include "layers/norm.h"

typedef struct pt {
    double *w, *g;
    size_t n;
    char name[48];
} pt;

typedef struct pool {
    pt t[32];
    int n;
    uint32_t tag;
} pool;

/* Adds an n-element tensor; returns its values and sets *g to its gradient. */
double *pool_add(pool *P, const char *name, size_t n, double base, double scale, double **g);
/* A BitLinear (bitnet) or plain linear in -> out with U(±1/sqrt(in)) weights; bitnet
 * codes and scale are malloc'd and refreshed (the caller frees l->wq and l->sw). */
void pool_linear(pool *P, tb_linear *l, const char *name, int in, int out, int bitnet);
/* A norm of the given type over C, its parameters at their init plus U(±0.2). */
void pool_norm(pool *P, tb_norm *nrm, tb_norm_type type, int C);
void pool_free(pool *P);

#endif
