/* Array forms of exp, erf, tanh and the logistic sigmoid for the CPU kernels.
 * fp32 on a CPU with AVX2 and FMA: glibc's libmvec 8-wide functions (_ZGVdN8v_expf,
 * _ZGVdN8v_erff, _ZGVdN8v_tanhf); every element, a short tail included (padded to 8),
 * goes through the vector function, so an element's value does not depend on where it
 * sits in the array. Elsewhere (no AVX2, the fp64 build): libm's scalar functions, as
 * before. Accuracy against the exact values: tests/trainerd/test32_vmath.c.
 * y may equal x. */
#ifndef TB_CPU_VMATH_H
#define TB_CPU_VMATH_H
#include <stddef.h>
#include "../real.h"

#define TB_VCHUNK 256 /* stack chunk of the kernels that need a temporary array */

/* Element-wise kernels compiled twice from one body, for AVX2 and the baseline, and
 * picked per call by the CPU's features: TB_AVX2_TWIN(ret, name, (params), (args)) after
 * `static inline TB_BODY void name_body(params) {...}` defines `ret name(params)`. The
 * library is ISO C (-ffp-contract=off) without -ffast-math, so the AVX2 copy does the
 * same IEEE operations, only 8 at a time (and inlines rint, division, conversions): the
 * same bits as the baseline. */
#define TB_BODY __attribute__((always_inline))
#if defined(__x86_64__) && defined(__GNUC__)
#define TB_AVX2_TWIN(ret, name, params, args)                                              \
    __attribute__((target("avx2"))) static ret name##_avx2 params { return name##_body args; } \
    static ret name##_base params { return name##_body args; }                              \
    ret name params {                                                                      \
        if (__builtin_cpu_supports("avx2")) return name##_avx2 args;                        \
        return name##_base args;                                                           \
    }
#else
#define TB_AVX2_TWIN(ret, name, params, args)                                              \
    ret name params { return name##_body args; }
#endif

void tb_vexp(real *y, const real *x, size_t n);
void tb_verf(real *y, const real *x, size_t n);
void tb_vtanh(real *y, const real *x, size_t n);
/* y = x >= 0 ? 1 / (1 + e) : e / (1 + e) with e = exp(-|x|) (no overflow either way). */
void tb_vsigmoid(real *y, const real *x, size_t n);

#endif
