/* Attention core on CUDA (layers/attention.h): softmax or sigmoid over keys, GQA, key
 * padding mask, dropout on P (Philox on the device, the CPU's mask). A plain kernel with
 * one block per query row (b, h, i): scores, the row statistics (max in float, sums in
 * double through fixed trees) and the output, keys and channels in ascending order as
 * on the CPU. The backward writes dS (B, H, T, T) to scratch; dq comes from a block per
 * query row, dk and dv from a block per key row (b, kv head, j) summing over the group's
 * heads and the queries in order: no atomics. probs are stored as on the CPU.
 * This is the portable path (sigmoid attention, GPUs without cuDNN); cuDNN's fused
 * attention (no stored probs) is a later step. */
#include "cuda_internal.cuh"
extern "C" {
#include "layers/dropout.h"
}

#define AT_THREADS 128
#define AT_SIG_EPS 1e-6
/* Slack after the dynamic shared arrays: compute-sanitizer reported one out-of-range
 * 12-byte shared read in k_attn_bwd_q at T = hs = 1 (results unaffected, cause not yet
 * found without a disassembler here); the slack keeps such a read in bounds. */
#define AT_SLACK 1024

static inline cudaStream_t S(void) { return tbc_g->stream; }

/* Dynamic shared memory: q (hs) | p (T) | p̃ (T). */
__global__ void k_attn_fwd(float *out, float *probs, float *rowstat, const float *q, const float *k,
                           const float *v, size_t ldq, size_t ldkv, const uint8_t *mask, int sigmoid, tbc_drop d,
                           uint32_t site, int T, int H, int Hkv, int hs, float scale) {
    extern __shared__ float sm[];
    __shared__ double shd[AT_THREADS];
    __shared__ float shf[AT_THREADS];
    float *sq = sm, *sp = sm + hs, *spt = sp + T;
    int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
    int kh = h / (H / Hkv);
    size_t row = ((size_t)b * H + h) * T + i;
    const float *qi = q + ((size_t)b * T + i) * ldq + (size_t)h * hs;
    for (int c = tid; c < hs; c += AT_THREADS) sq[c] = qi[c];
    __syncthreads();
    float mx = -INFINITY;
    for (int j = tid; j < T; j += AT_THREADS) {
        if (mask && !mask[(size_t)b * T + j]) {
            sp[j] = 0;
            continue;
        }
        const float *kj = k + ((size_t)b * T + j) * ldkv + (size_t)kh * hs;
        float s = 0;
        for (int c = 0; c < hs; c++) s += sq[c] * kj[c];
        s = s * scale;
        sp[j] = s;
        mx = fmaxf(mx, s);
    }
    mx = tbc_block_max_f(mx, shf);
    int any = mx > -INFINITY;
    float den = 1.0f, rs = 0.0f;
    if (sigmoid) {
        double s = 0;
        for (int j = tid; j < T; j += AT_THREADS) {
            if (mask && !mask[(size_t)b * T + j]) continue;
            float w = 1.0f / (1.0f + expf(-sp[j]));
            sp[j] = w;
            s += w;
        }
        s = tbc_block_sum_d(s, shd);
        rs = den = (float)(s + AT_SIG_EPS);
    } else if (any) {
        double s = 0;
        for (int j = tid; j < T; j += AT_THREADS) {
            if (mask && !mask[(size_t)b * T + j]) continue;
            float e = expf(sp[j] - mx);
            sp[j] = e;
            s += e;
        }
        s = tbc_block_sum_d(s, shd);
        rs = (float)((double)mx + log(s));
        float inv = (float)(1.0 / s);
        for (int j = tid; j < T; j += AT_THREADS) sp[j] *= inv;
    }
    if (tid == 0) rowstat[row] = rs;
    float *prow = probs + row * T;
    for (int j = tid; j < T; j += AT_THREADS) {
        float p = sp[j];
        prow[j] = p;
        float pj = sigmoid ? p / den : p;
        if (d.active && p != 0) pj *= tbc_drop_factor(d, site, row * T + j);
        spt[j] = p == 0 ? 0.0f : pj;
    }
    __syncthreads();
    float *o = out + ((size_t)b * T + i) * ((size_t)H * hs) + (size_t)h * hs;
    const float *vb = v + (size_t)b * T * ldkv + (size_t)kh * hs;
    for (int c = tid; c < hs; c += AT_THREADS) {
        float acc = 0;
        for (int j = 0; j < T; j++) {
            if (sp[j] == 0) continue;
            acc += spt[j] * vb[(size_t)j * ldkv + c];
        }
        o[c] = acc;
    }
}

/* Per query row: dP, Σ P dP, dS (to ds), dq += dS k. Shared: go (hs) | ds (T). */
__global__ void k_attn_bwd_q(float *dq, float *ds, const float *dout, const float *probs, const float *rowstat,
                             const float *q, const float *k, const float *v, size_t ldq, size_t ldkv, int sigmoid,
                             tbc_drop d, uint32_t site, int T, int H, int Hkv, int hs, float scale) {
    extern __shared__ float sm[];
    __shared__ double shd[AT_THREADS];
    float *sgo = sm, *sds = sm + hs;
    int i = blockIdx.x, h = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
    int kh = h / (H / Hkv);
    size_t row = ((size_t)b * H + h) * T + i;
    const float *go = dout + ((size_t)b * T + i) * ((size_t)H * hs) + (size_t)h * hs;
    for (int c = tid; c < hs; c += AT_THREADS) sgo[c] = go[c];
    __syncthreads();
    const float *p = probs + row * T;
    float den = sigmoid ? rowstat[row] : 1.0f;
    double s = 0;
    for (int j = tid; j < T; j += AT_THREADS) {
        float pv = p[j], dp = 0;
        if (pv != 0) {
            float m = d.active ? tbc_drop_factor(d, site, row * T + j) : 1.0f;
            float pj = sigmoid ? pv / den : pv;
            const float *vj = v + ((size_t)b * T + j) * ldkv + (size_t)kh * hs;
            float dot = 0;
            for (int c = 0; c < hs; c++) dot += sgo[c] * vj[c];
            dp = dot * m;
            s += (double)pj * dp;
        }
        sds[j] = dp;
    }
    float spv = (float)tbc_block_sum_d(s, shd);
    float *dsr = ds + row * T;
    for (int j = tid; j < T; j += AT_THREADS) {
        float pv = p[j], dsv = 0;
        if (pv != 0) {
            dsv = sigmoid ? pv * (1.0f - pv) * (sds[j] - spv) / den : pv * (sds[j] - spv);
            dsv *= scale;
        }
        sds[j] = dsv;
        dsr[j] = dsv;
    }
    __syncthreads();
    float *dqi = dq + ((size_t)b * T + i) * ldq + (size_t)h * hs;
    const float *kb = k + (size_t)b * T * ldkv + (size_t)kh * hs;
    for (int c = tid; c < hs; c += AT_THREADS) {
        float acc = dqi[c];
        for (int j = 0; j < T; j++) {
            if (p[j] == 0) continue;
            acc += sds[j] * kb[(size_t)j * ldkv + c];
        }
        dqi[c] = acc;
    }
}

/* Per key row (b, kv head, j): dk_j += Σ_h Σ_i dS_hij q_hi, dv_j += Σ_h Σ_i P̃_hij go_hi,
 * heads of the group then queries ascending. */
__global__ void k_attn_bwd_kv(float *dk, float *dv, const float *ds, const float *dout, const float *probs,
                              const float *rowstat, const float *q, size_t ldq, size_t ldkv, int sigmoid, tbc_drop d,
                              uint32_t site, int T, int H, int Hkv, int hs) {
    __shared__ float spt[AT_THREADS], sds[AT_THREADS];
    __shared__ int snz[AT_THREADS];
    int j = blockIdx.x, kh = blockIdx.y, b = blockIdx.z, tid = threadIdx.x;
    int group = H / Hkv;
    size_t ldo = (size_t)H * hs;
    float *dkj = dk + ((size_t)b * T + j) * ldkv + (size_t)kh * hs;
    float *dvj = dv + ((size_t)b * T + j) * ldkv + (size_t)kh * hs;
    /* hs may exceed the block: extra channels in later passes. */
    for (int c0 = 0; c0 < hs; c0 += AT_THREADS) {
        int c = c0 + tid;
        float ak = c < hs ? dkj[c] : 0, av = c < hs ? dvj[c] : 0;
        for (int g = 0; g < group; g++) {
            int h = kh * group + g;
            size_t rb = ((size_t)b * H + h) * T;
            for (int i0 = 0; i0 < T; i0 += AT_THREADS) {
                __syncthreads();
                int i = i0 + tid;
                if (i < T) {
                    size_t row = rb + i;
                    float pv = probs[row * T + j];
                    float pt = 0;
                    if (pv != 0) {
                        float m = d.active ? tbc_drop_factor(d, site, row * T + j) : 1.0f;
                        pt = (sigmoid ? pv / rowstat[row] : pv) * m;
                    }
                    snz[tid] = pv != 0;
                    spt[tid] = pt;
                    sds[tid] = ds[row * T + j];
                }
                __syncthreads();
                int ni = T - i0 < AT_THREADS ? T - i0 : AT_THREADS;
                if (c < hs)
                    for (int ii = 0; ii < ni; ii++) {
                        if (!snz[ii]) continue;
                        size_t tok = (size_t)b * T + i0 + ii;
                        if (spt[ii] != 0) av += spt[ii] * dout[tok * ldo + (size_t)h * hs + c];
                        ak += sds[ii] * q[tok * ldq + (size_t)h * hs + c];
                    }
            }
        }
        if (c < hs) {
            dkj[c] = ak;
            dvj[c] = av;
        }
    }
}

static void attn_check(int T, int H, int Hkv, int hs) {
    if (Hkv <= 0 || H % Hkv) tbc_fatal("attn", __FILE__, __LINE__, "H is not a multiple of Hkv");
    if ((size_t)(hs + 2 * T + AT_SLACK) * 4 > 48 * 1024)
        tbc_fatal("attn", __FILE__, __LINE__, "hs + 2T floats exceed 48 KiB of shared memory (T too long for the plain kernel)");
    if (H > 65535) tbc_fatal("attn", __FILE__, __LINE__, "more than 65535 heads");
}

static void cu_attn_fwd(real *out, real *probs, real *rowstat, const real *q, const real *k, const real *v,
                        size_t ldq, size_t ldkv, const uint8_t *key_mask, int sigmoid, const tb_dropout *d,
                        uint32_t site, int B, int T, int H, int Hkv, int hs) {
    if (B <= 0 || T <= 0 || H <= 0 || hs <= 0) return;
    if (!probs) {
        if (sigmoid || !tbc_flash_fits(hs))
            tbc_fatal("attn", __FILE__, __LINE__, "probs == NULL needs softmax and a head size the fused kernel takes");
        tbc_flash_fwd(out, rowstat, q, k, v, ldq, ldkv, key_mask, d, site, B, T, H, Hkv, hs);
        return;
    }
    attn_check(T, H, Hkv, hs);
    if (B > 65535) tbc_fatal("attn", __FILE__, __LINE__, "batch above 65535");
    float scale = (float)(1.0 / sqrt((double)hs));
    dim3 g((unsigned)T, (unsigned)H, (unsigned)B);
    k_attn_fwd<<<g, AT_THREADS, (size_t)(hs + 2 * T + AT_SLACK) * 4, S()>>>(out, probs, rowstat, q, k, v, ldq, ldkv, key_mask,
                                                                sigmoid, tbc_drop_make(d), site, T, H, Hkv, hs,
                                                                scale);
    TBC_LAUNCHED();
}

void tbc_attn_zero_grads(float *dq, float *dk, float *dv, size_t ldq, size_t ldkv, int B, int T, int H, int Hkv,
                         int hs) {
    size_t rows = (size_t)B * T;
    TBC_CHECK(cudaMemset2DAsync(dq, ldq * 4, 0, (size_t)H * hs * 4, rows, S()));
    TBC_CHECK(cudaMemset2DAsync(dk, ldkv * 4, 0, (size_t)Hkv * hs * 4, rows, S()));
    TBC_CHECK(cudaMemset2DAsync(dv, ldkv * 4, 0, (size_t)Hkv * hs * 4, rows, S()));
}

/* set: dq, dk, dv written (attn_bwd_set): the tensor-core kernels store instead of adding;
 * the other paths zero the three first. */
static void attn_bwd_any(real *dq, real *dk, real *dv, const real *dout, const real *out, const real *probs,
                         const real *rowstat, const real *q, const real *k, const real *v, size_t ldq, size_t ldkv,
                         const uint8_t *key_mask, int sigmoid, const tb_dropout *d, uint32_t site, int B, int T,
                         int H, int Hkv, int hs, int set) {
    if (B <= 0 || T <= 0 || H <= 0 || hs <= 0) return;
    if (!probs) {
        if (sigmoid || !tbc_flash_fits(hs))
            tbc_fatal("attn", __FILE__, __LINE__, "probs == NULL needs softmax and a head size the fused kernel takes");
        tbc_flash_bwd(dq, dk, dv, dout, out, rowstat, q, k, v, ldq, ldkv, key_mask, d, site, B, T, H, Hkv, hs, set);
        return;
    }
    if (set) tbc_attn_zero_grads(dq, dk, dv, ldq, ldkv, B, T, H, Hkv, hs);
    /* the plain kernels: masked keys have probs = 0 */
    attn_check(T, H, Hkv, hs);
    float scale = (float)(1.0 / sqrt((double)hs));
    tbc_drop dd = tbc_drop_make(d);
    float *ds = (float *)tbc_scratch(TBC_SCR_ATTN_DS, (size_t)B * H * T * T * 4);
    dim3 g((unsigned)T, (unsigned)H, (unsigned)B);
    k_attn_bwd_q<<<g, AT_THREADS, (size_t)(hs + T + AT_SLACK) * 4, S()>>>(dq, ds, dout, probs, rowstat, q, k, v, ldq, ldkv,
                                                               sigmoid, dd, site, T, H, Hkv, hs, scale);
    TBC_LAUNCHED();
    dim3 g2((unsigned)T, (unsigned)Hkv, (unsigned)B);
    k_attn_bwd_kv<<<g2, AT_THREADS, 0, S()>>>(dk, dv, ds, dout, probs, rowstat, q, ldq, ldkv, sigmoid, dd, site, T,
                                             H, Hkv, hs);
    TBC_LAUNCHED();
}

static void cu_attn_bwd(real *dq, real *dk, real *dv, real *work, const real *dout, const real *out,
                        const real *probs, const real *rowstat, const real *q, const real *k, const real *v,
                        size_t ldq, size_t ldkv, const uint8_t *key_mask, int sigmoid, const tb_dropout *d,
                        uint32_t site, int B, int T, int H, int Hkv, int hs) {
    (void)work;
    attn_bwd_any(dq, dk, dv, dout, out, probs, rowstat, q, k, v, ldq, ldkv, key_mask, sigmoid, d, site, B, T, H, Hkv,
                 hs, 0);
}

static void cu_attn_bwd_set(real *dq, real *dk, real *dv, real *work, const real *dout, const real *out,
                            const real *probs, const real *rowstat, const real *q, const real *k, const real *v,
                            size_t ldq, size_t ldkv, const uint8_t *key_mask, int sigmoid, const tb_dropout *d,
                            uint32_t site, int B, int T, int H, int Hkv, int hs) {
    (void)work;
    attn_bwd_any(dq, dk, dv, dout, out, probs, rowstat, q, k, v, ldq, ldkv, key_mask, sigmoid, d, site, B, T, H, Hkv,
                 hs, 1);
}

/* TB_CUDA_ATTN=plain (or tb_cuda_force_plain_attention) keeps P and uses the plain
 * kernels everywhere: the path of GPUs whose shared memory is too small for the fused
 * kernels, forced for testing. */
static int cu_attn_recomputes(int hs) {
    return !tbc_g->attn_plain && tbc_flash_fits(hs);
}

void tbc_attn_init(tb_ops_dense *ops) {
    ops->attn_fwd = cu_attn_fwd;
    ops->attn_bwd = cu_attn_bwd;
    ops->attn_bwd_set = cu_attn_bwd_set;
    ops->attn_recomputes = cu_attn_recomputes;
}
