/* The model's scalar type. The CPU backend is compiled twice from the same sources:
 * fp32 for training (tb_model_f32) and fp64 for gradient checks (tb_model_f64, built
 * with -DTB_REAL_DOUBLE). Code uses `real` and the R() literal macro, never float or
 * double directly, for model math. */
#ifndef TB_REAL_H
#define TB_REAL_H
#include <math.h>

#ifdef TB_REAL_DOUBLE
typedef double real;
#define R(x) (x)
#define TB_REAL_NAME "f64"
#define rsqrt_(x) (1.0 / sqrt(x))
#else
typedef float real;
#define R(x) (x##f)
#define TB_REAL_NAME "f32"
#define rsqrt_(x) (1.0f / sqrtf(x))
#endif

/* Type-generic math on real (tgmath would pull complex numbers in). */
#define r_exp(x) _Generic((x), float: expf, default: exp)(x)
#define r_log(x) _Generic((x), float: logf, default: log)(x)
#define r_sqrt(x) _Generic((x), float: sqrtf, default: sqrt)(x)
#define r_tanh(x) _Generic((x), float: tanhf, default: tanh)(x)
#define r_erf(x) _Generic((x), float: erff, default: erf)(x)
#define r_fabs(x) _Generic((x), float: fabsf, default: fabs)(x)
#define r_cos(x) _Generic((x), float: cosf, default: cos)(x)
#define r_sin(x) _Generic((x), float: sinf, default: sin)(x)
#define r_cosh(x) _Generic((x), float: coshf, default: cosh)(x)
#define r_sinh(x) _Generic((x), float: sinhf, default: sinh)(x)
#define r_log1p(x) _Generic((x), float: log1pf, default: log1p)(x)
#define r_fma(a, b, c) _Generic((a), float: fmaf, default: fma)(a, b, c) /* one rounding */
#define r_rint(x) _Generic((x), float: rintf, default: rint)(x) /* half to even */

#endif
