/* Warp-level bf16 tensor-core tiles shared by the fused attention (flash_tc_kernels.cuh)
 * and the retention / decay tiles (ret_tc_kernels.cuh): mma.sync m16n8k16 on bf16
 * operands with fp32 accumulators, products from shared tiles or from accumulator
 * registers, and the staging of fp32 tensors into bf16 shared tiles. Fragment layouts are
 * PTX's for mma.m16n8k16 (lane = 4 g + t): A holds rows g, g + 8 and columns 2t, 2t + 1,
 * 2t + 8, 2t + 9; B columns (n) g and rows (k) 2t, 2t + 1, 2t + 8, 2t + 9; C rows g, g + 8
 * and columns 2t, 2t + 1. Device code only; builds under CUDA (the includer has included
 * cuda_bf16.h) and under the CPU emulation of tests/cuda_emu (TBC_EMU). */
#ifndef TB_TC_TILES_CUH
#define TB_TC_TILES_CUH

#define TC_THREADS 128

typedef __nv_bfloat16 tc_bf16;

/* The kernels' dynamic shared memory (a plain buffer in the CPU emulation). */
#ifndef TC_DYN_SMEM
#define TC_DYN_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

__device__ __forceinline__ uint32_t tc_pack(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (low half) = lo */
    return *reinterpret_cast<uint32_t *>(&v);
}
__device__ __forceinline__ uint32_t tc_ld32(const tc_bf16 *p) { return *reinterpret_cast<const uint32_t *>(p); }

/* c += A B: one m16n8k16 product, bf16 operands, fp32 accumulators. */
__device__ __forceinline__ void tc_mma(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                       uint32_t b0, uint32_t b1) {
#if defined(TBC_EMU)
    tbc_emu_mma_bf16(c, a0, a1, a2, a3, b0, b1); /* tests/cuda_emu: the PTX layouts on the CPU */
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    /* never launched below sm_80 (tbc_flash_tc_fits); keeps the P40 / sm_75 builds going */
    (void)c, (void)a0, (void)a1, (void)a2, (void)a3, (void)b0, (void)b1;
    __trap();
#else
    /* not volatile: no side effects, so the compiler may interleave independent products */
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

/* Asynchronous copies and ldmatrix (sm_80+; the fused attention's staging). tc_cp<N>: N
 * bytes global -> shared, 16 (tc_cp16; cp.async.cg: through L2 only) or 4 (cp.async.ca:
 * for rows whose addresses are not 16-byte aligned, e.g. odd head sizes or offset
 * tensors), in flight until tc_cp_wait<N>
 * leaves at most N of the committed groups pending; the barrier after it makes the data
 * visible to the other threads. tc_ldsm4 (.trans: tc_ldsm4t): four 8 x 8 bf16 matrices
 * whose rows the warp's lanes address (lanes 8i .. 8i + 7 the rows of matrix i); lane 4 g +
 * t gets row g, columns 2t, 2t + 1 of each (transposed: rows 2t, 2t + 1 of column g). */
template <int N>
__device__ __forceinline__ void tc_cp(void *dst, const void *src) {
    static_assert(N == 4 || N == 16, "tc_cp copies 4 or 16 bytes");
#if defined(TBC_EMU)
    memcpy(dst, src, N);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    if constexpr (N == 16) *reinterpret_cast<int4 *>(dst) = *reinterpret_cast<const int4 *>(src);
    else *reinterpret_cast<float *>(dst) = *reinterpret_cast<const float *>(src);
#else
    unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    if constexpr (N == 16) asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(src));
    else asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(src));
#endif
}
__device__ __forceinline__ void tc_cp16(void *dst, const void *src) { tc_cp<16>(dst, src); }
__device__ __forceinline__ void tc_cp_commit(void) {
#if !defined(TBC_EMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int N>
__device__ __forceinline__ void tc_cp_wait(void) {
#if !defined(TBC_EMU) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}
template <bool TRANS>
__device__ __forceinline__ void tc_ldsm4(uint32_t (&r)[4], const tc_bf16 *p) {
#if defined(TBC_EMU)
    tbc_emu_ldsm_x4(r, p, TRANS);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    (void)p;
    r[0] = r[1] = r[2] = r[3] = 0;
    __trap(); /* never launched below sm_80, as tc_mma */
#else
    unsigned s = (unsigned)__cvta_generic_to_shared(p);
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(s));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(s));
#endif
}

/* ROWS x HS bf16 rows at src (row stride lds, HS by default: contiguous) into a shared tile
 * of row stride HS + 8 by 16-byte asynchronous copies (consecutive threads, consecutive
 * chunks). */
template <int HS, int ROWS>
__device__ __forceinline__ void tc_copy_tile(tc_bf16 *dst, const tc_bf16 *src, size_t lds = HS) {
    constexpr int CPR = HS / 8, N = ROWS * CPR;
    static_assert(N % TC_THREADS == 0, "tile not a multiple of the block");
#pragma unroll
    for (int i = 0; i < N / TC_THREADS; i++) {
        int c = (int)threadIdx.x + i * TC_THREADS;
        tc_cp16(dst + (c / CPR) * (HS + 8) + (c % CPR) * 8, src + (size_t)(c / CPR) * lds + (c % CPR) * 8);
    }
}

/* Fragments by ldmatrix. tc_frag_a: the A fragment of rows 0..15, k-chunk kc of a row-major
 * tile (stride ld). tc_frag_bn: B fragments of n-tiles 2p and 2p + 1 (b[0], b[1] and b[2],
 * b[3]), k-chunk kc, from an n-major tile (element (k, n) at Bn[n·ld + k]); tc_frag_bk the
 * same from a k-major tile (element (k, n) at Bk[k·ld + n]) through the transposing load. */
__device__ __forceinline__ void tc_frag_a(uint32_t (&a)[4], const tc_bf16 *A, int ld, int kc, int lane) {
    tc_ldsm4<false>(a, A + (lane & 15) * ld + kc * 16 + 8 * (lane >> 4));
}
__device__ __forceinline__ void tc_frag_bn(uint32_t (&b)[4], const tc_bf16 *Bn, int ld, int p, int kc, int lane) {
    tc_ldsm4<false>(b, Bn + (p * 16 + (lane & 7) + 8 * (lane >> 4)) * ld + kc * 16 + 8 * ((lane >> 3) & 1));
}
/* The A fragment of rows 0..15, k-chunk kc of a k-major tile (element (m, k) at At[k·ld +
 * m]) through the transposing load. */
__device__ __forceinline__ void tc_frag_at(uint32_t (&a)[4], const tc_bf16 *At, int ld, int kc, int lane) {
    tc_ldsm4<true>(a, At + (kc * 16 + (lane & 7) + 8 * (lane >> 4)) * ld + 8 * ((lane >> 3) & 1));
}
__device__ __forceinline__ void tc_frag_bk(uint32_t (&b)[4], const tc_bf16 *Bk, int ld, int p, int kc, int lane) {
    tc_ldsm4<true>(b, Bk + (kc * 16 + (lane & 15)) * ld + p * 16 + 8 * (lane >> 4));
}

/* Zero N accumulator tiles. */
template <int N>
__device__ __forceinline__ void tc_zero(float (&a)[N][4]) {
#pragma unroll
    for (int n = 0; n < N; n++) a[n][0] = a[n][1] = a[n][2] = a[n][3] = 0;
}

/* acc[n][·] (16 x 8·NN) += A (the warp's 16 rows at A + r0·lda, row-major) · Bn (n-major:
 * element (k, n) at Bn[n·ldb + k]) over k < K (a multiple of 16). */
template <int K, int NN>
__device__ __forceinline__ void tc_gemm_ss(float (&acc)[NN][4], const tc_bf16 *A, int lda, const tc_bf16 *Bn,
                                           int ldb, int g, int t) {
#pragma unroll
    for (int kc = 0; kc < K / 16; kc++) {
        const tc_bf16 *a = A + kc * 16 + 2 * t;
        uint32_t a0 = tc_ld32(a + g * lda), a1 = tc_ld32(a + (g + 8) * lda);
        uint32_t a2 = tc_ld32(a + g * lda + 8), a3 = tc_ld32(a + (g + 8) * lda + 8);
#pragma unroll
        for (int n = 0; n < NN; n++) {
            const tc_bf16 *b = Bn + (n * 8 + g) * ldb + kc * 16 + 2 * t;
            tc_mma(acc[n], a0, a1, a2, a3, tc_ld32(b), tc_ld32(b + 8));
        }
    }
}

/* hi = the bf16 pair of (x0, x1), lo = the bf16 pair of the remainders. */
__device__ __forceinline__ void tc_split(float x0, float x1, uint32_t &hi, uint32_t &lo) {
    __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
    hi = *reinterpret_cast<uint32_t *>(&h);
    lo = tc_pack(x0 - __bfloat162float(h.x), x1 - __bfloat162float(h.y));
}

/* acc[n][·] += P Bn where P (16 x 16·KK) lives in accumulator registers p[2·KK][4] (the C
 * layout of a 16 x 8 tile per entry): two C tiles side by side are one A fragment. */
template <int KK, int NN>
__device__ __forceinline__ void tc_gemm_rs(float (&acc)[NN][4], const float (&p)[2 * KK][4], const tc_bf16 *Bn,
                                           int ldb, int g, int t) {
#pragma unroll
    for (int kc = 0; kc < KK; kc++) {
        uint32_t a0 = tc_pack(p[2 * kc][0], p[2 * kc][1]), a1 = tc_pack(p[2 * kc][2], p[2 * kc][3]);
        uint32_t a2 = tc_pack(p[2 * kc + 1][0], p[2 * kc + 1][1]), a3 = tc_pack(p[2 * kc + 1][2], p[2 * kc + 1][3]);
#pragma unroll
        for (int n = 0; n < NN; n++) {
            const tc_bf16 *b = Bn + (n * 8 + g) * ldb + kc * 16 + 2 * t;
            tc_mma(acc[n], a0, a1, a2, a3, tc_ld32(b), tc_ld32(b + 8));
        }
    }
}

/* The products of tc_gemm_ss / _rs with every shared operand read by ldmatrix (tc_frag_*),
 * a quarter of the shared-memory load instructions, and their split forms (_ss3: A and B
 * as bf16 hi + lo tiles; _rs3: P from registers split into hi + lo). B of the _ss forms is
 * n-major, of the _rs forms k-major. NN even. */
/* acc += A B over k < K (a multiple of 16) from shared tiles: A (16 rows) row-major by
 * tc_frag_a, or k-major (AK: element (m, k) at A[k·lda + m]) by tc_frag_at; B n-major by
 * tc_frag_bn, or k-major (BK) by tc_frag_bk. */
template <int K, int NN, bool AK, bool BK>
__device__ __forceinline__ void tc_mm(float (&acc)[NN][4], const tc_bf16 *A, int lda, const tc_bf16 *B, int ldb,
                                      int lane) {
#pragma unroll
    for (int kc = 0; kc < K / 16; kc++) {
        uint32_t a[4];
        if constexpr (AK) tc_frag_at(a, A, lda, kc, lane);
        else tc_frag_a(a, A, lda, kc, lane);
#pragma unroll
        for (int p = 0; p < NN / 2; p++) {
            uint32_t b[4];
            if constexpr (BK) tc_frag_bk(b, B, ldb, p, kc, lane);
            else tc_frag_bn(b, B, ldb, p, kc, lane);
            tc_mma(acc[2 * p], a[0], a[1], a[2], a[3], b[0], b[1]);
            tc_mma(acc[2 * p + 1], a[0], a[1], a[2], a[3], b[2], b[3]);
        }
    }
}
template <int K, int NN>
__device__ __forceinline__ void tc_mm_ss(float (&acc)[NN][4], const tc_bf16 *A, int lda, const tc_bf16 *Bn, int ldb,
                                         int lane) {
    tc_mm<K, NN, false, false>(acc, A, lda, Bn, ldb, lane);
}
/* The split product ("bf16x3") of n-tiles 2p and 2p + 1: acc += (Ah + Al)(Bh + Bl) as Al Bh
 * + Ah Bl + Ah Bh per accumulator (the small terms first; Al Bl, ~2^-16 relative, is left
 * out), the two tiles' products interleaved so consecutive mma are independent. The product
 * carries fp32 inputs to ~2^-16 instead of bf16's 2^-8: what attention scores need, since
 * an error e in a score scales its probability by exp(e). */
template <int NN>
__device__ __forceinline__ void tc_mma3x2(float (&acc)[NN][4], int p, const uint32_t (&a)[4], const uint32_t (&l)[4],
                                          const uint32_t (&bh)[4], const uint32_t (&bl)[4]) {
    float(&c0)[4] = acc[2 * p];
    float(&c1)[4] = acc[2 * p + 1];
    tc_mma(c0, l[0], l[1], l[2], l[3], bh[0], bh[1]);
    tc_mma(c1, l[0], l[1], l[2], l[3], bh[2], bh[3]);
    tc_mma(c0, a[0], a[1], a[2], a[3], bl[0], bl[1]);
    tc_mma(c1, a[0], a[1], a[2], a[3], bl[2], bl[3]);
    tc_mma(c0, a[0], a[1], a[2], a[3], bh[0], bh[1]);
    tc_mma(c1, a[0], a[1], a[2], a[3], bh[2], bh[3]);
}
/* One k-chunk of a split product: acc[n] += (a + l)(Bh + Bl) over the NN n-tiles, B
 * n-major (tc_frag_bn) or k-major (BK, tc_frag_bk). */
template <int NN, bool BK>
__device__ __forceinline__ void tc_mma3_kc(float (&acc)[NN][4], const uint32_t (&a)[4], const uint32_t (&l)[4],
                                           const tc_bf16 *Bh, const tc_bf16 *Bl, int ldb, int kc, int lane) {
#pragma unroll
    for (int p = 0; p < NN / 2; p++) {
        uint32_t bh[4], bl[4];
        if constexpr (BK) tc_frag_bk(bh, Bh, ldb, p, kc, lane), tc_frag_bk(bl, Bl, ldb, p, kc, lane);
        else tc_frag_bn(bh, Bh, ldb, p, kc, lane), tc_frag_bn(bl, Bl, ldb, p, kc, lane);
        tc_mma3x2(acc, p, a, l, bh, bl);
    }
}
template <int K, int NN>
__device__ __forceinline__ void tc_mm_ss3(float (&acc)[NN][4], const tc_bf16 *A, const tc_bf16 *Al, int lda,
                                          const tc_bf16 *Bn, const tc_bf16 *Bl, int ldb, int lane) {
#pragma unroll
    for (int kc = 0; kc < K / 16; kc++) {
        uint32_t a[4], l[4];
        tc_frag_a(a, A, lda, kc, lane);
        tc_frag_a(l, Al, lda, kc, lane);
        tc_mma3_kc<NN, false>(acc, a, l, Bn, Bl, ldb, kc, lane);
    }
}
template <int KK, int NN>
__device__ __forceinline__ void tc_mm_rs(float (&acc)[NN][4], const float (&p)[2 * KK][4], const tc_bf16 *Bk, int ldb,
                                         int lane) {
#pragma unroll
    for (int kc = 0; kc < KK; kc++) {
        uint32_t a0 = tc_pack(p[2 * kc][0], p[2 * kc][1]), a1 = tc_pack(p[2 * kc][2], p[2 * kc][3]);
        uint32_t a2 = tc_pack(p[2 * kc + 1][0], p[2 * kc + 1][1]), a3 = tc_pack(p[2 * kc + 1][2], p[2 * kc + 1][3]);
#pragma unroll
        for (int q = 0; q < NN / 2; q++) {
            uint32_t b[4];
            tc_frag_bk(b, Bk, ldb, q, kc, lane);
            tc_mma(acc[2 * q], a0, a1, a2, a3, b[0], b[1]);
            tc_mma(acc[2 * q + 1], a0, a1, a2, a3, b[2], b[3]);
        }
    }
}
template <int KK, int NN>
__device__ __forceinline__ void tc_mm_rs3(float (&acc)[NN][4], const float (&p)[2 * KK][4], const tc_bf16 *Bk,
                                          const tc_bf16 *Bl, int ldb, int lane) {
#pragma unroll
    for (int kc = 0; kc < KK; kc++) {
        uint32_t a[4], l[4];
        tc_split(p[2 * kc][0], p[2 * kc][1], a[0], l[0]);
        tc_split(p[2 * kc][2], p[2 * kc][3], a[1], l[1]);
        tc_split(p[2 * kc + 1][0], p[2 * kc + 1][1], a[2], l[2]);
        tc_split(p[2 * kc + 1][2], p[2 * kc + 1][3], a[3], l[3]);
        tc_mma3_kc<NN, true>(acc, a, l, Bk, Bl, ldb, kc, lane);
    }
}

/* ROWS x HS tile of a (tokens, ld) fp32 tensor from row r0 (of T) into bf16 shared tiles,
 * zero outside (r0 + r >= T or c >= hs): rm[r·(HS + 8) + c] when rm is not NULL,
 * tr[c·(ROWS + 8) + r] when tr is not NULL (one global read serves both). The retention
 * tiles' staging (the attention stages once per call, k_fat_prep). */
template <int HS, int ROWS>
__device__ __forceinline__ void tc_stage(tc_bf16 *rm, tc_bf16 *tr, const float *src, size_t ld, int r0, int T,
                                         int hs) {
    /* Thread tid takes column c = tid % HS of rows tid / HS + i·RS (HS divides the block):
     * CH loads issued before the first is used, since a load that waits for the previous
     * element's conversion and store pays the L2 latency once per element. */
    constexpr int RS = TC_THREADS / HS, N = ROWS / RS, CH = N < 8 ? N : 8;
    static_assert(RS * HS == TC_THREADS && N * RS == ROWS && N % CH == 0, "tile not a multiple of the block");
    int c = threadIdx.x % HS, rt = threadIdx.x / HS;
    bool cin = c < hs;
    const float *p = src + (size_t)(r0 + rt) * ld + c;
#pragma unroll 1
    for (int c0 = 0; c0 < N; c0 += CH) {
        float x[CH];
#pragma unroll
        for (int i = 0; i < CH; i++) {
            int r = rt + (c0 + i) * RS;
            x[i] = cin && r0 + r < T ? p[(size_t)(c0 + i) * RS * ld] : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < CH; i++) {
            int r = rt + (c0 + i) * RS;
            tc_bf16 h = __float2bfloat16_rn(x[i]);
            if (rm) rm[r * (HS + 8) + c] = h;
            if (tr) tr[c * (ROWS + 8) + r] = h;
        }
    }
}

#endif
