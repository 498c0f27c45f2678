#include "param_pool.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "backend.h"
#include "gradcheck.h"

double *pool_add(pool *P, const char *name, size_t n, double base, double scale, double **g) {
    if (P->n >= (int)(sizeof P->t / sizeof P->t[0])) abort(); /* test bug: pool too small */
    pt *t = &P->t[P->n++];
    t->w = calloc(n, sizeof(double));
    t->g = calloc(n, sizeof(double));
    t->n = n;
    snprintf(t->name, sizeof t->name, "%s", name);
    gc_fill_uniform(t->w, n, scale, 71, P->tag++);
    for (size_t i = 0; i < n; i++) t->w[i] += base;
    *g = t->g;
    return t->w;
}

void pool_linear(pool *P, tb_linear *l, const char *name, int in, int out, int bitnet) {
    memset(l, 0, sizeof *l);
    l->in = in, l->out = out, l->bitnet = bitnet;
    l->w = pool_add(P, name, (size_t)in * out, 0, 1.0 / sqrt(in), &l->dw);
    if (bitnet) {
        l->wq = malloc((size_t)in * out);
        l->sw = malloc(sizeof(double));
        linear_refresh(tb_backend_cpu(), l);
    }
}

void pool_norm(pool *P, tb_norm *nrm, tb_norm_type type, int C) {
    memset(nrm, 0, sizeof *nrm);
    nrm->type = type, nrm->C = C;
    for (int i = 0; i < norm_param_count(type); i++) {
        char nm[48];
        snprintf(nm, sizeof nm, "norm.%s", norm_param_name(type, i));
        size_t n = norm_param_size(type, i, C);
        nrm->p[i] = pool_add(P, nm, n, 0, 0.2, &nrm->dp[i]);
        double *init = calloc(n, sizeof(double));
        norm_param_init(type, i, init, C);
        for (size_t j = 0; j < n; j++) nrm->p[i][j] += init[j];
        free(init);
    }
}

void pool_free(pool *P) {
    for (int i = 0; i < P->n; i++) free(P->t[i].w), free(P->t[i].g);
}
