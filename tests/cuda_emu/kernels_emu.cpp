/* CUDA kernels run on the CPU emulation of cuda_emu.hpp (trainerd/cuda/flash_tc_kernels.cuh:
 * fused attention on tensor cores; ret_tc_kernels.cuh: retention / decay tiles on tensor
 * cores; moe_kernels.cuh: the MoE scatter backward; scan_kernels.cuh: the Mamba scan;
 * dense_kernels.cuh: the warp-per-row BitLinear quantiser, LN0 backward and dynamic_tanh
 * norm), with the
 * launch geometry of flash_tc_cuda.cu, seq_cuda.cu, moe_cuda.cu, scan_cuda.cu and
 * dense_cuda.cu: the emulation's runtime (thread blocks of
 * POSIX threads, barriers, shuffles, the mma of PTX's fragment layouts) and C entry points
 * for test_kernels_emu.c. */
#include "cuda_emu.hpp"
#include "cuda_drop.cuh"
#include "flash_tc_kernels.cuh"
#include "ret_tc_kernels.cuh"
#include "moe_kernels.cuh"
#include "scan_kernels.cuh"
#include "dense_kernels.cuh"
#include "kernels_emu.h"

thread_local tbc_emu_dim3 threadIdx;
tbc_emu_dim3 blockIdx, blockDim, gridDim;
alignas(16) static unsigned char emu_smem[256 * 1024];
unsigned char *tbc_emu_smem = emu_smem;

/* Exchange buffers of a warp, two of each: a lane's k-th warp-wide call uses set k % 2,
 * so one barrier per call suffices (a lane can run one call ahead, into the other set,
 * but not two: call k + 1's barrier waits for every lane to finish reading call k). */
struct emu_warp {
    pthread_barrier_t bar;
    float shfl[2][32];
    double shfl_d[2][32];
    float A[2][16][16], B[2][16][8];
    const uint16_t *rows[2][32];
};
static thread_local unsigned emu_calls; /* this lane's warp-wide calls so far */
static pthread_barrier_t emu_block_bar;
static emu_warp emu_warps[32];

void __syncthreads(void) { pthread_barrier_wait(&emu_block_bar); }

/* One exchange through the warp's buffer set of this call (see emu_warp). */
template <typename V>
static V emu_shfl_xor(V (&buf)[2][32], V v, int lane_mask) {
    unsigned lane = threadIdx.x % 32, k = emu_calls++ & 1;
    buf[k][lane] = v;
    pthread_barrier_wait(&emu_warps[threadIdx.x / 32].bar);
    return buf[k][lane ^ (unsigned)lane_mask];
}
double __shfl_xor_sync(unsigned mask, double v, int lane_mask) {
    (void)mask;
    return emu_shfl_xor(emu_warps[threadIdx.x / 32].shfl_d, v, lane_mask);
}
float __shfl_xor_sync(unsigned mask, float v, int lane_mask) {
    (void)mask;
    return emu_shfl_xor(emu_warps[threadIdx.x / 32].shfl, v, lane_mask);
}

/* PTX mma.m16n8k16 (.row.col, bf16): lane = 4 g + t holds A (row g, cols 2t, 2t + 1),
 * (row g + 8, cols 2t, 2t + 1), (row g, cols 2t + 8, 2t + 9), (row g + 8, cols 2t + 8,
 * 2t + 9) in a0..a3, the lower column in the low half; B (rows 2t, 2t + 1; col g) in b0
 * and (rows 2t + 8, 2t + 9; col g) in b1; C (row g, cols 2t, 2t + 1) in c0, c1 and (row
 * g + 8, cols 2t, 2t + 1) in c2, c3. */
void tbc_emu_mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1) {
    unsigned lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, k = emu_calls++ & 1;
    emu_warp &w = emu_warps[threadIdx.x / 32];
    float(&A)[16][16] = w.A[k];
    float(&Bm)[16][8] = w.B[k];
    auto lo = [](uint32_t r) { return tbc_emu_bf16_float((uint16_t)(r & 0xffffu)); };
    auto hi = [](uint32_t r) { return tbc_emu_bf16_float((uint16_t)(r >> 16)); };
    A[g][2 * t] = lo(a0), A[g][2 * t + 1] = hi(a0);
    A[g + 8][2 * t] = lo(a1), A[g + 8][2 * t + 1] = hi(a1);
    A[g][2 * t + 8] = lo(a2), A[g][2 * t + 9] = hi(a2);
    A[g + 8][2 * t + 8] = lo(a3), A[g + 8][2 * t + 9] = hi(a3);
    Bm[2 * t][g] = lo(b0), Bm[2 * t + 1][g] = hi(b0);
    Bm[2 * t + 8][g] = lo(b1), Bm[2 * t + 9][g] = hi(b1);
    pthread_barrier_wait(&w.bar);
    for (int e = 0; e < 4; e++) {
        unsigned row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
        float s = 0;
        for (int j = 0; j < 16; j++) s += A[row][j] * Bm[j][col]; /* exact products of bf16 */
        c[e] += s;
    }
}

/* PTX ldmatrix.m8n8.x4.b16: lane l addresses row l % 8 of matrix l / 8; register i of lane
 * 4 g + t holds matrix i's (row g, cols 2t, 2t + 1), transposed (rows 2t, 2t + 1, col g). */
void tbc_emu_ldsm_x4(uint32_t (&r)[4], const void *p, bool trans) {
    unsigned lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, k = emu_calls++ & 1;
    emu_warp &w = emu_warps[threadIdx.x / 32];
    w.rows[k][lane] = (const uint16_t *)p;
    pthread_barrier_wait(&w.bar);
    for (int i = 0; i < 4; i++) {
        const uint16_t *const *m = &w.rows[k][8 * i];
        uint16_t lo = trans ? m[2 * t][g] : m[g][2 * t], hi = trans ? m[2 * t + 1][g] : m[g][2 * t + 1];
        r[i] = (uint32_t)lo | (uint32_t)hi << 16;
    }
}

struct emu_thread {
    unsigned tid;
    void (*body)(void *);
    void *arg;
};
static void *emu_thread_main(void *p) {
    emu_thread *a = (emu_thread *)p;
    threadIdx = {a->tid, 0, 0};
    emu_calls = 0;
    a->body(a->arg);
    return nullptr;
}

void tbc_emu_run(unsigned gx, unsigned gy, unsigned gz, unsigned threads, size_t smem, void (*body)(void *),
                 void *arg) {
    if (smem > sizeof emu_smem || threads % 32 || threads > 1024) abort();
    blockDim = {threads, 1, 1};
    gridDim = {gx, gy, gz};
    pthread_barrier_init(&emu_block_bar, nullptr, threads);
    for (unsigned w = 0; w < threads / 32; w++) pthread_barrier_init(&emu_warps[w].bar, nullptr, 32);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, (size_t)1 << 20);
    pthread_t th[1024];
    emu_thread ta[1024];
    for (unsigned z = 0; z < gz; z++)
        for (unsigned y = 0; y < gy; y++)
            for (unsigned x = 0; x < gx; x++) {
                blockIdx = {x, y, z};
                memset(emu_smem, 0xff, smem); /* unwritten shared memory reads as NaN */
                for (unsigned i = 0; i < threads; i++) {
                    ta[i] = {i, body, arg};
                    if (pthread_create(&th[i], &attr, emu_thread_main, &ta[i])) abort();
                }
                for (unsigned i = 0; i < threads; i++) pthread_join(th[i], nullptr);
            }
    pthread_attr_destroy(&attr);
    for (unsigned w = 0; w < threads / 32; w++) pthread_barrier_destroy(&emu_warps[w].bar);
    pthread_barrier_destroy(&emu_block_bar);
}

/* The launch geometry of flash_tc_cuda.cu (tc_fwd, tc_bwd). */
static int emu_hs(int hs) { return hs <= 32 ? 32 : hs <= 64 ? 64 : 128; }

/* The staged operands (flash_tc_cuda.cu tc_ws, tc_prep): a buffer of the call's size and
 * k_fat_prep over the jobs. */
struct emu_ws {
    tc_bf16 *base;
    tc_fat_ws ws;
    emu_ws(int B, int T, int H, int Hkv, int HS) {
        base = (tc_bf16 *)malloc(tc_fat_ws_elems(B, T, H, Hkv, HS) * sizeof(tc_bf16));
        if (!base) abort();
        ws = tc_fat_ws_carve(base, B, T, H, Hkv, HS);
    }
    ~emu_ws() { free(base); }
};
/* k_fat_prep over the jobs and, with dropout, the keep bits (flash_tc_cuda.cu tc_prep), in a
 * buffer emu_dm frees; a short grid, so the grid-stride loops run. */
static uint64_t *emu_prep(tc_prep_jobs &J, const tbc_drop &d, uint32_t site, int B, int T, int H, int hs, int HS) {
    uint64_t *dm = nullptr;
    if (d.active && !(dm = (uint64_t *)malloc(tc_drop_words(B, T, H) * sizeof(uint64_t)))) abort();
    tc_prep_drop(J, d, site, B, T, H, dm);
    size_t blocks = tc_prep_blocks(B, T, H, HS);
    unsigned gx = (unsigned)(blocks < 3 ? blocks : 3);
    if (!tc_prep_fits(B, T, H, HS)) abort();
    tbc_emu_launch(gx * tc_prep_tasks(J), 1, 1, 256, 0, [&] {
        if (HS == 32) k_fat_prep<32>(J, T, tc_fat_tp(T), hs, B);
        else if (HS == 64) k_fat_prep<64>(J, T, tc_fat_tp(T), hs, B);
        else k_fat_prep<128>(J, T, tc_fat_tp(T), hs, B);
    });
    return J.dm;
}
struct emu_dm {
    uint64_t *dm;
    explicit emu_dm(uint64_t *p) : dm(p) {}
    ~emu_dm() { free(dm); }
};

template <int HS>
static void emu_fwd(float *out, float *lse, const float *q, const float *k, const float *v, size_t ldq, size_t ldkv,
                    const uint8_t *mask, tbc_drop d, uint32_t site, int B, int T, int H, int Hkv, int hs) {
    constexpr int SP = TC_SPLIT_DEFAULT;
    float sl2 = (float)(1.0 / sqrt((double)hs)) * TC_LOG2E;
    emu_ws w(B, T, H, Hkv, HS);
    tc_prep_jobs J = tc_prep_fwd_jobs(w.ws, SP, q, k, v, ldq, ldkv, H, Hkv);
    emu_dm m(emu_prep(J, d, site, B, T, H, hs, HS));
    int Tp = tc_fat_tp(T);
    tbc_emu_launch((unsigned)(Tp / TC_BR), (unsigned)H, (unsigned)B, TC_THREADS, tc_fat_smem_fwd(HS),
                   [&] { k_fat_fwd<HS, SP>(out, lse, w.ws, mask, m.dm, d.scale, T, Tp, H, Hkv, hs, sl2); });
}

template <int HS>
static void emu_bwd(float *dq, float *dk, float *dv, const float *dout, const float *lse, const float *D,
                    const float *q, const float *k, const float *v, size_t ldq, size_t ldkv, const uint8_t *mask,
                    tbc_drop d, uint32_t site, int B, int T, int H, int Hkv, int hs) {
    constexpr int BQ = tc_fat_bq(HS), SP = TC_SPLIT_DEFAULT;
    float scale = (float)(1.0 / sqrt((double)hs));
    emu_ws w(B, T, H, Hkv, HS);
    tc_prep_jobs J = tc_prep_bwd_jobs(w.ws, SP, q, dout, k, v, ldq, ldkv, H, Hkv, hs);
    emu_dm m(emu_prep(J, d, site, B, T, H, hs, HS));
    int Tp = tc_fat_tp(T);
    tc_bf16 *dst = (tc_bf16 *)malloc((size_t)B * H * Tp * Tp * sizeof(tc_bf16));
    if (!dst) abort();
    tbc_emu_launch((unsigned)(Tp / TC_BR), (unsigned)Hkv, (unsigned)B, TC_THREADS, tc_fat_smem_kv(HS, SP), [&] {
        k_fat_bwd_kv<HS, BQ, SP>(dk, dv, dst, lse, D, w.ws, ldkv, mask, m.dm, d.scale, T, Tp, H, Hkv, hs, scale, 0);
    });
    tbc_emu_launch((unsigned)(Tp / TC_BR), (unsigned)H, (unsigned)B, TC_THREADS, tc_fat_smem_q(HS),
                   [&] { k_fat_dq<HS, SP>(dq, dst, w.ws, ldq, T, Tp, H, Hkv, hs, 0); });
    free(dst);
}

extern "C" void tbc_emu_flash_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
                                  size_t ldq, size_t ldkv, const uint8_t *mask, const struct tb_dropout *drop,
                                  uint32_t site, int B, int T, int H, int Hkv, int hs) {
    tbc_drop d = tbc_drop_make(drop);
    switch (emu_hs(hs)) {
    case 32: emu_fwd<32>(out, lse, q, k, v, ldq, ldkv, mask, d, site, B, T, H, Hkv, hs); break;
    case 64: emu_fwd<64>(out, lse, q, k, v, ldq, ldkv, mask, d, site, B, T, H, Hkv, hs); break;
    default: emu_fwd<128>(out, lse, q, k, v, ldq, ldkv, mask, d, site, B, T, H, Hkv, hs); break;
    }
}

extern "C" void tbc_emu_flash_bwd(float *dq, float *dk, float *dv, const float *dout, const float *out,
                                  const float *lse, const float *q, const float *k, const float *v, size_t ldq,
                                  size_t ldkv, const uint8_t *mask, const struct tb_dropout *drop, uint32_t site,
                                  int B, int T, int H, int Hkv, int hs) {
    tbc_drop d = tbc_drop_make(drop);
    /* D = rowsum(dO ∘ O) per (b, h, i), as k_fa_rowdot (flash_cuda.cu) */
    size_t rows = (size_t)B * H * T, ldo = (size_t)H * hs;
    float *D = (float *)calloc(rows ? rows : 1, sizeof(float));
    if (!D) abort();
    for (size_t r = 0; r < rows; r++) {
        size_t i = r % T, h = r / T % H, b = r / ((size_t)T * H);
        const float *o = out + (b * T + i) * ldo + h * hs, *g = dout + (b * T + i) * ldo + h * hs;
        float s = 0;
        for (int c = 0; c < hs; c++) s += g[c] * o[c];
        D[r] = s;
    }
    switch (emu_hs(hs)) {
    case 32: emu_bwd<32>(dq, dk, dv, dout, lse, D, q, k, v, ldq, ldkv, mask, d, site, B, T, H, Hkv, hs); break;
    case 64: emu_bwd<64>(dq, dk, dv, dout, lse, D, q, k, v, ldq, ldkv, mask, d, site, B, T, H, Hkv, hs); break;
    default: emu_bwd<128>(dq, dk, dv, dout, lse, D, q, k, v, ldq, ldkv, mask, d, site, B, T, H, Hkv, hs); break;
    }
    free(D);
}

/* tbc_decay_tiled's tensor-core branch (seq_cuda.cu rtc_launch). */
extern "C" void tbc_emu_decay_tiled(float *out, const float *a, const float *b, const float *cv, int B, int T, int H,
                                    int hs, int range, int accumulate) {
    float c = (float)(1.0 / sqrt((double)hs));
    unsigned gx = (unsigned)((T + RTC_BR - 1) / RTC_BR);
    if (hs <= 32)
        tbc_emu_launch(gx, (unsigned)H, (unsigned)B, TC_THREADS, tbc_ret_tc_smem(32), [&] {
            k_ret_tc<32>(out, a, b, cv, nullptr, nullptr, T, H, hs, range, accumulate, c);
        });
    else if (hs <= 64)
        tbc_emu_launch(gx, (unsigned)H, (unsigned)B, TC_THREADS, tbc_ret_tc_smem(64), [&] {
            k_ret_tc<64>(out, a, b, cv, nullptr, nullptr, T, H, hs, range, accumulate, c);
        });
    else
        tbc_emu_launch(gx, (unsigned)H, (unsigned)B, TC_THREADS, tbc_ret_tc_smem(128), [&] {
            k_ret_tc<128>(out, a, b, cv, nullptr, nullptr, T, H, hs, range, accumulate, c);
        });
}

/* moe_cuda.cu cu_moe_scatter_backward. */
extern "C" void tbc_emu_moe_scatter_bwd(float *dye, float *dgate, const float *dout, const float *ye,
                                        const float *gate, const int32_t *order, int n, int K, int C) {
    if (n <= 0) return;
    tbc_emu_launch((unsigned)((n + 7) / 8), 1, 1, 256, 0,
                   [&] { k_moe_scatter_bwd<false>(C > 0 ? dye : nullptr, dgate, dout, ye, gate, order, n, K, C); });
}

/* scan_cuda.cu cu_scan_forward / cu_scan_backward. */
static int emu_sc_lanes(int N) { return N <= 8 ? 8 : N <= 16 ? 16 : 32; }

template <int LN>
static void emu_scan_fwd(float *y, float *states, const float *xc, const float *delta, const float *A_log,
                         const float *Bm, const float *Cm, const float *D, int B, int T, int Di, int N, int ld) {
    unsigned cpb = SC_WARPS * (32 / LN);
    tbc_emu_launch((unsigned)((Di + cpb - 1) / cpb), (unsigned)B, 1, 32 * SC_WARPS, 0,
                   [&] { k_scan_fwd<LN>(y, states, xc, delta, A_log, Bm, Cm, D, T, Di, N, ld); });
}

extern "C" void tbc_emu_scan_fwd(float *y, float *states, const float *xc, const float *delta, const float *A_log,
                                 const float *Bm, const float *Cm, const float *D, int B, int T, int Di, int N,
                                 int ld) {
    int ln = emu_sc_lanes(N);
    if (ln == 8) emu_scan_fwd<8>(y, states, xc, delta, A_log, Bm, Cm, D, B, T, Di, N, ld);
    else if (ln == 16) emu_scan_fwd<16>(y, states, xc, delta, A_log, Bm, Cm, D, B, T, Di, N, ld);
    else emu_scan_fwd<32>(y, states, xc, delta, A_log, Bm, Cm, D, B, T, Di, N, ld);
}

template <int LN>
static void emu_scan_bwd(float *dxc, float *ddelta, float *dA_log, float *dBm, float *dCm, float *dD, const float *dy,
                         const float *states, const float *xc, const float *delta, const float *A_log,
                         const float *Bm, const float *Cm, const float *D, int B, int T, int Di, int N, int ld) {
    int cpb = SC_WARPS * (32 / LN), tiles = (Di + cpb - 1) / cpb;
    size_t rows = (size_t)B * T;
    float *pB = (float *)calloc(rows * tiles * N + 1, 4), *pC = (float *)calloc(rows * tiles * N + 1, 4);
    float *pA = (float *)calloc((size_t)B * Di * N + 1, 4), *pD = (float *)calloc((size_t)B * Di + 1, 4);
    if (!pB || !pC || !pA || !pD) abort();
    tbc_emu_launch((unsigned)tiles, (unsigned)B, 1, 32 * SC_WARPS, 0, [&] {
        k_scan_bwd<LN>(dxc, ddelta, pB, pC, pA, pD, dy, states, xc, delta, A_log, Bm, Cm, D, T, Di, N, ld);
    });
    tbc_emu_launch(4, 1, 1, 256, 0, [&] { k_scan_bc_final(dBm, dCm, pB, pC, rows, tiles, N, ld); });
    tbc_emu_launch(4, 1, 1, 256, 0, [&] { k_scan_param_final(dA_log, dD, pA, pD, B, Di, N); });
    free(pB), free(pC), free(pA), free(pD);
}

extern "C" void tbc_emu_scan_bwd(float *dxc, float *ddelta, float *dA_log, float *dBm, float *dCm, float *dD,
                                 const float *dy, const float *states, const float *xc, const float *delta,
                                 const float *A_log, const float *Bm, const float *Cm, const float *D, int B, int T,
                                 int Di, int N, int ld) {
    int ln = emu_sc_lanes(N);
    if (ln == 8)
        emu_scan_bwd<8>(dxc, ddelta, dA_log, dBm, dCm, dD, dy, states, xc, delta, A_log, Bm, Cm, D, B, T, Di, N, ld);
    else if (ln == 16)
        emu_scan_bwd<16>(dxc, ddelta, dA_log, dBm, dCm, dD, dy, states, xc, delta, A_log, Bm, Cm, D, B, T, Di, N, ld);
    else
        emu_scan_bwd<32>(dxc, ddelta, dA_log, dBm, dCm, dD, dy, states, xc, delta, A_log, Bm, Cm, D, B, T, Di, N, ld);
}

/* dense_cuda.cu: the warp-per-row paths of cu_bitlinear_quant_x and of the LN0 backward
 * (in <= 2048); returns -1 for wider rows (the block kernels there). */
#define EMU_DK_ROWS 8
extern "C" int tbc_emu_quant_x(int8_t *xq, float *stats, const float *x, size_t n, int in) {
    if (in > 2048) return -1;
    unsigned g = (unsigned)((n + EMU_DK_ROWS - 1) / EMU_DK_ROWS), th = 32 * EMU_DK_ROWS;
    if (in <= 256) tbc_emu_launch(g, 1, 1, th, 0, [&] { k_quant_x_warp<8>(xq, stats, x, n, in); });
    else if (in <= 512) tbc_emu_launch(g, 1, 1, th, 0, [&] { k_quant_x_warp<16>(xq, stats, x, n, in); });
    else if (in <= 1024) tbc_emu_launch(g, 1, 1, th, 0, [&] { k_quant_x_warp<32>(xq, stats, x, n, in); });
    else tbc_emu_launch(g, 1, 1, th, 0, [&] { k_quant_x_warp<64>(xq, stats, x, n, in); });
    return 0;
}

template <bool SET>
static void emu_ln0_bwd(float *dx, const float *g, const float *x, const float *stats, size_t n, int in) {
    unsigned gr = (unsigned)((n + EMU_DK_ROWS - 1) / EMU_DK_ROWS), th = 32 * EMU_DK_ROWS;
    if (in <= 256) tbc_emu_launch(gr, 1, 1, th, 0, [&] { k_ln0_bwd_warp<8, SET>(dx, g, x, stats, n, in); });
    else if (in <= 512) tbc_emu_launch(gr, 1, 1, th, 0, [&] { k_ln0_bwd_warp<16, SET>(dx, g, x, stats, n, in); });
    else if (in <= 1024) tbc_emu_launch(gr, 1, 1, th, 0, [&] { k_ln0_bwd_warp<32, SET>(dx, g, x, stats, n, in); });
    else tbc_emu_launch(gr, 1, 1, th, 0, [&] { k_ln0_bwd_warp<64, SET>(dx, g, x, stats, n, in); });
}

extern "C" int tbc_emu_ln0_bwd(float *dx, const float *g, const float *x, const float *stats, size_t n, int in,
                               int set) {
    if (in > 2048) return -1;
    if (set) emu_ln0_bwd<true>(dx, g, x, stats, n, in);
    else emu_ln0_bwd<false>(dx, g, x, stats, n, in);
    return 0;
}

/* dense_cuda.cu cu_norm_fwd / the dx part of cu_norm_bwd for dynamic_tanh (C <= 2048). */
extern "C" int tbc_emu_dyt_norm_fwd(float *y, float *stats, const float *x, const float *al, const float *be,
                                    size_t n, int C) {
    if (C > 2048) return -1;
    unsigned g = (unsigned)((n + EMU_DK_ROWS - 1) / EMU_DK_ROWS), th = 32 * EMU_DK_ROWS;
    if (C <= 256) tbc_emu_launch(g, 1, 1, th, 0, [&] { k_dyt_norm_fwd_warp<8>(y, stats, x, al, be, n, C); });
    else if (C <= 512) tbc_emu_launch(g, 1, 1, th, 0, [&] { k_dyt_norm_fwd_warp<16>(y, stats, x, al, be, n, C); });
    else if (C <= 1024) tbc_emu_launch(g, 1, 1, th, 0, [&] { k_dyt_norm_fwd_warp<32>(y, stats, x, al, be, n, C); });
    else tbc_emu_launch(g, 1, 1, th, 0, [&] { k_dyt_norm_fwd_warp<64>(y, stats, x, al, be, n, C); });
    return 0;
}

extern "C" int tbc_emu_dyt_norm_bwd(float *dx, const float *dy, const float *stats, const float *x, const float *al,
                                    const float *be, size_t n, int C) {
    if (C > 2048) return -1;
    unsigned g = (unsigned)((n + EMU_DK_ROWS - 1) / EMU_DK_ROWS), th = 32 * EMU_DK_ROWS;
    if (C <= 256) tbc_emu_launch(g, 1, 1, th, 0, [&] { k_dyt_norm_bwd_warp<8>(dx, dy, stats, x, al, be, n, C); });
    else if (C <= 512)
        tbc_emu_launch(g, 1, 1, th, 0, [&] { k_dyt_norm_bwd_warp<16>(dx, dy, stats, x, al, be, n, C); });
    else if (C <= 1024)
        tbc_emu_launch(g, 1, 1, th, 0, [&] { k_dyt_norm_bwd_warp<32>(dx, dy, stats, x, al, be, n, C); });
    else tbc_emu_launch(g, 1, 1, th, 0, [&] { k_dyt_norm_bwd_warp<64>(dx, dy, stats, x, al, be, n, C); });
    return 0;
}

/* dense_cuda.cu: the 16-byte paths of the BitLinear output scale and x̃ (out, in % 4 == 0). */
extern "C" void tbc_emu_bitlinear_scale4(float *y, const float *stats, const float *sw, size_t n, int out) {
    tbc_emu_launch(3, 1, 1, 64, 0, [&] { k_bitlinear_scale4(y, stats, sw, n, out); });
}
extern "C" void tbc_emu_xtilde4(float *xt, const int8_t *xq, const float *stats, size_t n, int in) {
    tbc_emu_launch(3, 1, 1, 64, 0, [&] { k_xtilde4(xt, xq, stats, n, in); });
}
extern "C" void tbc_emu_wtilde4(float *wt, const int8_t *wq, const float *sw, size_t count) {
    tbc_emu_launch(3, 1, 1, 64, 0, [&] { k_wtilde4(wt, wq, sw, count); });
}
