/* CPU GEMM: register-blocked (MR x NR tiles of c held in vector registers), with the
 * k loop innermost and one accumulator per output element, so every element is the
 * chain acc = fma(a[i,k], b[k,j], acc) in ascending k: exactly the naive loop written
 * with fused multiply-adds (one rounding per term; r_fma in the reference loops and the
 * tests). The AVX2 kernel uses the FMA instruction; the baseline kernel calls libm's
 * fma, so both give the same bits. The library is built as ISO C, -ffp-contract=off, so
 * no other expression is fused behind our back. op(b) = bᵀ is packed into a per-thread
 * (K, N) scratch buffer that grows on first use (the measure pass before step 0), so
 * nothing is allocated in the steady state.
 * Threads: a fixed partition of output rows over a small persistent pool; each element
 * is computed by one thread in the same order, so results do not depend on threads. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "../backend.h"
#include "core_cpu.h"

#define VBYTES 32
typedef real vreal __attribute__((vector_size(VBYTES)));
#define VL ((int)(VBYTES / sizeof(real)))
#define MR 6
#define NR (2 * VL)

typedef struct gemm_args {
    real *c;
    const real *a;
    const real *bp; /* packed panels of this k chunk: (npanels, kc, NR), zero-padded */
    int M, N, ta, lda, ldc;
    int k0, kc;     /* the chunk */
    int first, last; /* first / last chunk of K */
    real alpha, beta;
    int onto; /* alpha = beta = 1: accumulate onto c (c + a0·b0 + a1·b1 + ...) */
} gemm_args;

#define KC 256 /* k chunk: a packed panel (KC x NR reals) stays in L1 */
#define MC (16 * MR) /* rows per block, whole tiles: the A block (MC x KC) stays in L2 */

static inline real a_at(const gemm_args *g, int i, int k) {
    return g->ta ? g->a[(size_t)k * g->lda + i] : g->a[(size_t)i * g->lda + k];
}

/* Between chunks c holds the raw partial sum (or, when onto, c + the partial sum); the
 * last chunk applies alpha and beta. Callers only chunk K when that is exact: onto, or
 * beta = 0 (see tb_cpu_gemm). */
static inline void store(const gemm_args *g, real *cp, real acc) {
    if (g->onto || !g->last) *cp = acc;
    else if (g->beta == 0) *cp = g->alpha * acc;
    else *cp = g->alpha * acc + g->beta * *cp;
}

/* The full MR x NR tile over one k chunk: twelve accumulators held in registers
 * (c<r><half>), a(r, k) = a0[r·rs + k·ks]. */
#define FULL_TILE(MADD)                                                                    \
    do {                                                                                   \
        vreal c00 = acc[0][0], c01 = acc[0][1], c10 = acc[1][0], c11 = acc[1][1];          \
        vreal c20 = acc[2][0], c21 = acc[2][1], c30 = acc[3][0], c31 = acc[3][1];          \
        vreal c40 = acc[4][0], c41 = acc[4][1], c50 = acc[5][0], c51 = acc[5][1];          \
        const real *ap = a0;                                                               \
        for (int k = 0; k < g->kc; k++, bk += NR, ap += ks) {                              \
            vreal b0, b1;                                                                  \
            memcpy(&b0, bk, VBYTES);                                                       \
            memcpy(&b1, bk + VL, VBYTES);                                                  \
            real av = ap[0];                                                               \
            MADD(c00, av, b0);                                                             \
            MADD(c01, av, b1);                                                             \
            av = ap[rs];                                                                   \
            MADD(c10, av, b0);                                                             \
            MADD(c11, av, b1);                                                             \
            av = ap[2 * rs];                                                               \
            MADD(c20, av, b0);                                                             \
            MADD(c21, av, b1);                                                             \
            av = ap[3 * rs];                                                               \
            MADD(c30, av, b0);                                                             \
            MADD(c31, av, b1);                                                             \
            av = ap[4 * rs];                                                               \
            MADD(c40, av, b0);                                                             \
            MADD(c41, av, b1);                                                             \
            av = ap[5 * rs];                                                               \
            MADD(c50, av, b0);                                                             \
            MADD(c51, av, b1);                                                             \
        }                                                                                  \
        acc[0][0] = c00, acc[0][1] = c01, acc[1][0] = c10, acc[1][1] = c11;                \
        acc[2][0] = c20, acc[2][1] = c21, acc[3][0] = c30, acc[3][1] = c31;                \
        acc[4][0] = c40, acc[4][1] = c41, acc[5][0] = c50, acc[5][1] = c51;                \
    } while (0)

/* The tile loop, compiled twice (AVX2 + FMA, and baseline) from one body. */
#define TILE_BODY(MADD)                                                                    \
    {                                                                                      \
        int npan = (g->N + NR - 1) / NR;                                                   \
        size_t rs = g->ta ? 1 : (size_t)g->lda, ks = g->ta ? (size_t)g->lda : 1;           \
        for (int ib = r0; ib < r1; ib += MC) {                                             \
            int ie = ib + MC < r1 ? ib + MC : r1;                                          \
            for (int pn = 0; pn < npan; pn++) {                                            \
                int j0 = pn * NR, nr = g->N - j0 < NR ? g->N - j0 : NR;                    \
                const real *panel = g->bp + (size_t)pn * g->kc * NR;                       \
                for (int i0 = ib; i0 < ie; i0 += MR) {                                     \
                    int mr = ie - i0 < MR ? ie - i0 : MR;                                  \
                    vreal acc[MR][2];                                                      \
                    int load = g->onto || !g->first;                                       \
                    if (!load || nr < NR || mr < MR) memset(acc, 0, sizeof acc);           \
                    if (load)                                                              \
                        for (int r = 0; r < mr; r++) {                                     \
                            const real *cr = g->c + (size_t)(i0 + r) * g->ldc + j0;        \
                            if (nr == NR) {                                                \
                                memcpy(&acc[r][0], cr, VBYTES);                            \
                                memcpy(&acc[r][1], cr + VL, VBYTES);                       \
                            } else {                                                       \
                                for (int j = 0; j < nr; j++) {                             \
                                    if (j < VL) acc[r][0][j] = cr[j];                      \
                                    else acc[r][1][j - VL] = cr[j];                        \
                                }                                                          \
                            }                                                              \
                        }                                                                  \
                    const real *bk = panel;                                                \
                    if (mr == MR) {                                                        \
                        const real *a0 = g->a + (size_t)i0 * rs + (size_t)g->k0 * ks;      \
                        FULL_TILE(MADD);                                                   \
                    } else {                                                               \
                        for (int k = 0; k < g->kc; k++, bk += NR) {                        \
                            vreal b0, b1;                                                  \
                            memcpy(&b0, bk, VBYTES);                                       \
                            memcpy(&b1, bk + VL, VBYTES);                                  \
                            for (int r = 0; r < mr; r++) {                                 \
                                real av = a_at(g, i0 + r, g->k0 + k);                      \
                                MADD(acc[r][0], av, b0);                                   \
                                MADD(acc[r][1], av, b1);                                   \
                            }                                                              \
                        }                                                                  \
                    }                                                                      \
                    int plain = g->onto || !g->last, scaled = !plain && g->beta == 0;      \
                    for (int r = 0; r < mr; r++) {                                         \
                        real *cr = g->c + (size_t)(i0 + r) * g->ldc + j0;                  \
                        if (nr == NR && (plain || scaled)) {                               \
                            vreal v0 = acc[r][0], v1 = acc[r][1];                          \
                            if (scaled) v0 = g->alpha * v0, v1 = g->alpha * v1;            \
                            memcpy(cr, &v0, VBYTES);                                       \
                            memcpy(cr + VL, &v1, VBYTES);                                  \
                        } else {                                                           \
                            for (int j = 0; j < nr; j++)                                   \
                                store(g, cr + j, j < VL ? acc[r][0][j] : acc[r][1][j - VL]); \
                        }                                                                  \
                    }                                                                      \
                }                                                                          \
            }                                                                              \
        }                                                                                  \
    }

#include <immintrin.h>
#ifdef TB_REAL_DOUBLE
#define MADD_FMA(acc, av, b)                                                               \
    (acc) = (vreal)_mm256_fmadd_pd(_mm256_set1_pd(av), (__m256d)(b), (__m256d)(acc))
#else
#define MADD_FMA(acc, av, b)                                                               \
    (acc) = (vreal)_mm256_fmadd_ps(_mm256_set1_ps(av), (__m256)(b), (__m256)(acc))
#endif
/* Without FMA hardware: the same fused operation, element by element, through libm. */
#define MADD_SCALAR(acc, av, b)                                                            \
    for (int e_ = 0; e_ < VL; e_++) (acc)[e_] = r_fma((av), (b)[e_], (acc)[e_])

__attribute__((target("avx2,fma"))) static void rows_avx2(const gemm_args *g, int r0,
                                                          int r1) TILE_BODY(MADD_FMA)
static void rows_base(const gemm_args *g, int r0, int r1) TILE_BODY(MADD_SCALAR)

static int have_avx2;

static void gemm_rows(const gemm_args *g, int r0, int r1) {
    if (have_avx2) rows_avx2(g, r0, r1);
    else rows_base(g, r0, r1);
}

/* ---- a tiny persistent pool: the caller runs part 0, workers parts 1..n-1 ---- */
#define MAX_THREADS 16
static struct {
    pthread_mutex_t mu, busy;
    pthread_cond_t go, done;
    int nthreads;
    unsigned gen;
    int pending;
    const gemm_args *job;
    int rows_per;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER,
          PTHREAD_COND_INITIALIZER, 1, 0, 0, NULL, 0};
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

static void part_range(const gemm_args *g, int part, int nparts, int *r0, int *r1) {
    /* Multiples of MR so tiles never straddle parts. */
    int tiles = (g->M + MR - 1) / MR;
    int t0 = (int)((int64_t)tiles * part / nparts), t1 = (int)((int64_t)tiles * (part + 1) / nparts);
    *r0 = t0 * MR;
    *r1 = t1 * MR < g->M ? t1 * MR : g->M;
}

static void *worker_main(void *arg) {
    int part = (int)(intptr_t)arg;
    unsigned seen = 0;
    for (;;) {
        pthread_mutex_lock(&pool.mu);
        while (pool.gen == seen) pthread_cond_wait(&pool.go, &pool.mu);
        seen = pool.gen;
        const gemm_args *g = pool.job;
        int n = pool.nthreads;
        pthread_mutex_unlock(&pool.mu);
        int r0, r1;
        part_range(g, part, n, &r0, &r1);
        if (r0 < r1) gemm_rows(g, r0, r1);
        pthread_mutex_lock(&pool.mu);
        if (--pool.pending == 0) pthread_cond_signal(&pool.done);
        pthread_mutex_unlock(&pool.mu);
    }
    return NULL;
}

static void pool_start(void) {
    __builtin_cpu_init();
    have_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    const char *env = getenv("TB_CPU_THREADS");
    if (env && atoi(env) > 0) n = atoi(env);
    if (n < 1) n = 1;
    if (n > MAX_THREADS) n = MAX_THREADS;
    int started = 1;
    for (int i = 1; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, worker_main, (void *)(intptr_t)i)) break;
        pthread_detach(t);
        started++;
    }
    pool.nthreads = started;
}

/* Set by tb_cpu_gemm_serial and tb_cpu_thread_solo: this thread's products (and, through
 * tb_cpu_threads, the other kernels' parts) run on this thread only. */
static _Thread_local int gemm_serial;

int tb_cpu_threads(void) {
    pthread_once(&pool_once, pool_start);
    return gemm_serial ? 1 : pool.nthreads;
}

void tb_cpu_thread_solo(int on) {
    if (on) gemm_serial++;
    else if (gemm_serial > 0) gemm_serial--;
}

static void gemm_run(const gemm_args *g) {
    pthread_once(&pool_once, pool_start);
    double work = (double)g->M * g->N * g->kc;
    /* Small products, a serial caller, or a concurrent caller already using the pool:
     * run here. */
    if (gemm_serial || pool.nthreads < 2 || work < 65536.0 || g->M < 2 * MR ||
        pthread_mutex_trylock(&pool.busy)) {
        gemm_rows(g, 0, g->M);
        return;
    }
    pthread_mutex_lock(&pool.mu);
    pool.job = g;
    pool.pending = pool.nthreads - 1;
    pool.gen++;
    pthread_cond_broadcast(&pool.go);
    pthread_mutex_unlock(&pool.mu);
    int r0, r1;
    part_range(g, 0, pool.nthreads, &r0, &r1);
    if (r0 < r1) gemm_rows(g, r0, r1);
    pthread_mutex_lock(&pool.mu);
    while (pool.pending > 0) pthread_cond_wait(&pool.done, &pool.mu);
    pthread_mutex_unlock(&pool.mu);
    pthread_mutex_unlock(&pool.busy);
}

static _Thread_local real *pack_buf;
static _Thread_local size_t pack_cap;
/* Threads that call the GEMM (the pool's callers, and short-lived worker threads of other
 * kernels) free their packing buffer when they exit: a key whose destructor frees it. */
static pthread_key_t pack_key;
static pthread_once_t pack_key_once = PTHREAD_ONCE_INIT;
static void pack_free(void *p) { free(p); }
static void pack_key_make(void) { pthread_key_create(&pack_key, pack_free); }

/* Panels of op(b)[k0 .. k0+kc) x all N: (npanels, kc, NR), zero-padded columns. */
static void pack_b(real *bp, const real *b, int N, int k0, int kc, int tb, int ldb) {
    int npan = (N + NR - 1) / NR;
    for (int pn = 0; pn < npan; pn++) {
        int j0 = pn * NR, nr = N - j0 < NR ? N - j0 : NR;
        real *dst = bp + (size_t)pn * kc * NR;
        if (!tb) {
            for (int k = 0; k < kc; k++) {
                const real *src = b + (size_t)(k0 + k) * ldb + j0;
                for (int j = 0; j < nr; j++) dst[(size_t)k * NR + j] = src[j];
                for (int j = nr; j < NR; j++) dst[(size_t)k * NR + j] = 0;
            }
        } else {
            for (int j = 0; j < NR; j++) {
                if (j >= nr) {
                    for (int k = 0; k < kc; k++) dst[(size_t)k * NR + j] = 0;
                    continue;
                }
                const real *src = b + (size_t)(j0 + j) * ldb + k0;
                for (int k = 0; k < kc; k++) dst[(size_t)k * NR + j] = src[k];
            }
        }
    }
}

void tb_cpu_gemm(real *c, const real *a, const real *b, int M, int N, int K, int ta, int tb,
                 int lda, int ldb, int ldc, real alpha, real beta, const struct tb_backend *be) {
    (void)be;
    if (M <= 0 || N <= 0) return;
    int onto = alpha == 1 && beta == 1;
    if (K <= 0) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                real *cp = &c[(size_t)i * ldc + j];
                if (!onto) *cp = beta == 0 ? 0 : beta * *cp;
            }
        return;
    }
    /* Chunking K is exact when the partial sums can live in c: onto, or beta = 0. */
    int kcmax = (onto || beta == 0) ? KC : K;
    int npan = (N + NR - 1) / NR;
    size_t need = (size_t)npan * NR * (size_t)(kcmax < K ? kcmax : K);
    if (need > pack_cap) {
        real *nb = realloc(pack_buf, need * sizeof(real));
        if (!nb) abort(); /* out of memory in a kernel: a broken invariant for us */
        pack_buf = nb;
        pack_cap = need;
        pthread_once(&pack_key_once, pack_key_make);
        pthread_setspecific(pack_key, nb);
    }
    for (int k0 = 0; k0 < K; k0 += kcmax) {
        int kc = K - k0 < kcmax ? K - k0 : kcmax;
        pack_b(pack_buf, b, N, k0, kc, tb, ldb);
        gemm_args g = {c, a, pack_buf, M, N, ta, lda, ldc, k0, kc, k0 == 0, k0 + kc == K,
                       alpha, beta, onto};
        gemm_run(&g);
    }
}

void tb_cpu_gemm_serial(real *c, const real *a, const real *b, int M, int N, int K, int ta,
                        int tb, int lda, int ldb, int ldc, real alpha, real beta) {
    gemm_serial++;
    tb_cpu_gemm(c, a, b, M, N, K, ta, tb, lda, ldb, ldc, alpha, beta, NULL);
    gemm_serial--;
}
