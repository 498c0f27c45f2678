/* fp32 GEMM in the CPU's summation order (ops_core.h gemm): each c element is one
 * accumulator that takes a fused multiply-add per k in ascending order, starting from 0
 * (or from c when alpha = beta = 1), then alpha · acc (+ beta · c). This is the CPU
 * backend's contract term for term, so the fp32 mode's products carry the CPU's rounding
 * and the CUDA-vs-CPU comparison measures the other ops, not the order of long sums
 * (a gradient summed over thousands of tokens can differ by 1e-5 of its largest element
 * between two orders). cuBLASLt's fp32 kernels sum in their own order; they stay
 * available (TB_CUDA_FP32_GEMM=cublas) and serve the bf16 / fp16 modes.
 *
 * Tiles: 64 x 64 outputs per block of 256 threads, each thread 4 x 4 (rows ty + 16 i,
 * columns tx + 16 j), k in slabs of 16 staged in shared memory. */
#include "cuda_internal.cuh"

#define OG_BM 64
#define OG_BN 64
#define OG_BK 16

__global__ void __launch_bounds__(256)
    k_gemm_ordered(float *c, const float *a, const float *b, int M, int N, int K, int ta, int tb, int lda, int ldb,
                   int ldc, float alpha, float beta, int onto) {
    __shared__ float As[OG_BK][OG_BM + 4];
    __shared__ float Bs[OG_BK][OG_BN + 4];
    int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    int i0 = blockIdx.y * OG_BM, j0 = blockIdx.x * OG_BN;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int r = i0 + ty + 16 * i, q = j0 + tx + 16 * j;
            acc[i][j] = onto && r < M && q < N ? c[(size_t)r * ldc + q] : 0.0f;
        }
    for (int k0 = 0; k0 < K; k0 += OG_BK) {
        /* 64 x 16 of op(a) and 16 x 64 of op(b): 4 elements per thread each */
        for (int e = tid; e < OG_BM * OG_BK; e += 256) {
            int r, kk;
            if (ta) kk = e / OG_BM, r = e % OG_BM; /* a is (K, M): rows of a run along m */
            else r = e / OG_BK, kk = e % OG_BK;
            int gi = i0 + r, gk = k0 + kk;
            float v = 0;
            if (gi < M && gk < K) v = ta ? a[(size_t)gk * lda + gi] : a[(size_t)gi * lda + gk];
            As[kk][r] = v;
        }
        for (int e = tid; e < OG_BK * OG_BN; e += 256) {
            int q, kk;
            if (tb) q = e / OG_BK, kk = e % OG_BK; /* b is (N, K) */
            else kk = e / OG_BN, q = e % OG_BN;
            int gj = j0 + q, gk = k0 + kk;
            float v = 0;
            if (gj < N && gk < K) v = tb ? b[(size_t)gj * ldb + gk] : b[(size_t)gk * ldb + gj];
            Bs[kk][q] = v;
        }
        __syncthreads();
        int kn = K - k0 < OG_BK ? K - k0 : OG_BK; /* padded k would add fma(0, 0, acc): exact,
                                                     but -0 + 0 would turn -0 into +0 */
        for (int kk = 0; kk < kn; kk++) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) av[i] = As[kk][ty + 16 * i];
#pragma unroll
            for (int j = 0; j < 4; j++) bv[j] = Bs[kk][tx + 16 * j];
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int r = i0 + ty + 16 * i, q = j0 + tx + 16 * j;
            if (r >= M || q >= N) continue;
            float *cp = c + (size_t)r * ldc + q;
            if (onto) *cp = acc[i][j];
            else if (beta == 0.0f) *cp = __fmul_rn(alpha, acc[i][j]);
            else *cp = __fadd_rn(__fmul_rn(alpha, acc[i][j]), __fmul_rn(beta, *cp));
        }
}

void tbc_gemm_ordered(float *c, const float *a, const float *b, int M, int N, int K, int ta, int tb, int lda,
                      int ldb, int ldc, float alpha, float beta) {
    if (M <= 0 || N <= 0) return;
    int onto = alpha == 1.0f && beta == 1.0f;
    if ((size_t)(M + OG_BM - 1) / OG_BM > 65535u) tbc_fatal("gemm", __FILE__, __LINE__, "M too large for the grid");
    dim3 g((unsigned)((N + OG_BN - 1) / OG_BN), (unsigned)((M + OG_BM - 1) / OG_BM));
    k_gemm_ordered<<<g, 256, 0, tbc_g->stream>>>(c, a, b, M, N, K > 0 ? K : 0, ta, tb, lda, ldb, ldc, alpha, beta,
                                                 onto);
    TBC_LAUNCHED();
}
