/* The device code of the tensor-core fused attention (flash_tc_cuda.cu has the contract,
 * the layouts and the launchers). A header so tests/cuda_emu can build the same kernels
 * for its CPU emulation of a thread block (TBC_EMU: its own bf16 type, barriers, shuffles
 * and an mma that follows the PTX fragment layouts); the includer has included
 * cuda_drop.cuh (and, with CUDA, cuda_bf16.h). */
#ifndef TB_FLASH_TC_KERNELS_CUH
#define TB_FLASH_TC_KERNELS_CUH
#include "tc_tiles.cuh"

#define TC_BR 64 /* rows per block: queries (forward, dq) or keys (dk, dv) */
#define TC_BC 64 /* keys per tile (forward, dq); one dropout word (tc_dropmask_words) */

/* Attention dropout as bits: word dm[row · W + jw] (W = Tp / 64 words a row; row = (b · H +
 * h) · T + i) has bit c set where element (row, 64 jw + c) is kept: the draws of
 * tbc_drop_factor at element row · T + j (layers/dropout.h), 0 for j >= T. Drawn once per
 * call, a thread a word (the Philox blocks of four consecutive elements that cover its 64),
 * by the extra block row of k_fat_prep, instead of in each kernel's inner loop. One 64-key
 * tile is one word. Words x = start, start + stride, ... below rows · W. */
/* Philox4x32-10 (tbc_philox_block) at counter (c0, c1, c2, c3) with c0..c2 and the key
 * fixed: the first round and half the second depend on them alone, so they are done once
 * (tc_philox_pre) and each block costs 17 of the 20 multiplies. Same words bit for bit. */
struct tc_philox_pre {
    uint32_t v, a, b, c, k0, k1; /* c2 of round 0 is v ^ c3; after round 1 (hi ^ a, lo, b, c) */
};
__device__ __forceinline__ tc_philox_pre tc_philox_prep(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1,
                                                        uint32_t c2) {
    tc_philox_pre P;
    uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
    uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
    uint32_t u0 = hi1 ^ c1 ^ k0; /* round 0's c0, c1 = lo1, c2 = hi0 ^ c3 ^ k1, c3 = lo0 */
    P.v = hi0 ^ k1;
    k0 += 0x9E3779B9u, k1 += 0xBB67AE85u;
    P.a = lo1 ^ k0; /* round 1: c0 = hi(M1 c2) ^ lo1 ^ k0, c2 = hi(M0 u0) ^ lo0 ^ k1, c3 = lo(M0 u0) */
    P.b = __umulhi(0xD2511F53u, u0) ^ lo0 ^ k1;
    P.c = 0xD2511F53u * u0;
    P.k0 = k0 + 0x9E3779B9u, P.k1 = k1 + 0xBB67AE85u;
    return P;
}
/* (h << 1) | the sign bit of y (a funnel shift) */
__device__ __forceinline__ uint32_t tc_shl1_in(uint32_t h, uint32_t y) {
#if defined(TBC_EMU)
    return h << 1 | y >> 31;
#else
    return __funnelshift_l(y, h, 1);
#endif
}
__device__ __forceinline__ void tc_philox_run(const tc_philox_pre &P, uint32_t c3, uint32_t w[4]) {
    uint32_t x = P.v ^ c3;
    tbc_philox_rounds<2>(__umulhi(0xCD9E8D57u, x) ^ P.a, 0xCD9E8D57u * x, P.b, P.c, P.k0, P.k1, w);
}
__device__ __forceinline__ void tc_dropmask_words(uint64_t *dm, const tbc_drop &d, uint32_t site, size_t rows,
                                                  int T, int W, size_t start, size_t stride) {
    size_t n = rows * (size_t)W;
    tc_philox_pre P = tc_philox_prep(d.k0, d.k1, d.step, d.layer, site);
#if !defined(TBC_EMU)
    /* in registers: as uniform values the compiler splits P's XORs again and copies
     * operands per block */
    asm volatile("" : "+r"(P.v), "+r"(P.a), "+r"(P.b), "+r"(P.c));
#endif
    /* element e dropped where (w >> 8) - thr < 0 (thr <= 2^24; none kept above) */
    uint32_t nthr = 0u - d.thr;
    uint64_t any = d.thr > 0xFFFFFFu ? 0 : ~(uint64_t)0;
    for (size_t x = start; x < n; x += stride) {
        size_t row = x / W;
        int j0 = (int)(x % W) * 64, jn = T - j0 < 64 ? T - j0 : 64;
        uint64_t e0 = (uint64_t)row * T + j0, e1 = e0 + (uint64_t)jn, bits = 0;
        if (jn == 64 && (e0 & 3) == 0) { /* a whole word of whole blocks: no bounds per element */
            /* the dropped flags, shifted in from the last element down to the first */
            uint32_t b0 = (uint32_t)(e0 / 4), half[2] = {0, 0};
#pragma unroll
            for (int q4 = 15; q4 >= 0; q4--) {
                uint32_t w[4];
                tc_philox_run(P, b0 + (uint32_t)q4, w);
#pragma unroll
                for (int e = 3; e >= 0; e--) half[q4 / 8] = tc_shl1_in(half[q4 / 8], (w[e] >> 8) + nthr);
            }
            dm[x] = ~((uint64_t)half[1] << 32 | half[0]) & any;
            continue;
        }
        for (uint64_t blk = e0 & ~(uint64_t)3; blk < e1; blk += 4) {
            uint32_t w[4];
            tbc_philox_block(d.k0, d.k1, d.step, d.layer, site, blk, w);
#pragma unroll
            for (int q = 0; q < 4; q++) {
                uint64_t e = blk + (uint64_t)q;
                if (e >= e0 && e < e1 && (w[q] >> 8) >= d.thr) bits |= (uint64_t)1 << (e - e0);
            }
        }
        dm[x] = bits;
    }
}
/* The dropout factor of a key bit c of word wd. */
__device__ __forceinline__ float tc_keep(uint64_t wd, int c, float scale) { return (wd >> c) & 1 ? scale : 0.0f; }

/* Queries per tile of k_fat_bwd_kv: 32 at every head size. At 64 (HS 64) a block took 254
 * registers and 111 KiB of shared memory, two blocks an SM; at 32, 168 registers and 74
 * KiB, three blocks: the kernel waits on the latency of its mma chains and loads, and the
 * third block hides more of it (frankenstein 258.1 -> 226.1 µs a call, 2026-11-24). At 16
 * (HS 64: 128 registers, 55 KiB, four blocks) it was no faster than 32 once the loop lost
 * its global-load waits and a barrier (181 vs 176 µs): twice the K and V fragment loads
 * a query, on a shared-memory pipe already 70-80% busy. */
static constexpr int tc_fat_bq(int) { return 32; }
/* Rows of the staged tensors: T padded to whole tiles. */
static inline int tc_fat_tp(int T) { return (T + TC_BC - 1) / TC_BC * TC_BC; }

/* The staged operands (k_fat_prep): bf16 copies of q, k, v and dO in per-head row-major
 * blocks [b][head][Tp][HS], zero outside (t < T, c < hs), hi = bf16(x) and lo = bf16(x -
 * hi) for the split products. One scratch region holds them: qh, ql, oh, ol (B·H·Tp·HS
 * each), then kh, kl, vh, vl (B·Hkv·Tp·HS each). The forward fills qh, ql, kh, kl, vh, vl;
 * the backward qh, ql, oh, kh, kl, vh, and with SPLIT & 4 ol and vl. */
struct tc_fat_ws {
    tc_bf16 *qh, *ql, *oh, *ol, *kh, *kl, *vh, *vl;
};
static inline size_t tc_fat_ws_elems(int B, int T, int H, int Hkv, int HS) {
    size_t tp = (size_t)tc_fat_tp(T);
    return 4 * (size_t)B * H * tp * HS + 4 * (size_t)B * Hkv * tp * HS;
}
static inline tc_fat_ws tc_fat_ws_carve(tc_bf16 *base, int B, int T, int H, int Hkv, int HS) {
    size_t nq = (size_t)B * H * tc_fat_tp(T) * HS, nk = (size_t)B * Hkv * tc_fat_tp(T) * HS;
    tc_fat_ws w;
    w.qh = base, w.ql = base + nq, w.oh = base + 2 * nq, w.ol = base + 3 * nq;
    w.kh = base + 4 * nq, w.kl = w.kh + nk, w.vh = w.kh + 2 * nk, w.vl = w.kh + 3 * nk;
    return w;
}

/* Each kernel's dynamic shared memory in bytes: tiles of rows x (HS + 8) bf16, the
 * streamed ones twice (double buffered) but the forward's V (once: 72 KiB at HS 64, three
 * blocks an SM). */
static inline size_t tc_fat_tile(int HS, int rows) { return (size_t)rows * (HS + 8) * 2; }
static inline size_t tc_fat_smem_fwd(int HS) { return 2 * tc_fat_tile(HS, TC_BR) + 6 * tc_fat_tile(HS, TC_BC); }
/* k_fat_dq's: two stages of a dSᵀ tile and K's hi and lo tiles (lo with SPLIT & 1). */
static inline size_t tc_fat_smem_q(int HS) { return 2 * (2 * tc_fat_tile(HS, TC_BC) + tc_fat_tile(TC_BR, TC_BC)); }
/* k_fat_bwd_kv's: K, K's lo half and V (and V's lo with SPLIT & 4) once, two stages of Q,
 * Q's lo half and dO (and dO's lo with SPLIT & 4). */
static inline size_t tc_fat_smem_kv(int HS, int split) {
    int dp = (split & 4) != 0;
    return (size_t)(3 + dp) * tc_fat_tile(HS, TC_BR) + (size_t)2 * (3 + dp) * tc_fat_tile(HS, tc_fat_bq(HS));
}

/* n / d for n < 2^31 by a multiply and a shift (the staging's row and head indices: two
 * run-time 32-bit divisions per quad were a fifth of k_fat_prep's instructions): s =
 * ceil(log2 d), M = ceil(2^(31 + s) / d) < 2^32; exact since n (M d - 2^(31 + s)) < 2^31
 * d <= 2^(31 + s). */
struct tc_fdiv {
    uint32_t m;
    int k;
};
static inline tc_fdiv tc_fdiv_make(unsigned d) {
    int s = 0;
    while ((1ull << s) < d) s++;
    tc_fdiv f;
    f.k = 31 + s;
    f.m = (uint32_t)(((1ull << f.k) + d - 1) / d);
    return f;
}
__device__ __forceinline__ unsigned tc_fdiv_q(unsigned n, const tc_fdiv &f) {
    return (unsigned)(((uint64_t)n * f.m) >> f.k);
}

/* Up to four staging jobs of one k_fat_prep launch (block b % ntask picks one). */
struct tc_prep_job {
    const float *x;     /* (B, T, heads · hs) with row stride ld, head h at column h · hs */
    tc_bf16 *hi, *lo;   /* [B][heads][Tp][HS]; lo may be NULL */
    size_t ld;
    int heads;
    tc_fdiv by_heads;
};
struct tc_prep_jobs {
    tc_prep_job j[4];
    int n;
    /* the dropout bits (tc_dropmask_words) by block row n when dm is not NULL */
    uint64_t *dm;
    tbc_drop d;
    uint32_t site;
    size_t rows;
    int W;
    tc_fdiv by_tp; /* division by the staged rows Tp (set with the dropout task) */
};

/* The jobs of a call (host side; the CUDA launchers and the CPU emulation): the forward
 * stages q, k, v (lo halves for the split products of SPLIT), the backward q, dO, k, v. */
static inline void tc_prep_add(tc_prep_jobs &J, const float *x, tc_bf16 *hi, tc_bf16 *lo, size_t ld, int heads) {
    tc_prep_job &j = J.j[J.n++];
    j.x = x, j.hi = hi, j.lo = lo, j.ld = ld, j.heads = heads;
    j.by_heads = tc_fdiv_make((unsigned)heads);
}
static inline tc_prep_jobs tc_prep_fwd_jobs(const tc_fat_ws &ws, int split, const float *q, const float *k,
                                            const float *v, size_t ldq, size_t ldkv, int H, int Hkv) {
    tc_prep_jobs J;
    memset(&J, 0, sizeof J);
    tc_prep_add(J, q, ws.qh, split & 1 ? ws.ql : NULL, ldq, H);
    tc_prep_add(J, k, ws.kh, split & 1 ? ws.kl : NULL, ldkv, Hkv);
    tc_prep_add(J, v, ws.vh, split & 2 ? ws.vl : NULL, ldkv, Hkv);
    return J;
}
static inline tc_prep_jobs tc_prep_bwd_jobs(const tc_fat_ws &ws, int split, const float *q, const float *dout,
                                            const float *k, const float *v, size_t ldq, size_t ldkv, int H,
                                            int Hkv, int hs) {
    tc_prep_jobs J;
    memset(&J, 0, sizeof J);
    tc_prep_add(J, q, ws.qh, split & 1 ? ws.ql : NULL, ldq, H);
    tc_prep_add(J, dout, ws.oh, split & 4 ? ws.ol : NULL, (size_t)H * hs, H);
    tc_prep_add(J, k, ws.kh, split & 1 ? ws.kl : NULL, ldkv, Hkv);
    tc_prep_add(J, v, ws.vh, split & 4 ? ws.vl : NULL, ldkv, Hkv);
    return J;
}
/* The dropout words of a call (rows x W), and the jobs' dropout task with its buffer dm
 * (left off when d is not active), and their divisor by Tp. */
static inline size_t tc_drop_words(int B, int T, int H) { return (size_t)B * H * T * (tc_fat_tp(T) / TC_BC); }
static inline void tc_prep_drop(tc_prep_jobs &J, const tbc_drop &d, uint32_t site, int B, int T, int H,
                                uint64_t *dm) {
    J.dm = d.active ? dm : NULL;
    J.rows = (size_t)B * H * T;
    J.W = tc_fat_tp(T) / TC_BC;
    J.d = d, J.site = site;
    J.by_tp = tc_fdiv_make((unsigned)tc_fat_tp(T));
}
/* Blocks a task of k_fat_prep needs: the largest job's eights (H >= Hkv) over 256 threads. */
static inline size_t tc_prep_blocks(int B, int T, int H, int HS) {
    return ((size_t)B * H * tc_fat_tp(T) * HS / 8 + 255) / 256;
}
static inline unsigned tc_prep_tasks(const tc_prep_jobs &J) { return (unsigned)(J.n + (J.dm != NULL)); }

/* hi / lo of a job, eight values a thread per grid-stride step (HS is a multiple of 8), and
 * the dropout bits: block b serves task b % ntask (the jobs, then the bits when jobs.dm is
 * set) as its block b / ntask of gridDim.x / ntask, so the memory-bound staging and the
 * arithmetic-bound draws are interleaved over the machine in one launch. Index arithmetic
 * in 32 bits (tc_prep_fits: a job's B·heads·Tp·HS < 2^32) with HS a template argument: the
 * 64-bit divisions per quad were most of the staging's time. 16-byte loads where the
 * job's row stride, hs and base allow, and one 16-byte store of hi and of lo (eight values
 * instead of four a step: 56.1 -> 48.2 µs forward, 61.0 -> 53.7 µs backward with dropout
 * on frankenstein, with tc_dropmask_words' 17-multiply Philox and funnel-shift packing
 * 42.7 and 51.5 µs; bit-identical, 2026-11-25). */
static inline bool tc_prep_fits(int B, int T, int H, int HS) {
    return (unsigned long long)B * H * tc_fat_tp(T) * HS < (1ull << 32);
}
template <int HS>
__global__ void k_fat_prep(tc_prep_jobs jobs, int T, int Tp, int hs, int B) {
    int ntask = jobs.n + (jobs.dm != NULL), task = (int)(blockIdx.x % (unsigned)ntask);
    unsigned bx = blockIdx.x / (unsigned)ntask, nb = gridDim.x / (unsigned)ntask;
    if (task == jobs.n) {
        tc_dropmask_words(jobs.dm, jobs.d, jobs.site, jobs.rows, T, jobs.W, (size_t)bx * blockDim.x + threadIdx.x,
                          (size_t)nb * blockDim.x);
        return;
    }
    const tc_prep_job &J = jobs.j[task];
    /* eight values (two quads, one 16-byte store of hi and of lo) a thread a step */
    unsigned n = (unsigned)B * (unsigned)J.heads * (unsigned)Tp * (HS / 8), heads = (unsigned)J.heads;
    bool vec = hs % 4 == 0 && J.ld % 4 == 0 && ((uintptr_t)J.x & 15) == 0;
    for (unsigned p = bx * blockDim.x + threadIdx.x; p < n; p += nb * blockDim.x) {
        unsigned rr = p / (HS / 8), c = p % (HS / 8) * 8, bh = tc_fdiv_q(rr, jobs.by_tp), r = rr - bh * (unsigned)Tp;
        unsigned b = tc_fdiv_q(bh, J.by_heads), h = bh - b * heads;
        float x[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (r < (unsigned)T && (int)c < hs) {
            const float *px = J.x + ((size_t)b * T + r) * J.ld + (size_t)h * hs + c;
            if (vec) { /* hs % 4 == 0: c + 3 < hs */
                float4 q4 = *reinterpret_cast<const float4 *>(px);
                x[0] = q4.x, x[1] = q4.y, x[2] = q4.z, x[3] = q4.w;
                if ((int)c + 7 < hs) {
                    q4 = *reinterpret_cast<const float4 *>(px + 4);
                    x[4] = q4.x, x[5] = q4.y, x[6] = q4.z, x[7] = q4.w;
                }
            } else {
#pragma unroll
                for (int i = 0; i < 8; i++)
                    if ((int)c + i < hs) x[i] = px[i];
            }
        }
        int4 hv, lv;
        uint32_t t0, t1;
        tc_split(x[0], x[1], t0, t1), hv.x = (int)t0, lv.x = (int)t1;
        tc_split(x[2], x[3], t0, t1), hv.y = (int)t0, lv.y = (int)t1;
        tc_split(x[4], x[5], t0, t1), hv.z = (int)t0, lv.z = (int)t1;
        tc_split(x[6], x[7], t0, t1), hv.w = (int)t0, lv.w = (int)t1;
        *reinterpret_cast<int4 *>(J.hi + 8 * (size_t)p) = hv;
        if (J.lo) *reinterpret_cast<int4 *>(J.lo + 8 * (size_t)p) = lv;
    }
}

#define TC_LOG2E 1.4426950408889634f
#define TC_LN2 0.6931471805599453f

/* SPLIT (a bench switch; the build's default is TC_SPLIT_DEFAULT): bit 0, the scores as a
 * split product (tc_mm_ss3), and K as hi + lo in dq; bit 1, the forward's output too
 * (tc_mm_rs3); bit 2, the backward's dP̃ = dO Vᵀ (tc_mm_ss3: dS = P (dP̃ - D) cancels, and
 * bf16 dO and V alone had put a tiny case's dq 2.4e-2 off the CPU). */
#define TC_SPLIT_DEFAULT 7

/* The streamed tiles of the kernels below: cp.async copies of the staged operands into one
 * of two shared-memory stages, issued a tile ahead of the one the warps compute on. */

/* Per key tile jt: wait for K jt, a barrier (B1), then the copies of V jt (one stage, free
 * once every warp's P V of jt - 1 is done, which B1 says) and of K jt + 1 (the other
 * stage, whose S of jt - 1 is done too) with the dropout words of jt + 1; S and the online
 * softmax; wait for V jt, a barrier (B2), O += P̃ V. Two barriers a tile, no global load
 * waited on inside the loop (the key flags of tile jt + 1 are read during jt), and an
 * elementwise part that selects instead of branching. */
template <int HS, int SPLIT>
__global__ void __launch_bounds__(TC_THREADS, HS <= 64 ? 3 : 1)
    k_fat_fwd(float *out, float *lse, tc_fat_ws ws, const uint8_t *mask, const uint64_t *dm, float dscale, int T,
              int Tp, int H, int Hkv, int hs, float sl2) {
    constexpr int LH = HS + 8, NT = TC_BC / 8, NO = HS / 8, TQ = TC_BR * LH, TK = TC_BC * LH;
    TC_DYN_SMEM(tc_sm);
    tc_bf16 *Qs = (tc_bf16 *)tc_sm; /* [TC_BR][LH] */
    tc_bf16 *Ql = Qs + TQ;          /* Q - Qs */
    tc_bf16 *st = Ql + TQ;          /* K stage s at st + 2 s TK: K, K - K ([TC_BC][LH] each) */
    tc_bf16 *Vs = st + 4 * TK;      /* V, one stage */
    tc_bf16 *Vl = Vs + TK;          /* V - V */
    __shared__ int km[TC_BC];
    __shared__ uint32_t dws[2][2][TC_BR]; /* K stage s's tile: low and high halves of row r's dropout word */
    int tid = threadIdx.x, lane = tid % 32, w = tid / 32, g = lane / 4, t = lane % 4;
    int i0 = blockIdx.x * TC_BR, h = blockIdx.y, b = blockIdx.z;
    int kh = h / (H / Hkv), nt = Tp / TC_BC;
    size_t qo = (((size_t)b * H + h) * Tp + i0) * HS, ko = ((size_t)b * Hkv + kh) * Tp * HS;
    size_t rowbase = ((size_t)b * H + h) * T;
    /* K tile jt into stage s, and the dropout words of its rows (threads 0..TC_BR - 1, zero
     * past T) */
    auto load_k = [&](int jt, int s) {
        tc_bf16 *sk = st + s * 2 * TK;
        size_t off = ko + (size_t)jt * TC_BC * HS;
        tc_copy_tile<HS, TC_BC>(sk, ws.kh + off);
        if (SPLIT & 1) tc_copy_tile<HS, TC_BC>(sk + TK, ws.kl + off);
        if (dm && tid < TC_BR) {
            if (i0 + tid < T) {
                const uint32_t *wd = reinterpret_cast<const uint32_t *>(dm + (rowbase + i0 + tid) * nt + jt);
                tc_cp<4>(&dws[s][0][tid], wd);
                tc_cp<4>(&dws[s][1][tid], wd + 1);
            } else dws[s][0][tid] = dws[s][1][tid] = 0;
        }
    };
    /* thread tid's key flag of tile jt (tid < TC_BC) */
    auto key_in = [&](int jt) {
        int j = jt * TC_BC + tid;
        return (int)(j < T && (!mask || mask[(size_t)b * T + j]));
    };
    tc_copy_tile<HS, TC_BR>(Qs, ws.qh + qo);
    if (SPLIT & 1) tc_copy_tile<HS, TC_BR>(Ql, ws.ql + qo);
    load_k(0, 0);
    tc_cp_commit();
    int kn = tid < TC_BC ? key_in(0) : 0; /* the flag for km of the coming tile */
    float o[NO][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};
    tc_zero(o);
    int r[2] = {w * 16 + g, w * 16 + g + 8}; /* the thread's two rows in the tile */
    for (int jt = 0; jt < nt; jt++) {
        int j0 = jt * TC_BC;
        if (tid < TC_BC) km[tid] = kn; /* every warp is past B2 of jt - 1: done with km */
        tc_cp_wait<0>();               /* K jt (and Q) have landed */
        __syncthreads();               /* B1 */
        tc_copy_tile<HS, TC_BC>(Vs, ws.vh + ko + (size_t)j0 * HS);
        if (SPLIT & 2) tc_copy_tile<HS, TC_BC>(Vl, ws.vl + ko + (size_t)j0 * HS);
        tc_cp_commit();
        if (jt + 1 < nt) {
            load_k(jt + 1, (jt + 1) & 1);
            if (tid < TC_BC) kn = key_in(jt + 1);
        }
        tc_cp_commit();
        uint64_t dw[2] = {0, 0}; /* the dropout words of the thread's rows */
        if (dm)
#pragma unroll
            for (int a = 0; a < 2; a++)
                dw[a] = (uint64_t)dws[jt & 1][1][r[a]] << 32 | dws[jt & 1][0][r[a]];
        const tc_bf16 *Ks = st + (jt & 1) * 2 * TK, *Kl = Ks + TK;
        float s[NT][4];
        tc_zero(s);
        if (SPLIT & 1) tc_mm_ss3<HS, NT>(s, Qs + w * 16 * LH, Ql + w * 16 * LH, LH, Ks, Kl, LH, lane);
        else tc_mm_ss<HS, NT>(s, Qs + w * 16 * LH, LH, Ks, LH, lane);
        float mt[2] = {-INFINITY, -INFINITY};
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                s[n][e] = km[n * 8 + 2 * t + (e & 1)] ? s[n][e] * sl2 : -INFINITY;
                mt[e >> 1] = fmaxf(mt[e >> 1], s[n][e]);
            }
        float alpha[2], mn[2], rs[2] = {0, 0};
#pragma unroll
        for (int a = 0; a < 2; a++) {
            mt[a] = fmaxf(mt[a], __shfl_xor_sync(0xffffffffu, mt[a], 1));
            mt[a] = fmaxf(mt[a], __shfl_xor_sync(0xffffffffu, mt[a], 2));
            mn[a] = fmaxf(m[a], mt[a]);
            alpha[a] = mn[a] == -INFINITY ? 1.0f : exp2f(m[a] - mn[a]);
            m[a] = mn[a];
        }
        /* P, and P̃ = P m (P m is +0 where P is) */
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                int a = e >> 1, j = n * 8 + 2 * t + (e & 1);
                float p = exp2f(s[n][e] - mn[a]);
                p = s[n][e] == -INFINITY ? 0.0f : p;
                rs[a] += p;
                s[n][e] = dm && i0 + r[a] < T ? p * tc_keep(dw[a], j, dscale) : p;
            }
#pragma unroll
        for (int a = 0; a < 2; a++) l[a] = l[a] * alpha[a] + rs[a]; /* per-lane partial, same alpha per row */
#pragma unroll
        for (int n = 0; n < NO; n++) {
            o[n][0] *= alpha[0], o[n][1] *= alpha[0];
            o[n][2] *= alpha[1], o[n][3] *= alpha[1];
        }
        tc_cp_wait<1>(); /* V jt has landed (only K jt + 1 may be in flight) */
        __syncthreads(); /* B2 */
        if (SPLIT & 2) tc_mm_rs3<TC_BC / 16, NO>(o, s, Vs, Vl, LH, lane);
        else tc_mm_rs<TC_BC / 16, NO>(o, s, Vs, LH, lane);
    }
    size_t ldo = (size_t)H * hs;
#pragma unroll
    for (int a = 0; a < 2; a++) {
        float la = l[a];
        la += __shfl_xor_sync(0xffffffffu, la, 1);
        la += __shfl_xor_sync(0xffffffffu, la, 2);
        int i = i0 + r[a];
        if (i >= T) continue;
        float inv = la > 0 ? 1.0f / la : 0.0f;
        float *orow = out + ((size_t)b * T + i) * ldo + (size_t)h * hs;
#pragma unroll
        for (int n = 0; n < NO; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int c = n * 8 + 2 * t + e;
                if (c < hs) orow[c] = o[n][2 * a + e] * inv;
            }
        if (t == 0) lse[rowbase + i] = la > 0 ? (m[a] + log2f(la)) * TC_LN2 : 0.0f;
    }
}

/* dq += dS K from the dSᵀ that k_fat_bwd_kv stored (bf16, [b][h][key][query], Tp x Tp per
 * head): a block per (64 queries, head, batch) streams 64-key tiles of dSᵀ and K through two
 * stages; dS enters the product as A through the transposing load. The bf16 dS is the one
 * the product would round to anyway, so the recomputation of S, P and dP̃ per query tile
 * (four products of five) is gone. With SPLIT & 1, K enters as hi + lo (dS Kl, then dS Kh):
 * K's own rounding no longer adds to dS's where the terms cancel (Σ_j dS_ij = 0 for
 * softmax), which had put a tiny case (T 9, hs 3, large scores) 2.4e-2 off the CPU. */
template <int HS, int SPLIT>
__global__ void __launch_bounds__(TC_THREADS)
    k_fat_dq(float *dq, const tc_bf16 *dst, tc_fat_ws ws, size_t ldq, int T, int Tp, int H, int Hkv, int hs,
             int set) {
    constexpr int LH = HS + 8, LD = TC_BR + 8, NO = HS / 8, TD = TC_BC * LD;
    constexpr int KL = SPLIT & 1, TK = TC_BC * LH * (1 + KL);
    constexpr int NH = NO / 2, KC = TC_BC / 16; /* a warp's n-tiles; k-chunks a tile */
    TC_DYN_SMEM(tc_sm);
    /* two stages of dSᵀ [TC_BC][LD] at ds, then two of K [TC_BC][LH] (and with KL its lo half) */
    tc_bf16 *ds = (tc_bf16 *)tc_sm, *ks = ds + 2 * TD;
    int tid = threadIdx.x, lane = tid % 32, w = tid / 32, g = lane / 4, t = lane % 4;
    /* warp w: queries 32 (w & 1) .. + 31 (two m-tiles) x columns NH 8 (w >> 1) .. (half the
     * n-tiles): the dS fragments serve both K halves and the K fragments both m-tiles, 24
     * ldmatrix a warp and tile instead of 40 (frankenstein 57.4 -> 56.1 µs; the kernel is
     * bound by L2 traffic, 78% busy, and latency: 128 queries a block, halving the K reads,
     * or a third dSᵀ stage were no faster, 2026-11-25) */
    int wr = (w & 1) * 32, wc = (w >> 1) * NH * 8;
    int i0 = blockIdx.x * TC_BR, h = blockIdx.y, b = blockIdx.z;
    int kh = h / (H / Hkv), nt = Tp / TC_BC;
    const tc_bf16 *db = dst + ((size_t)b * H + h) * Tp * Tp + i0; /* key row j at db + j Tp */
    size_t ko = ((size_t)b * Hkv + kh) * Tp * HS;
    auto load = [&](int jt) { /* tile jt into stage jt & 1 */
        size_t kn = ko + (size_t)jt * TC_BC * HS;
        tc_bf16 *sk = ks + (jt & 1) * TK;
        tc_copy_tile<TC_BR, TC_BC>(ds + (jt & 1) * TD, db + (size_t)jt * TC_BC * Tp, (size_t)Tp);
        tc_copy_tile<HS, TC_BC>(sk, ws.kh + kn);
        if (KL) tc_copy_tile<HS, TC_BC>(sk + TC_BC * LH, ws.kl + kn);
    };
    load(0);
    tc_cp_commit();
    float acc[2][NH][4];
    tc_zero(acc[0]), tc_zero(acc[1]);
    for (int jt = 0; jt < nt; jt++) {
        if (jt + 1 < nt) load(jt + 1);
        tc_cp_commit();
        tc_cp_wait<1>(); /* tile jt has landed */
        __syncthreads();
        const tc_bf16 *Ds = ds + (jt & 1) * TD, *Ks = ks + (jt & 1) * TK + wc;
        uint32_t a[KC][2][4];
#pragma unroll
        for (int kc = 0; kc < KC; kc++)
#pragma unroll
            for (int m = 0; m < 2; m++) tc_frag_at(a[kc][m], Ds + wr + 16 * m, LD, kc, lane);
        /* each accumulator: dS Kl over the tile's k-chunks, then dS Kh (as tc_mm twice) */
#pragma unroll
        for (int pass = 1 - KL; pass < 2; pass++) {
            const tc_bf16 *Kp = pass ? Ks : Ks + TC_BC * LH;
#pragma unroll
            for (int kc = 0; kc < KC; kc++)
#pragma unroll
                for (int p = 0; p < NH / 2; p++) {
                    uint32_t bf[4];
                    tc_frag_bk(bf, Kp, LH, p, kc, lane);
#pragma unroll
                    for (int m = 0; m < 2; m++) {
                        const uint32_t(&am)[4] = a[kc][m];
                        tc_mma(acc[m][2 * p], am[0], am[1], am[2], am[3], bf[0], bf[1]);
                        tc_mma(acc[m][2 * p + 1], am[0], am[1], am[2], am[3], bf[2], bf[3]);
                    }
                }
        }
        __syncthreads(); /* every warp is done with the stage the next copies fill */
    }
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int a = 0; a < 2; a++) {
            int i = i0 + wr + 16 * m + g + 8 * a;
            if (i >= T) continue;
            float *gq = dq + ((size_t)b * T + i) * ldq + (size_t)h * hs;
#pragma unroll
            for (int n = 0; n < NH; n++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    int c = wc + n * 8 + 2 * t + e;
                    if (c < hs) gq[c] = set ? acc[m][n][2 * a + e] : gq[c] + acc[m][n][2 * a + e];
                }
        }
}
/* The split products of Sᵀ = K Qᵀ and dP̃ᵀ = V dOᵀ side by side (tc_mm_ss3 twice, each
 * accumulator's mma in the same order): twice the independent mma chains between the
 * fragment loads. */
template <int HS, int NN>
__device__ __forceinline__ void tc_mm_ss3x2(float (&s)[NN][4], float (&d)[NN][4], const tc_bf16 *A, const tc_bf16 *Al,
                                            const tc_bf16 *B, const tc_bf16 *Bl, const tc_bf16 *C, const tc_bf16 *Cl,
                                            const tc_bf16 *D, const tc_bf16 *Dl, int ld, int lane) {
#pragma unroll
    for (int kc = 0; kc < HS / 16; kc++) {
        uint32_t a[4], l[4], c[4], cl[4];
        tc_frag_a(a, A, ld, kc, lane);
        tc_frag_a(l, Al, ld, kc, lane);
        tc_frag_a(c, C, ld, kc, lane);
        tc_frag_a(cl, Cl, ld, kc, lane);
#pragma unroll
        for (int p = 0; p < NN / 2; p++) {
            uint32_t bh[4], bl[4], dh[4], dl[4];
            tc_frag_bn(bh, B, ld, p, kc, lane), tc_frag_bn(bl, Bl, ld, p, kc, lane);
            tc_frag_bn(dh, D, ld, p, kc, lane), tc_frag_bn(dl, Dl, ld, p, kc, lane);
            tc_mma3x2(s, p, a, l, bh, bl);
            tc_mma3x2(d, p, c, cl, dh, dl);
        }
    }
}

/* BQ queries per tile (fewer registers and less shared memory for HS 128). A tile's
 * statistics (lse, D and the dropout words of its query rows) travel with its Q and dO
 * tiles by cp.async into the same stage, so no warp waits on a global load inside the
 * loop; one barrier per tile: after it every warp is done with the other stage, which the
 * next tile's copies then fill. The elementwise part selects instead of branching. */
template <int HS, int BQ, int SPLIT>
__global__ void __launch_bounds__(TC_THREADS, HS <= 64 ? 3 : 1)
    k_fat_bwd_kv(float *dk, float *dv, tc_bf16 *dst, const float *lse, const float *Dg, tc_fat_ws ws, size_t ldkv,
                 const uint8_t *mask, const uint64_t *dm, float dscale, int T, int Tp, int H, int Hkv, int hs,
                 float scale, int set) {
    constexpr int LH = HS + 8, NT = BQ / 8, NO = HS / 8, TK = TC_BR * LH, TQ = BQ * LH;
    constexpr int DP = (SPLIT & 4) != 0, NS = 3 + DP; /* tiles a stage */
    constexpr bool X2 = (SPLIT & 1) && DP;            /* both products split: tc_mm_ss3x2 */
    static_assert(3 * BQ <= TC_THREADS, "a thread per statistic copied");
    TC_DYN_SMEM(tc_sm);
    tc_bf16 *Ks = (tc_bf16 *)tc_sm; /* [TC_BR][LH] */
    tc_bf16 *Kl = Ks + TK;          /* K - Ks */
    tc_bf16 *Vs = Kl + TK;
    tc_bf16 *Vl = Vs + TK;          /* V - Vs (DP) */
    tc_bf16 *st = Vs + (1 + DP) * TK; /* stage s at st + NS s TQ: Q, Q - Q, dO, dO - dO (DP) */
    /* per stage: lse and D of the tile's query rows, and the low and high 32 bits of each
     * row's dropout word for the block's keys (a thread's keys lie in one half) */
    __shared__ float sl[2][BQ], sD[2][BQ];
    __shared__ uint32_t kw[2][2][BQ];
    int tid = threadIdx.x, lane = tid % 32, w = tid / 32, g = lane / 4, t = lane % 4;
    int j0 = blockIdx.x * TC_BR, kh = blockIdx.y, b = blockIdx.z;
    int group = H / Hkv, ntiles = group * (Tp / BQ), W = Tp / TC_BC;
    size_t ko = (((size_t)b * Hkv + kh) * Tp + j0) * HS;
    /* the copies of query tile (head h, rows i0..) into stage s: Q, dO and the statistics
     * (threads 0..3 BQ - 1, zero past T) */
    auto load = [&](int h, int i0, int s) {
        size_t qo = (((size_t)b * H + h) * Tp + i0) * HS, rowbase = ((size_t)b * H + h) * T;
        tc_bf16 *sq = st + s * NS * TQ;
        tc_copy_tile<HS, BQ>(sq, ws.qh + qo);
        if (SPLIT & 1) tc_copy_tile<HS, BQ>(sq + TQ, ws.ql + qo);
        tc_copy_tile<HS, BQ>(sq + 2 * TQ, ws.oh + qo);
        if (DP) tc_copy_tile<HS, BQ>(sq + 3 * TQ, ws.ol + qo);
        int c = tid % BQ, i = i0 + c;
        if (tid < BQ) {
            if (i < T) tc_cp<4>(&sl[s][c], lse + rowbase + i);
            else sl[s][c] = 0.0f;
        } else if (tid < 2 * BQ) {
            if (i < T) tc_cp<4>(&sD[s][c], Dg + rowbase + i);
            else sD[s][c] = 0.0f;
        } else if (tid < 3 * BQ && dm) {
            if (i < T) {
                const uint32_t *wd = reinterpret_cast<const uint32_t *>(dm + (rowbase + i) * W + blockIdx.x);
                tc_cp<4>(&kw[s][0][c], wd);
                tc_cp<4>(&kw[s][1][c], wd + 1);
            } else kw[s][0][c] = kw[s][1][c] = 0;
        }
    };
    tc_copy_tile<HS, TC_BR>(Ks, ws.kh + ko);
    if (SPLIT & 1) tc_copy_tile<HS, TC_BR>(Kl, ws.kl + ko);
    tc_copy_tile<HS, TC_BR>(Vs, ws.vh + ko);
    if (DP) tc_copy_tile<HS, TC_BR>(Vl, ws.vl + ko);
    load(kh * group, 0, 0);
    tc_cp_commit();
    int jr[2] = {w * 16 + g, w * 16 + g + 8}; /* the thread's two key rows in the block */
    bool kin[2];
#pragma unroll
    for (int a = 0; a < 2; a++) {
        int j = j0 + jr[a];
        kin[a] = j < T && (!mask || mask[(size_t)b * T + j]);
    }
    float ak[NO][4], av[NO][4];
    tc_zero(ak), tc_zero(av);
    float sl2 = scale * TC_LOG2E;
    int h = kh * group, i0 = 0; /* the tile's head and first query */
    for (int it = 0; it < ntiles; it++) {
        int hn = h, in0 = i0 + BQ; /* the next tile's */
        if (in0 == Tp) hn++, in0 = 0;
        tc_cp_wait<0>(); /* this tile's copies have landed */
        __syncthreads(); /* ... for every warp, and every warp is done with the other stage */
        if (it + 1 < ntiles) load(hn, in0, (it + 1) & 1);
        tc_cp_commit();
        int cs = it & 1;
        const tc_bf16 *Qs = st + cs * NS * TQ, *Ql = Qs + TQ, *Os = Qs + 2 * TQ, *Ol = Qs + 3 * TQ;
        float s[NT][4], dp[NT][4];
        tc_zero(s), tc_zero(dp);
        if constexpr (X2) {
            tc_mm_ss3x2<HS, NT>(s, dp, Ks + w * 16 * LH, Kl + w * 16 * LH, Qs, Ql, Vs + w * 16 * LH,
                                Vl + w * 16 * LH, Os, Ol, LH, lane);
        } else {
            if (SPLIT & 1) tc_mm_ss3<HS, NT>(s, Ks + w * 16 * LH, Kl + w * 16 * LH, LH, Qs, Ql, LH, lane);
            else tc_mm_ss<HS, NT>(s, Ks + w * 16 * LH, LH, Qs, LH, lane);
            if (DP) tc_mm_ss3<HS, NT>(dp, Vs + w * 16 * LH, Vl + w * 16 * LH, LH, Os, Ol, LH, lane);
            else tc_mm_ss<HS, NT>(dp, Vs + w * 16 * LH, LH, Os, LH, lane);
        }
        /* P̃ = P m and dS = P (dP̃ m - D) scale, 0 where P is: P m is +0 there as it is, dS
         * takes a select (P · (±x) would give -0) */
#pragma unroll
        for (int n = 0; n < NT; n++)
#pragma unroll
            for (int c = 0; c < 2; c++) {
                int ic = n * 8 + 2 * t + c;
                float slc = sl[cs][ic] * TC_LOG2E, dc = sD[cs][ic];
                uint32_t kb = dm ? kw[cs][w >> 1][ic] : 0;
                bool iin = i0 + ic < T;
#pragma unroll
                for (int a = 0; a < 2; a++) {
                    int e = 2 * a + c;
                    float p = exp2f(s[n][e] * sl2 - slc);
                    p = kin[a] && iin ? p : 0.0f;
                    float mf = dm ? ((kb >> (jr[a] & 31)) & 1 ? dscale : 0.0f) : 1.0f;
                    float ds = p * (dp[n][e] * mf - dc) * scale;
                    s[n][e] = p * mf;
                    dp[n][e] = p != 0 ? ds : 0.0f;
                }
            }
        { /* dSᵀ for k_fat_dq, rounded as the product below rounds it: keys jr, queries i0 + ic */
            tc_bf16 *drow = dst + (((size_t)b * H + h) * Tp + j0) * Tp + i0 + 2 * t;
#pragma unroll
            for (int n = 0; n < NT; n++)
#pragma unroll
                for (int a = 0; a < 2; a++)
                    *reinterpret_cast<uint32_t *>(drow + (size_t)jr[a] * Tp + n * 8) =
                        tc_pack(dp[n][2 * a], dp[n][2 * a + 1]);
        }
        tc_mm_rs<BQ / 16, NO>(av, s, Os, LH, lane);
        tc_mm_rs<BQ / 16, NO>(ak, dp, Qs, LH, lane);
        h = hn, i0 = in0;
    }
#pragma unroll
    for (int a = 0; a < 2; a++) {
        int j = j0 + jr[a];
        if (j >= T) continue;
        size_t off = ((size_t)b * T + j) * ldkv + (size_t)kh * hs;
#pragma unroll
        for (int n = 0; n < NO; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                int c = n * 8 + 2 * t + e;
                if (c < hs) {
                    dk[off + c] = set ? ak[n][2 * a + e] : dk[off + c] + ak[n][2 * a + e];
                    dv[off + c] = set ? av[n][2 * a + e] : dv[off + c] + av[n][2 * a + e];
                }
            }
    }
}

#endif
