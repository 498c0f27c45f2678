#include "tb_rng.h"
#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void tb_philox4x32(uint32_t out[4], const uint32_t ctr[4], const uint32_t key[2]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
        uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
        c0 = hi1 ^ c1 ^ k0;
        c1 = lo1;
        c2 = hi0 ^ c3 ^ k1;
        c3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

static uint64_t splitmix64(uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

static void derive_key(uint32_t key[2], uint64_t seed, uint32_t purpose) {
    uint64_t k = splitmix64(seed ^ splitmix64((uint64_t)purpose));
    key[0] = (uint32_t)k;
    key[1] = (uint32_t)(k >> 32);
}

void tb_rng_init(tb_rng *r, uint64_t seed, uint32_t purpose, uint32_t id0, uint32_t id1,
                 uint32_t id2) {
    derive_key(r->key, seed, purpose);
    r->ctr[0] = id0; r->ctr[1] = id1; r->ctr[2] = id2; r->ctr[3] = 0;
    r->used = 4;
}

uint32_t tb_rng_u32(tb_rng *r) {
    if (r->used >= 4) {
        tb_philox4x32(r->buf, r->ctr, r->key);
        r->ctr[3]++;
        r->used = 0;
    }
    return r->buf[r->used++];
}

uint64_t tb_rng_u64(tb_rng *r) {
    uint64_t lo = tb_rng_u32(r);
    return lo | (uint64_t)tb_rng_u32(r) << 32;
}

float tb_rng_uniform_f(tb_rng *r) { return (float)(tb_rng_u32(r) >> 8) * (1.0f / 16777216.0f); }

double tb_rng_uniform(tb_rng *r) {
    return (double)(tb_rng_u64(r) >> 11) * (1.0 / 9007199254740992.0);
}

uint32_t tb_rng_below(tb_rng *r, uint32_t n) {
    uint32_t limit = (uint32_t)(-n) % n; /* 2^32 mod n: reject the first `limit` values */
    for (;;) {
        uint32_t x = tb_rng_u32(r);
        if (x >= limit) return x % n;
    }
}

double tb_rng_normal(tb_rng *r) {
    double u1 = tb_rng_uniform(r), u2 = tb_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

uint32_t tb_rng_at(uint64_t seed, uint32_t purpose, uint32_t id0, uint32_t id1, uint32_t id2,
                   uint64_t i) {
    uint32_t key[2], ctr[4] = {id0, id1, id2, (uint32_t)(i / 4)}, out[4];
    derive_key(key, seed, purpose);
    tb_philox4x32(out, ctr, key);
    return out[i % 4];
}
