/* A CPU emulation of the CUDA features the tensor-core attention kernels use, so those
 * kernels (trainerd/cuda/flash_tc_kernels.cuh, built unchanged) run in CI where there is
 * no GPU: every thread of a block is a POSIX thread; blocks run one after another;
 * __syncthreads is a barrier of the block, __shfl_xor_sync and the warp-wide mma a
 * barrier of the warp's 32 threads (ldmatrix likewise; cp.async is a plain copy); static __shared__ arrays are function statics (one
 * block at a time), the dynamic shared memory one global buffer. The mma follows the
 * fragment layouts of PTX's mma.m16n8k16 (.row.col, bf16 inputs, fp32 accumulators), so
 * the emulation checks the kernels' index arithmetic and data flow against that
 * specification; it says nothing about speed, and real hardware sums the products in
 * its own order (the tests allow for it: their bound is the bf16 mode's). Test code
 * only. */
#ifndef TB_CUDA_EMU_HPP
#define TB_CUDA_EMU_HPP
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TBC_EMU 1
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define TC_DYN_SMEM(name) unsigned char *name = tbc_emu_smem

struct tbc_emu_dim3 {
    unsigned x, y, z;
};
extern thread_local tbc_emu_dim3 threadIdx;
extern tbc_emu_dim3 blockIdx, blockDim, gridDim;
extern unsigned char *tbc_emu_smem;

static inline uint32_t __umulhi(uint32_t a, uint32_t b) { return (uint32_t)(((uint64_t)a * b) >> 32); }
static inline void __trap(void) { abort(); }
void __syncthreads(void);
float __shfl_xor_sync(unsigned mask, float v, int lane_mask);
double __shfl_xor_sync(unsigned mask, double v, int lane_mask);

/* CUDA's vector types used by the kernels. */
struct alignas(16) int4 {
    int x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(4) char4 {
    signed char x, y, z, w;
};

/* bf16 as its 16 bits; conversions round to nearest even as CUDA's _rn intrinsics do. */
struct __nv_bfloat16 {
    uint16_t bits;
};
struct alignas(4) __nv_bfloat162 {
    __nv_bfloat16 x, y;
};
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 h;
    if ((u & 0x7fffffffu) > 0x7f800000u) h.bits = 0x7fc0; /* NaN */
    else h.bits = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    return h;
}
static inline __nv_bfloat162 __floats2bfloat162_rn(float lo, float hi) {
    __nv_bfloat162 v = {__float2bfloat16_rn(lo), __float2bfloat16_rn(hi)};
    return v;
}
static inline float tbc_emu_bf16_float(uint16_t bits) {
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline float __bfloat162float(__nv_bfloat16 h) { return tbc_emu_bf16_float(h.bits); }

/* c += A B for the calling lane's part of a warp-wide m16n8k16 product. */
void tbc_emu_mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0, uint32_t b1);

/* The calling lane's registers of a warp-wide ldmatrix .x4 (.trans when trans): p is the
 * lane's row address (lanes 8i .. 8i + 7 the rows of matrix i). */
void tbc_emu_ldsm_x4(uint32_t (&r)[4], const void *p, bool trans);

/* Runs kernel(args...) over grid (gx, gy, gz) with `threads` threads per block (a multiple
 * of 32) and `smem` bytes of dynamic shared memory. */
void tbc_emu_run(unsigned gx, unsigned gy, unsigned gz, unsigned threads, size_t smem, void (*body)(void *),
                 void *arg);
template <typename F>
static void tbc_emu_launch(unsigned gx, unsigned gy, unsigned gz, unsigned threads, size_t smem, F f) {
    tbc_emu_run(gx, gy, gz, threads, smem, [](void *p) { (*(F *)p)(); }, &f);
}
#endif
