/* Device code of dense ops (dense_cuda.cu) that the CPU emulation of tests/cuda_emu also
 * builds: the BitLinear activation quantiser and the LN0 backward with a warp per token
 * row, the row held in registers (NV values per lane, in <= 32·NV). The block-per-row
 * kernels of dense_cuda.cu take wider rows. */
#ifndef TB_DENSE_KERNELS_CUH
#define TB_DENSE_KERNELS_CUH

#define DT_EPS 1e-6 /* dynamic_tanh: 1 / (sd + eps) */
#define LN_EPS 1e-5
#define RMS_EPS 1e-6

__device__ __forceinline__ double dk_warp_sum_d(double v) {
#pragma unroll
    for (int s = 16; s > 0; s >>= 1) v += __shfl_xor_sync(0xffffffffu, v, s);
    return v;
}
__device__ __forceinline__ float dk_warp_max_f(float v) {
#pragma unroll
    for (int s = 16; s > 0; s >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, s));
    return v;
}

/* Load a row of `in` values into v (lane + 32 k, zero past the end) and take its mean
 * (float, from the double sum) and its double sum of squared deviations from that mean:
 * lane partials in k order, fixed xor trees. */
template <int NV>
__device__ __forceinline__ void dk_row_load_mean_m2(float (&v)[NV], const float *xr, int in, int lane, float *mean,
                                                    double *m2) {
    double s = 0;
#pragma unroll
    for (int k = 0; k < NV; k++) {
        int j = lane + 32 * k;
        v[k] = j < in ? xr[j] : 0.0f;
        if (j < in) s += v[k];
    }
    s = dk_warp_sum_d(s);
    float mu = (float)(s / in);
    double q = 0;
#pragma unroll
    for (int k = 0; k < NV; k++) {
        double d = (double)(v[k] - mu);
        if (lane + 32 * k < in) q += d * d;
    }
    *mean = mu;
    *m2 = dk_warp_sum_d(q);
}

/* Per token t (a warp; rows t = blockIdx.x · warps + warp): mean and variance in double
 * (lane partials over j = lane + 32 k, k ascending, then a fixed xor tree), then the
 * CPU's float roundings element by element: x̂ = (x - mean) · rstd, s_x = 127 / max(max
 * |x̂|, 1e-5), code = clamp(rint(x̂ · s_x), -128, 127); stats[3t..3t+2] = mean, rstd, s_x.
 * The double sums round to the CPU's floats (they differ from a sequential sum by far
 * less than a float's half-ulp), so codes and stats match the CPU bit for bit. */
template <int NV>
__global__ void k_quant_x_warp(int8_t *xq, float *stats, const float *x, size_t n, int in) {
    int lane = threadIdx.x % 32;
    size_t t = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (t >= n) return; /* the whole warp */
    float v[NV], mean;
    double var;
    dk_row_load_mean_m2<NV>(v, x + t * in, in, lane, &mean, &var);
    float rstd = (float)(1.0 / sqrt(var / in + 1e-5));
    float amax = 0;
#pragma unroll
    for (int k = 0; k < NV; k++)
        if (lane + 32 * k < in) amax = fmaxf(amax, fabsf((v[k] - mean) * rstd));
    amax = dk_warp_max_f(amax);
    float sx = 127.0f / (amax > 1e-5f ? amax : 1e-5f);
#pragma unroll
    for (int k = 0; k < NV; k++) {
        int j = lane + 32 * k;
        if (j < in) {
            float c = rintf(((v[k] - mean) * rstd) * sx);
            xq[t * in + j] = (int8_t)(c > 127 ? 127 : c < -128 ? -128 : c);
        }
    }
    if (lane == 0) {
        stats[3 * t] = mean;
        stats[3 * t + 1] = rstd;
        stats[3 * t + 2] = sx;
    }
}

/* LN0ᵀ per token row (a warp): dx += rstd (g - mean(g) - x̂ mean(g ⊙ x̂)) (SET: dx = ...,
 * dx not read: a template argument, since with a run-time flag the compiler may load dx
 * anyway, the address being one it stores to), the sums in double as lane partials and a
 * fixed xor tree. For +=, rows up to 1024 load dx with g and x (PRE), so its round trip
 * overlaps theirs instead of following the sums; wider rows lack the registers. */
template <int NV, bool SET> /* 256 threads (dense_cuda.cu); PRE: two blocks an SM on sm_80 too */
__global__ void __launch_bounds__(256, !SET && NV <= 32 ? 2 : 1)
    k_ln0_bwd_warp(float *dx, const float *g_all, const float *x, const float *stats, size_t n, int in) {
    int lane = threadIdx.x % 32;
    size_t t = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (t >= n) return;
    const float *g = g_all + t * in, *xr = x + t * in;
    float mean = stats[3 * t], rstd = stats[3 * t + 1];
    constexpr bool PRE = !SET && NV <= 32;
    float *dxr = dx + t * in;
    float gv[NV], xh[NV], dv[PRE ? NV : 1];
    double sg = 0, sgx = 0;
#pragma unroll
    for (int k = 0; k < NV; k++) {
        int j = lane + 32 * k;
        if constexpr (PRE) dv[k] = j < in ? dxr[j] : 0.0f;
        gv[k] = j < in ? g[j] : 0.0f;
        xh[k] = j < in ? (xr[j] - mean) * rstd : 0.0f;
        if (j < in) {
            sg += gv[k];
            sgx += (double)(gv[k] * xh[k]);
        }
    }
    sg = dk_warp_sum_d(sg);
    sgx = dk_warp_sum_d(sgx);
    float mg = (float)(sg / in), mgx = (float)(sgx / in);
#pragma unroll
    for (int k = 0; k < NV; k++) {
        int j = lane + 32 * k;
        if (j < in) {
            float v = rstd * (gv[k] - mg - xh[k] * mgx);
            if (SET) dxr[j] = v;
            else if constexpr (PRE) dxr[j] = dv[k] + v;
            else dxr[j] += v;
        }
    }
}

/* dynamic_tanh norm per token row (a warp; the row in registers): mean and the sum of
 * squared deviations in double (lane partials, fixed xor tree), sd = sqrt(m2 / (C - 1)),
 * y = tanh(α ⊙ (x - mean) / (sd + eps) + β); stats[2t], stats[2t+1] = mean, sd. The float
 * expressions of k_norm_fwd_rows (dense_cuda.cu). */
template <int NV>
__global__ void k_dyt_norm_fwd_warp(float *y, float *stats, const float *x, const float *al, const float *be,
                                    size_t n, int C) {
    int lane = threadIdx.x % 32;
    size_t t = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (t >= n) return;
    float v[NV], mean;
    double m2;
    dk_row_load_mean_m2<NV>(v, x + t * C, C, lane, &mean, &m2);
    float sd = (float)sqrt(m2 / (C - 1));
    float r = 1.0f / (sd + (float)DT_EPS);
    float *yr = y + t * C;
#pragma unroll
    for (int k = 0; k < NV; k++) {
        int j = lane + 32 * k;
        if (j < C) yr[j] = tanhf(al[j] * ((v[k] - mean) * r) + be[j]);
    }
    if (lane == 0) stats[2 * t] = mean, stats[2 * t + 1] = sd;
}

/* Its backward for dx (+=), a warp per row: the float expressions of k_norm_bwd_rows. Two
 * passes over the row, the second recomputing x - mean and the tanh derivative instead of
 * keeping 2 NV values a lane in registers: the same values in the same order (the same
 * bits), a fraction of the registers, so more rows in flight (the row's second read comes
 * from the cache). */
template <int NV>
__global__ void k_dyt_norm_bwd_warp(float *dx, const float *dy, const float *stats, const float *x, const float *al,
                                    const float *be, size_t n, int C) {
    int lane = threadIdx.x % 32;
    size_t t = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (t >= n) return;
    const float *xr = x + t * C, *g = dy + t * C;
    float mean = stats[2 * t], sd = stats[2 * t + 1];
    float r = 1.0f / (sd + (float)DT_EPS);
    double sg = 0, sgd = 0;
#pragma unroll 8
    for (int k = 0; k < NV; k++) {
        int j = lane + 32 * k;
        if (j < C) {
            float xm = xr[j] - mean;
            float xh = xm * r;
            float yv = tanhf(al[j] * xh + be[j]);
            float dxh = g[j] * (1.0f - yv * yv) * al[j];
            sg += dxh;
            sgd += (double)dxh * (double)xm;
        }
    }
    sg = dk_warp_sum_d(sg);
    sgd = dk_warp_sum_d(sgd);
    float mg = (float)(sg / C);
    float coef = sd > 0 ? (float)((double)r * r * sgd / ((C - 1) * (double)sd)) : 0.0f;
    float *dxr = dx + t * C;
#pragma unroll 8
    for (int k = 0; k < NV; k++) {
        int j = lane + 32 * k;
        if (j < C) {
            float xm = xr[j] - mean;
            float xh = xm * r;
            float yv = tanhf(al[j] * xh + be[j]);
            float dxh = g[j] * (1.0f - yv * yv) * al[j];
            dxr[j] += r * (dxh - mg) - coef * xm;
        }
    }
}
/* y = acc / (s_x[t] · s_w) in place over the int32 products of a BitLinear forward, four
 * values per thread (16-byte loads and stores) when out % 4 == 0 and y is 16-byte aligned,
 * so the four share a row: the per-element expression of k_bitlinear_scale. */
__global__ void k_bitlinear_scale4(float *y, const float *stats, const float *sw, size_t n, int out) {
    float s_w = *sw;
    size_t n4 = n * (size_t)out / 4;
    /* the row by a 32-bit division where the quads allow (a 64-bit one is tens of instructions) */
    bool narrow = n4 < ((size_t)1 << 32);
    unsigned o4 = (unsigned)out / 4;
    for (size_t q = (size_t)blockIdx.x * blockDim.x + threadIdx.x; q < n4; q += (size_t)gridDim.x * blockDim.x) {
        int4 a = reinterpret_cast<const int4 *>(y)[q];
        size_t row = narrow ? (size_t)((unsigned)q / o4) : q / o4;
        float d = stats[3 * row + 2] * s_w;
        float4 r;
        r.x = (float)a.x / d, r.y = (float)a.y / d, r.z = (float)a.z / d, r.w = (float)a.w / d;
        reinterpret_cast<float4 *>(y)[q] = r;
    }
}

/* x̃ = x_q / s_x[t] (the STE's dequantised input), four codes per thread when in % 4 == 0
 * and both buffers are aligned (4 and 16 bytes): the per-element expression of k_xtilde. */
__global__ void k_xtilde4(float *xt, const int8_t *xq, const float *stats, size_t n, int in) {
    size_t n4 = n * (size_t)in / 4;
    for (size_t q = (size_t)blockIdx.x * blockDim.x + threadIdx.x; q < n4; q += (size_t)gridDim.x * blockDim.x) {
        char4 c = reinterpret_cast<const char4 *>(xq)[q];
        float sx = stats[3 * (q * 4 / in) + 2];
        float4 r;
        r.x = (float)c.x / sx, r.y = (float)c.y / sx, r.z = (float)c.z / sx, r.w = (float)c.w / sx;
        reinterpret_cast<float4 *>(xt)[q] = r;
    }
}
/* Ŵ = w_q / s_w ∈ {c, -c, 0} (c = 1 / s_w), four codes per thread when count % 4 == 0 and
 * the buffers are aligned (4 and 16 bytes): the expression of k_wtilde. */
__global__ void k_wtilde4(float *wt, const int8_t *wq, const float *sw, size_t count) {
    float c = 1.0f / *sw;
    size_t n4 = count / 4;
    for (size_t q = (size_t)blockIdx.x * blockDim.x + threadIdx.x; q < n4; q += (size_t)gridDim.x * blockDim.x) {
        char4 w = reinterpret_cast<const char4 *>(wq)[q];
        float4 r;
        r.x = w.x > 0 ? c : w.x < 0 ? -c : 0.0f;
        r.y = w.y > 0 ? c : w.y < 0 ? -c : 0.0f;
        r.z = w.z > 0 ? c : w.z < 0 ? -c : 0.0f;
        r.w = w.w > 0 ? c : w.w < 0 ? -c : 0.0f;
        reinterpret_cast<float4 *>(wt)[q] = r;
    }
}
#endif
