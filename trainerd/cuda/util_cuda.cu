/* Shared helpers of the op files: the stable pair sort (CUB radix sort, used by every
 * scatter-add that must sum in a fixed order without float atomics), the deterministic
 * column sum, and the host side of device dropout. */
#include <string.h>
#include <cub/device/device_radix_sort.cuh>
#include "cuda_internal.cuh"
extern "C" {
#include "layers/dropout.h"
}

void tbc_sort_pairs(int32_t *kout, int32_t *vout, const int32_t *kin, const int32_t *vin, int n, int end_bit) {
    if (n <= 0) return;
    const unsigned *ki = (const unsigned *)kin;
    unsigned *ko = (unsigned *)kout;
    size_t bytes = 0;
    TBC_CHECK(cub::DeviceRadixSort::SortPairs(NULL, bytes, ki, ko, vin, vout, n, 0, end_bit, tbc_g->stream));
    void *tmp = tbc_scratch(TBC_SCR_SORT_TMP, bytes);
    TBC_CHECK(cub::DeviceRadixSort::SortPairs(tmp, bytes, ki, ko, vin, vout, n, 0, end_bit, tbc_g->stream));
    tbc_op_sync();
}

#define CS_THREADS 128
#define CS_ROWS 256 /* rows per chunk */
#define CS_MAX_CHUNKS 256

__global__ void k_colsum_part(double *part, const float *src, size_t rows, int cols, size_t ld, size_t per) {
    int c = blockIdx.x * CS_THREADS + threadIdx.x;
    if (c >= cols) return;
    size_t r0 = blockIdx.y * per, r1 = r0 + per < rows ? r0 + per : rows;
    double s = 0;
    for (size_t r = r0; r < r1; r++) s += src[r * ld + c];
    part[(size_t)blockIdx.y * cols + c] = s;
}

__global__ void k_colsum_final(float *dst, const double *part, int cols, int chunks) {
    int c = blockIdx.x * CS_THREADS + threadIdx.x;
    if (c >= cols) return;
    double s = 0;
    for (int k = 0; k < chunks; k++) s += part[(size_t)k * cols + c];
    dst[c] += (float)s;
}

void tbc_colsum_add(float *dst, const float *src, size_t rows, int cols, size_t ld) {
    if (rows == 0 || cols <= 0) return;
    size_t chunks = (rows + CS_ROWS - 1) / CS_ROWS;
    if (chunks > CS_MAX_CHUNKS) chunks = CS_MAX_CHUNKS;
    size_t per = (rows + chunks - 1) / chunks;
    chunks = (rows + per - 1) / per;
    double *part = (double *)tbc_scratch(TBC_SCR_COLSUM, chunks * (size_t)cols * sizeof(double));
    dim3 g((unsigned)((cols + CS_THREADS - 1) / CS_THREADS), (unsigned)chunks);
    k_colsum_part<<<g, CS_THREADS, 0, tbc_g->stream>>>(part, src, rows, cols, ld, per);
    TBC_LAUNCHED();
    k_colsum_final<<<g.x, CS_THREADS, 0, tbc_g->stream>>>(dst, part, cols, (int)chunks);
    TBC_LAUNCHED();
}

