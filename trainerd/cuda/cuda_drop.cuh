/* Dropout on the device, in a header of its own (no CUDA runtime headers) so the kernels
 * that draw dropout can also be built by the CPU emulation of tests/cuda_emu: the
 * Philox4x32-10 stream of common/tb_rng.c and the keep flags of a tile. The includer
 * provides __device__, __forceinline__, __umulhi and threadIdx (CUDA, or the emulation). */
#ifndef TB_CUDA_DROP_CUH
#define TB_CUDA_DROP_CUH
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "layers/dropout.h"

/* Dropout on the device: the host derives the Philox key of (seed, TB_RNG_DROPOUT) once
 * per op; tbc_drop_factor reproduces dropout_factor (layers/dropout.h) bit for bit. */
typedef struct tbc_drop {
    uint32_t k0, k1, step, layer, thr;
    float scale;
    int active;
} tbc_drop;

/* Rounds R0 .. 9 of Philox4x32-10 on the counter (c0, c1, c2, c3), with the keys k0, k1
 * of round R0 (bumped R0 times), into w. */
template <int R0>
__device__ __forceinline__ void tbc_philox_rounds(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0,
                                                  uint32_t k1, uint32_t w[4]) {
#pragma unroll
    for (int r = R0; r < 10; r++) {
        uint32_t hi0 = __umulhi(0xD2511F53u, c0), lo0 = 0xD2511F53u * c0;
        uint32_t hi1 = __umulhi(0xCD9E8D57u, c2), lo1 = 0xCD9E8D57u * c2;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    w[0] = c0, w[1] = c1, w[2] = c2, w[3] = c3;
}
/* Block i / 4 of the Philox4x32-10 stream (common/tb_rng.c: tb_rng_at): its four words. */
__device__ __forceinline__ void tbc_philox_block(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1,
                                                 uint32_t c2, uint64_t i, uint32_t w[4]) {
    tbc_philox_rounds<0>(c0, c1, c2, (uint32_t)(i / 4), k0, k1, w);
}
/* The i-th uint32 of the stream. */
__device__ __forceinline__ uint32_t tbc_philox_at(uint32_t k0, uint32_t k1, uint32_t c0, uint32_t c1,
                                                  uint32_t c2, uint64_t i) {
    uint32_t w[4];
    tbc_philox_block(k0, k1, c0, c1, c2, i, w);
    int k = (int)(i & 3); /* a select, not a run-time index: w stays in registers */
    return k == 0 ? w[0] : k == 1 ? w[1] : k == 2 ? w[2] : w[3];
}
__device__ __forceinline__ float tbc_drop_factor(const tbc_drop &d, uint32_t site, uint64_t i) {
    uint32_t u = tbc_philox_at(d.k0, d.k1, d.step, d.layer, site, i);
    return (u >> 8) >= d.thr ? d.scale : 0.0f;
}

/* Dropout keep flags of a tile, one Philox block per 4 consecutive elements (the draws
 * of tbc_drop_factor, a quarter of the work): keep[r * COLS + c] for element
 * (rowbase + i0 + r) * T + c0 + c, 0 outside [0, T); NT threads share the work. Only with
 * T % 4 == 0 (and c0 % 4 == 0), where a block never straddles two rows; tbc_keep_ok says
 * when. Used by the fused attention kernels (flash_cuda.cu, flash_tc_cuda.cu). */
__device__ __forceinline__ bool tbc_keep_ok(const tbc_drop &d, int T) { return d.active && (T & 3) == 0; }
template <int ROWS, int COLS, int NT>
__device__ __forceinline__ void tbc_keep_tile(uint8_t *keep, const tbc_drop &d, uint32_t site, size_t rowbase,
                                              int i0, int c0, int T) {
    for (int q = threadIdx.x; q < ROWS * COLS / 4; q += NT) {
        int r = q / (COLS / 4), c = (q % (COLS / 4)) * 4;
        uint32_t w[4] = {0, 0, 0, 0};
        bool in = i0 + r < T && c0 + c < T;
        if (in) tbc_philox_block(d.k0, d.k1, d.step, d.layer, site, (rowbase + i0 + r) * T + c0 + c, w);
#pragma unroll
        for (int e = 0; e < 4; e++) keep[r * COLS + c + e] = in && (w[e] >> 8) >= d.thr;
    }
}

/* Key of (seed, TB_RNG_DROPOUT) as common/tb_rng.c derives it (splitmix64). */
static inline uint64_t tbc_splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* The device form of a tb_dropout: the Philox key of (seed, TB_RNG_DROPOUT), derived once
 * per op on the host. */
static inline tbc_drop tbc_drop_make(const struct tb_dropout *d) {
    tbc_drop r;
    memset(&r, 0, sizeof r);
    r.active = dropout_active(d);
    if (!r.active) return r;
    uint64_t k = tbc_splitmix64(d->seed ^ tbc_splitmix64((uint64_t)TB_RNG_DROPOUT));
    r.k0 = (uint32_t)k;
    r.k1 = (uint32_t)(k >> 32);
    r.step = d->step;
    r.layer = d->layer;
    r.thr = dropout_threshold(d->p);
    r.scale = (float)(1.0 / (1.0 - (double)d->p));
    return r;
}
#endif
