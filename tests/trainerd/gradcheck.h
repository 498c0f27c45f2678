/* Gradient checks in fp64 by central finite differences (STYLE.md, issue 4).
 *
 * Relative error of one element, analytic a against numeric n:
 *     rel = |a - n| / max(|a|, |n|, floor)
 * with floor = 1e-6 · max(1, max_j |a_j|) over the tensor being checked, so elements
 * whose gradient is zero (or tiny next to the tensor's largest) are judged against a
 * scale that finite differences can resolve. The numeric derivative is
 *     n = (L(θ + h) - L(θ - h)) / (2h),  h = 1e-5 · max(1, |θ|).
 * The caller's loss is usually L = Σ out ⊙ W with a fixed random W, which exercises
 * every output element. */
#ifndef TB_GRADCHECK_H
#define TB_GRADCHECK_H
#include <stddef.h>
#include <stdint.h>

/* Recomputes the forward pass and returns the scalar loss. */
typedef double (*gc_loss_fn)(void *ctx);

typedef struct gc_result {
    double max_rel;   /* largest rel over the checked elements */
    size_t worst;     /* index of that element */
    double analytic;  /* a and n at the worst element */
    double numeric;
    size_t checked;
} gc_result;

/* Checks grad[i] = dL/dparam[i] for up to max_checks elements (all when n <= max_checks,
 * otherwise an evenly spread, seed-chosen sample that always includes the first and last
 * element). param is perturbed in place and restored. Prints one line:
 * "gradcheck NAME: n=…, checked=…, max_rel=… at i (a=…, n=…)". */
gc_result gc_check(gc_loss_fn loss, void *ctx, double *param, const double *grad, size_t n,
                   size_t max_checks, const char *name);

/* Fills x with U(-scale, scale) from the Philox stream (seed, TB_RNG_TEST, tag). */
void gc_fill_uniform(double *x, size_t n, double scale, uint64_t seed, uint32_t tag);

/* Σ a ⊙ b: the usual test loss. */
double gc_dot(const double *a, const double *b, size_t n);

#endif
