/* The activations per element on the device, the CPU's expressions (seq_elem.c): silu
 * x·σ(x) and gelu ½x(1 + erf(x/√2)), and their backward. Shared by the element-wise ops
 * (seq_more_cuda.cu) and the BitLinear backward that takes act(h) as its input
 * (dense_kernels.cuh), so both give the same bits. */
#ifndef TB_ACT_MATH_CUH
#define TB_ACT_MATH_CUH

#include <math.h>

__device__ __forceinline__ float sigm(float x) {
    return x >= 0 ? 1.0f / (1.0f + expf(-x)) : expf(x) / (1.0f + expf(x));
}

__device__ __forceinline__ float act_f(float v, int gelu) {
    return gelu ? 0.5f * v * (1.0f + erff(v * (float)M_SQRT1_2)) : v * sigm(v);
}
__device__ __forceinline__ float act_g(float v, float d, int gelu) {
    if (gelu) {
        const float inv_sqrt_2pi = (float)(0.5 * M_2_SQRTPI * M_SQRT1_2);
        float cdf = 0.5f * (1.0f + erff(v * (float)M_SQRT1_2));
        float pdf = inv_sqrt_2pi * expf(-0.5f * v * v);
        return d * (cdf + v * pdf);
    }
    float s = sigm(v);
    return d * s * (1.0f + v * (1.0f - s));
}

#endif
