/* Dropout (MODEL.md section 9): the keep mask is a pure function of
 * (seed, TB_RNG_DROPOUT, step, logical layer, site, element index), so the CPU and CUDA
 * backends and the forward and backward passes draw the same mask without storing it.
 *
 * Element i of a site is kept iff (tb_rng_at(seed, TB_RNG_DROPOUT, step, layer, site, i)
 * >> 8) >= dropout_threshold(p), i.e. with probability 1 - p up to 2^-24; kept elements
 * are scaled by 1 / (1 - p). Sites: TB_DROPOUT_SITE_EMB for the embedding output (with
 * layer = TB_DROPOUT_LAYER_EMB), TB_DROPOUT_SITE_ATTN for an attention layer's
 * probabilities (element index = ((b·H + h)·T + i)·T + j), and TB_DROPOUT_SITE_ATTN + e
 * for the ODE block's e-th evaluation of f within the layer (e = step·stages + stage). */
#ifndef TB_DROPOUT_H
#define TB_DROPOUT_H
#include <stddef.h>
#include <stdint.h>
#include "tb_rng.h"
#include "../real.h"

struct tb_backend;

typedef struct tb_dropout {
    float p;        /* drop probability in [0, 1) */
    uint64_t seed;  /* the run's seed */
    uint32_t step;  /* optimizer step (or micro-step: the caller chooses, consistently) */
    uint32_t layer; /* logical layer l, or TB_DROPOUT_LAYER_EMB */
    int enabled;    /* 0 in evaluation */
} tb_dropout;

#define TB_DROPOUT_LAYER_EMB 0xFFFFFFFFu
enum { TB_DROPOUT_SITE_EMB = 0, TB_DROPOUT_SITE_ATTN = 1 };

static inline int dropout_active(const tb_dropout *d) {
    return d != NULL && d->enabled && d->p > 0.0f;
}

/* 24-bit threshold: drop iff (u >> 8) < threshold. */
static inline uint32_t dropout_threshold(float p) {
    return (uint32_t)((double)p * 16777216.0);
}

/* 1 / (1 - p) if element i of `site` is kept, else 0. */
static inline real dropout_factor(const tb_dropout *d, uint32_t site, uint64_t i) {
    uint32_t u = tb_rng_at(d->seed, TB_RNG_DROPOUT, d->step, d->layer, site, i);
    return (u >> 8) >= dropout_threshold(d->p) ? (real)(1.0 / (1.0 - (double)d->p)) : R(0.0);
}

/* y = dropout(x) over n elements of `site` (y may equal x); a copy when inactive. */
void dropout_forward(const struct tb_backend *be, real *y, const real *x, const tb_dropout *d,
                     uint32_t site, size_t n);
/* dx += mask ⊙ dy / (1 - p) (dx += dy when inactive). */
void dropout_backward(const struct tb_backend *be, real *dx, const real *dy,
                      const tb_dropout *d, uint32_t site, size_t n);

#endif
