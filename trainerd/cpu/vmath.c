/* Array math for the CPU kernels (vmath.h). */
#include "vmath.h"
#include <string.h>

#ifndef TB_REAL_DOUBLE
#include <immintrin.h>
/* glibc's libmvec (x86_64 vector ABI, AVX2 variants, "d" = ymm, 8 lanes). */
__m256 _ZGVdN8v_expf(__m256 x);
__m256 _ZGVdN8v_erff(__m256 x);
__m256 _ZGVdN8v_tanhf(__m256 x);

/* libgcc fills the CPU model before main; reading it is a load and a test. */
static int have_vec(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

#define VEC_LOOP(fn)                                                                       \
    do {                                                                                   \
        size_t i = 0;                                                                      \
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, fn(_mm256_loadu_ps(x + i)));    \
        if (i < n) {                                                                       \
            float t[8] = {0};                                                              \
            memcpy(t, x + i, (n - i) * sizeof(float));                                     \
            _mm256_storeu_ps(t, fn(_mm256_loadu_ps(t)));                                   \
            memcpy(y + i, t, (n - i) * sizeof(float));                                     \
        }                                                                                  \
    } while (0)

__attribute__((target("avx2,fma"))) static void vexp8(float *y, const float *x, size_t n) {
    VEC_LOOP(_ZGVdN8v_expf);
}
__attribute__((target("avx2,fma"))) static void verf8(float *y, const float *x, size_t n) {
    VEC_LOOP(_ZGVdN8v_erff);
}
__attribute__((target("avx2,fma"))) static void vtanh8(float *y, const float *x, size_t n) {
    VEC_LOOP(_ZGVdN8v_tanhf);
}
/* The scalar formula of tb_vsigmoid, 8 at a time: e from the same vector exp, both
 * quotients (IEEE division is correctly rounded, so each equals the scalar one), the
 * sign picks. A NaN compares false and takes e / (1 + e), as the scalar branch does. */
__attribute__((target("avx2,fma"))) static __m256 sigmoid8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.0f);
    __m256 e = _ZGVdN8v_expf(_mm256_or_ps(x, _mm256_set1_ps(-0.0f))); /* exp(-|x|) */
    __m256 d = _mm256_add_ps(one, e);
    __m256 pos = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_GE_OQ);
    return _mm256_blendv_ps(_mm256_div_ps(e, d), _mm256_div_ps(one, d), pos);
}
__attribute__((target("avx2,fma"))) static void vsigmoid8(float *y, const float *x, size_t n) {
    VEC_LOOP(sigmoid8);
}
#define VEC_OR(vfn)                                                                        \
    if (have_vec()) {                                                                      \
        vfn(y, x, n);                                                                      \
        return;                                                                            \
    }
#else
#define VEC_OR(vfn)
#endif

void tb_vexp(real *y, const real *x, size_t n) {
    VEC_OR(vexp8);
    for (size_t i = 0; i < n; i++) y[i] = r_exp(x[i]);
}

void tb_verf(real *y, const real *x, size_t n) {
    VEC_OR(verf8);
    for (size_t i = 0; i < n; i++) y[i] = r_erf(x[i]);
}

void tb_vtanh(real *y, const real *x, size_t n) {
    VEC_OR(vtanh8);
    for (size_t i = 0; i < n; i++) y[i] = r_tanh(x[i]);
}

void tb_vsigmoid(real *y, const real *x, size_t n) {
    VEC_OR(vsigmoid8);
    real e[TB_VCHUNK];
    for (size_t i0 = 0; i0 < n; i0 += TB_VCHUNK) {
        size_t m = n - i0 < TB_VCHUNK ? n - i0 : TB_VCHUNK;
        for (size_t i = 0; i < m; i++) e[i] = -r_fabs(x[i0 + i]);
        tb_vexp(e, e, m);
        for (size_t i = 0; i < m; i++)
            y[i0 + i] = x[i0 + i] >= 0 ? R(1.0) / (R(1.0) + e[i]) : e[i] / (R(1.0) + e[i]);
    }
}
