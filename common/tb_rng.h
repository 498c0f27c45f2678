/* Counter-based random numbers: Philox4x32-10 (Salmon et al., SC'11).
 * A stream is keyed by (seed, purpose) and addressed by up to three 32-bit ids plus a
 * 32-bit block counter, so any draw can be recomputed from its coordinates alone and the
 * CPU and CUDA backends produce identical numbers. The state is plain data: copy it to
 * serialise it. */
#ifndef TB_RNG_H
#define TB_RNG_H
#include <stdint.h>

/* Purposes: distinct streams for distinct uses of the same seed. */
enum tb_rng_purpose {
    TB_RNG_INIT = 1,      /* parameter initialisation: ids (tensor index, 0, 0) */
    TB_RNG_DROPOUT = 2,   /* dropout: ids (step, logical layer, site) */
    TB_RNG_MASK = 3,      /* MLM masking: ids (epoch, sample lo, sample hi) */
    TB_RNG_SHUFFLE = 4,   /* shard / document order: ids (generation, epoch, 0) */
    TB_RNG_TEST = 99,
};

/* One Philox4x32-10 block: out = philox(ctr, key). */
void tb_philox4x32(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2]);

typedef struct tb_rng {
    uint32_t key[2];
    uint32_t ctr[4]; /* ids in ctr[0..2], block counter in ctr[3] */
    uint32_t buf[4];
    uint32_t used; /* outputs of buf consumed (4 = empty) */
} tb_rng;

/* Key derived from (seed, purpose) by splitmix64; ids go to the counter. */
void tb_rng_init(tb_rng *r, uint64_t seed, uint32_t purpose, uint32_t id0, uint32_t id1,
                 uint32_t id2);
uint32_t tb_rng_u32(tb_rng *r);
uint64_t tb_rng_u64(tb_rng *r);
/* Uniform in [0, 1) with 24 (float) or 53 (double) random bits. */
float tb_rng_uniform_f(tb_rng *r);
double tb_rng_uniform(tb_rng *r);
/* Uniform integer in [0, n), n > 0, without modulo bias (rejection). */
uint32_t tb_rng_below(tb_rng *r, uint32_t n);
/* Standard normal by Box-Muller (double precision). */
double tb_rng_normal(tb_rng *r);

/* Stateless access for element-wise use (dropout masks): the `i`-th uint32 of the stream
 * (seed, purpose, id0, id1, id2). Equals the i-th tb_rng_u32 of a fresh tb_rng_init. */
uint32_t tb_rng_at(uint64_t seed, uint32_t purpose, uint32_t id0, uint32_t id1, uint32_t id2,
                   uint64_t i);

#endif
