/* The five norms over C, per token (MODEL.md section 3). Each instance has its own
 * parameters; tensor names and order as MODEL.md section 11:
 *   dynamic_tanh: alpha [C] (1), beta [C] (0);
 *     x̂ = (x - mean) / (std + 1e-6), std unbiased (÷ (C-1)), eps outside the sqrt;
 *     y = tanh(alpha ⊙ x̂ + beta).   (C >= 2.)
 *   dyt:  alpha [1] (0.5), gamma [C] (1), beta [C] (0);  y = gamma ⊙ tanh(alpha x) + beta.
 *   derf: alpha [1] (1), s [1] (0), gamma [C] (1), beta [C] (0);
 *     y = gamma ⊙ erf(alpha x + s) + beta.
 *   layer_norm: weight [C] (1), bias [C] (0); eps 1e-5, biased variance.
 *   rms_norm: weight [C] (1); y = x · rsqrt(mean(x²) + 1e-6) · weight.
 * (init values in parentheses.) */
#ifndef TB_NORM_H
#define TB_NORM_H
#include <stddef.h>
#include "../real.h"

struct tb_backend;

typedef enum tb_norm_type {
    TB_NORM_DYNAMIC_TANH = 0,
    TB_NORM_DYT,
    TB_NORM_DERF,
    TB_NORM_LAYER_NORM,
    TB_NORM_RMS_NORM,
} tb_norm_type;

#define TB_NORM_MAX_PARAMS 4

typedef struct tb_norm {
    tb_norm_type type;
    int C;
    real *p[TB_NORM_MAX_PARAMS];  /* parameter tensors in section-11 order (see above) */
    real *dp[TB_NORM_MAX_PARAMS]; /* their gradients */
} tb_norm;

/* "dynamic_tanh", "dyt", "derf", "layer_norm", "rms_norm" -> type; 0 ok, -1 unknown. */
int norm_type_parse(const char *name, tb_norm_type *type);
const char *norm_type_name(tb_norm_type type);
/* Number of parameter tensors, and each one's name ("alpha", ...) and element count. */
int norm_param_count(tb_norm_type type);
const char *norm_param_name(tb_norm_type type, int i);
size_t norm_param_size(tb_norm_type type, int i, int C);
/* Total parameters of one instance. */
size_t norm_param_total(tb_norm_type type, int C);
/* Fill tensor i with its init value (section 3). */
void norm_param_init(tb_norm_type type, int i, real *p, int C);

/* Reals of per-token statistics forward keeps for backward (2·ntok, or 0). */
size_t norm_act_count(tb_norm_type type, size_t ntok);

void norm_forward(const struct tb_backend *be,
                  real *y,        // (ntok, C)
                  real *act,      // norm_act_count
                  const real *x,  // (ntok, C)
                  const tb_norm *p, size_t ntok);

/* dx += ..., p->dp[i] += ...; x and act as forward saw and wrote. */
void norm_backward(const struct tb_backend *be,
                   real *dx,        // (ntok, C) +=
                   const real *dy,  // (ntok, C)
                   const real *act, // norm_act_count
                   const real *x,   // (ntok, C)
                   const tb_norm *p, size_t ntok);

/* dx = base + ... (base NULL: 0 + ...; base == dx: norm_backward), p->dp[i] += ...: the
 * bits of filling or copying dx first and norm_backward, without that pass. */
void norm_backward_to(const struct tb_backend *be, real *dx, const real *base, const real *dy,
                      const real *act, const real *x, const tb_norm *p, size_t ntok);

#endif
