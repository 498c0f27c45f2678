/* CUDA backend: the context (device, stream, cuBLASLt handle and workspace, scratch
 * slots), device memory helpers, the cuBLASLt GEMM with its shape-keyed cache, the
 * deterministic reductions, and the core family's element-wise ops. */
#include <math.h>
#include <pthread.h>
#include <string.h>
#include "cuda_internal.cuh"

tbc_ctx *tbc_g = NULL;
static tb_backend cuda_backend;
static pthread_mutex_t init_mu = PTHREAD_MUTEX_INITIALIZER;

void tbc_fatal(const char *call, const char *file, int line, const char *msg) {
    fprintf(stderr, "tb cuda: %s:%d: %s failed: %s\n", file, line, call, msg);
    abort();
}

extern "C" int tb_cuda_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError(); /* clear the sticky "no device" error */
        return 0;
    }
    return n;
}

void *tbc_scratch(int slot, size_t bytes) {
    tbc_ctx *c = tbc_g;
    if (bytes == 0) bytes = 1;
    if (c->scratch_cap[slot] < bytes) {
        TBC_CHECK(cudaStreamSynchronize(c->stream));
        if (c->scratch[slot]) {
            TBC_CHECK(cudaFree(c->scratch[slot]));
            c->held_bytes -= (double)c->scratch_cap[slot];
        }
        c->scratch[slot] = NULL;
        TBC_CHECK(cudaMalloc(&c->scratch[slot], bytes));
        c->held_bytes += (double)bytes;
        c->scratch_cap[slot] = bytes;
    }
    return c->scratch[slot];
}

static int ctx_create(tb_err *err) {
    int n = tb_cuda_device_count();
    if (n <= 0) return tb_err_set(err, "cuda backend: no CUDA device (cudaGetDeviceCount = %d)", n);
    tbc_ctx *c = (tbc_ctx *)calloc(1, sizeof *c);
    if (!c) return tb_err_set(err, "cuda backend: out of host memory for the context");
    cudaError_t e;
    cudaDeviceProp prop;
    if ((e = cudaSetDevice(0)) != cudaSuccess || (e = cudaGetDeviceProperties(&prop, 0)) != cudaSuccess ||
        (e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        free(c);
        return tb_err_set(err, "cuda backend: device 0 set-up: %s", cudaGetErrorString(e));
    }
    c->sm_count = prop.multiProcessorCount;
    c->cc_major = prop.major;
    c->prec = TB_PREC_FP32;
    const char *attn = getenv("TB_CUDA_ATTN");
    c->attn_plain = attn && strcmp(attn, "plain") == 0;
    const char *tc = getenv("TB_CUDA_TC");
    /* unset or "1": every tensor-core tile kernel (the bf16 mode's default); "attn" or
     * "ret": one kind; "0": none (fp32 CUDA cores, as in the fp32 and fp16 modes) */
    c->tc_tiles = !tc || !strcmp(tc, "1") ? TB_CUDA_TC_ATTN | TB_CUDA_TC_RET
                  : !strcmp(tc, "attn")   ? TB_CUDA_TC_ATTN
                  : !strcmp(tc, "ret")    ? TB_CUDA_TC_RET
                                          : 0;
    /* Bench switch: 0, 1, 3 or 7 picks the split products of the tensor-core attention
     * (flash_tc_kernels.cuh); anything else, the default 7. */
    const char *split = getenv("TB_CUDA_TC_SPLIT");
    c->tc_split = split && (!strcmp(split, "0") || !strcmp(split, "1") || !strcmp(split, "3")) ? split[0] - '0' : 7;
    const char *tune = getenv("TB_CUDA_GEMM_TUNE");
    c->gemm_tune = tune && (!strcmp(tune, "0") || !strcmp(tune, "1")) ? tune[0] - '0' : 2;
    const char *tlog = getenv("TB_CUDA_GEMM_TUNE_LOG");
    c->gemm_tune_log = tlog && !strcmp(tlog, "1");
    const char *g32 = getenv("TB_CUDA_FP32_GEMM");
    c->fp32_cublas = g32 && strcmp(g32, "cublas") == 0;
    /* Asynchronous by default: every host read goes through an op that waits (to_host,
     * scalar results). Managed memory keeps the synchronous mode its host accesses need. */
    const char *managed = getenv("TB_CUDA_MANAGED");
    c->managed = managed && strcmp(managed, "1") == 0;
    c->sync_ops = c->managed;
    cublasStatus_t s = cublasLtCreate(&c->lt);
    if (s != CUBLAS_STATUS_SUCCESS) {
        cudaStreamDestroy(c->stream);
        free(c);
        return tb_err_set(err, "cuda backend: cublasLtCreate: %s", cublasLtGetStatusString(s));
    }
    const size_t ws_bytes = (size_t)32 << 20;
    c->workspace_bytes = ws_bytes;
    c->held_bytes = (double)ws_bytes;
    if ((e = cudaMalloc(&c->workspace, ws_bytes)) != cudaSuccess) {
        cublasLtDestroy(c->lt);
        cudaStreamDestroy(c->stream);
        free(c);
        return tb_err_set(err, "cuda backend: cuBLASLt workspace of %zu bytes: %s", ws_bytes,
                          cudaGetErrorString(e));
    }
    tbc_g = c;
    return 0;
}

extern "C" const tb_backend *tb_backend_cuda(tb_err *err) {
    pthread_mutex_lock(&init_mu);
    if (!tbc_g) {
        if (ctx_create(err)) {
            pthread_mutex_unlock(&init_mu);
            return NULL;
        }
        memset(&cuda_backend, 0, sizeof cuda_backend);
        cuda_backend.name = "cuda";
        tbc_ops_core_init(&cuda_backend.core);
        tbc_ops_dense_init(&cuda_backend.dense);
        tbc_ops_seq_init(&cuda_backend.seq);
        cuda_backend.impl = tbc_g;
    }
    pthread_mutex_unlock(&init_mu);
    return &cuda_backend;
}

extern "C" void *tb_cuda_malloc(size_t bytes, tb_err *err) {
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
    if (e != cudaSuccess) {
        tb_err_set(err, "cudaMalloc of %zu bytes: %s", bytes, cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

extern "C" void tb_cuda_free(void *p) {
    if (p) TBC_CHECK(cudaFree(p));
}

static int copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, tb_err *err) {
    if (!tbc_g) return tb_err_set(err, "cuda copy: backend not created");
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, kind, tbc_g->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(tbc_g->stream);
    if (e != cudaSuccess)
        return tb_err_set(err, "cuda copy of %zu bytes (%s): %s", bytes,
                          kind == cudaMemcpyHostToDevice ? "host to device" : "device to host",
                          cudaGetErrorString(e));
    return 0;
}

extern "C" int tb_cuda_h2d(void *dst, const void *src, size_t bytes, tb_err *err) {
    return copy(dst, src, bytes, cudaMemcpyHostToDevice, err);
}

extern "C" int tb_cuda_d2h(void *dst, const void *src, size_t bytes, tb_err *err) {
    return copy(dst, src, bytes, cudaMemcpyDeviceToHost, err);
}

extern "C" int tb_cuda_sync(tb_err *err) {
    if (!tbc_g) return tb_err_set(err, "cuda sync: backend not created");
    cudaError_t e = cudaStreamSynchronize(tbc_g->stream);
    if (e == cudaSuccess) e = cudaGetLastError();
    if (e != cudaSuccess) return tb_err_set(err, "cuda sync: %s", cudaGetErrorString(e));
    return 0;
}

extern "C" void tb_cuda_gemm_cache_stats(int *entries, long *hits, long *misses) {
    int n = 0;
    if (tbc_g)
        for (int i = 0; i < TBC_GEMM_CACHE; i++) n += tbc_g->gemm[i].used;
    *entries = n;
    *hits = tbc_g ? tbc_g->gemm_hits : 0;
    *misses = tbc_g ? tbc_g->gemm_misses : 0;
}

extern "C" void tb_cuda_gemm_tune_stats(long *tuned, long *changed) {
    *tuned = tbc_g ? tbc_g->gemm_tuned : 0;
    *changed = tbc_g ? tbc_g->gemm_tune_faster : 0;
}

extern "C" void tb_cuda_gemm_cache_more(int *capacity, long *evictions, long *bucket_uses) {
    *capacity = TBC_GEMM_CACHE;
    *evictions = tbc_g ? tbc_g->gemm_evictions : 0;
    *bucket_uses = tbc_g ? tbc_g->gemm_exact_uses : 0;
}

/* ---- GEMM through cuBLASLt ------------------------------------------------------ */

/* Row-major c (M,N) = op(a)·op(b) is column-major cᵀ (N,M) = op(b)ᵀ·op(a)ᵀ: cuBLASLt's
 * A is b and its B is a, with the transpose flags carried over. fp32 in and out; the
 * products in fp32 (CUBLAS_COMPUTE_32F: no TF32), or on the tensor cores in bf16 / fp16
 * with fp32 accumulation (CUBLAS_COMPUTE_32F_FAST_16BF / _16F) per tbc_g->prec. */
static int ptr_align(const void *p) {
    uintptr_t u = (uintptr_t)p;
    int a = 4;
    while (a < 16 && !(u & (uintptr_t)a)) a <<= 1;
    return a;
}

static unsigned gemm_hash(const int *k, int n) {
    unsigned h = 2166136261u;
    for (int i = 0; i < n; i++) h = (h ^ (unsigned)k[i]) * 16777619u;
    return h;
}

/* The float entry's descriptor and layouts from its key fields, at M = cm and K = ck. */
static void gemm_entry_layouts(tbc_gemm_entry *e) {
    cublasOperation_t opA = e->tb ? CUBLAS_OP_T : CUBLAS_OP_N; /* A = b */
    cublasOperation_t opB = e->ta ? CUBLAS_OP_T : CUBLAS_OP_N; /* B = a */
    int prec = e->prec > TBC_BUCKET_MARK / 2 ? e->prec - TBC_BUCKET_MARK : e->prec; /* bucket keys */
    cublasComputeType_t ct = prec == TB_PREC_BF16   ? CUBLAS_COMPUTE_32F_FAST_16BF
                             : prec == TB_PREC_FP16 ? CUBLAS_COMPUTE_32F_FAST_16F
                                                    : CUBLAS_COMPUTE_32F;
    cudaDataType_t ab = prec == TBC_PREC_BF16IN ? CUDA_R_16BF : CUDA_R_32F; /* tbc_gemm_bf16 */
    TBC_CHECK_LT(cublasLtMatmulDescCreate(&e->desc, ct, CUDA_R_32F));
    TBC_CHECK_LT(cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof opA));
    TBC_CHECK_LT(cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof opB));
    /* Stored (column-major) shapes: A is (N,K) or, transposed, (K,N); B is (K,M) or (M,K). */
    TBC_CHECK_LT(cublasLtMatrixLayoutCreate(&e->la, ab, e->tb ? e->ck : e->N, e->tb ? e->N : e->ck, e->ldb));
    TBC_CHECK_LT(cublasLtMatrixLayoutCreate(&e->lb, ab, e->ta ? e->cm : e->ck, e->ta ? e->ck : e->cm, e->lda));
    TBC_CHECK_LT(cublasLtMatrixLayoutCreate(&e->lc, CUDA_R_32F, e->N, e->cm, e->ldc));
}

/* cuBLASLt's first choice for the entry's descriptor and layouts (into e->algo), and with
 * out, its first `want` choices in its order (how many came back: the return value); -1
 * when it offers none. */
static int gemm_heuristic(tbc_gemm_entry *e, int want, cublasLtMatmulHeuristicResult_t *out) {
    cublasLtMatmulPreference_t pref = NULL;
    if (cublasLtMatmulPreferenceCreate(&pref) != CUBLAS_STATUS_SUCCESS) return -1;
    size_t ws = tbc_g->workspace_bytes;
    uint32_t al = (uint32_t)e->align;
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al, sizeof al);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al, sizeof al);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al, sizeof al);
    cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al, sizeof al);
    cublasLtMatmulHeuristicResult_t one, *res = out ? out : &one;
    int nres = 0;
    if (cublasLtMatmulAlgoGetHeuristic(tbc_g->lt, e->desc, e->la, e->lb, e->lc, e->lc, pref, out ? want : 1, res,
                                       &nres) != CUBLAS_STATUS_SUCCESS)
        nres = 0;
    cublasLtMatmulPreferenceDestroy(pref);
    if (nres < 1) return -1;
    e->algo = res[0].algo;
    return out ? nres : 0;
}

static void gemm_entry_destroy(tbc_gemm_entry *e) {
    cublasLtMatrixLayoutDestroy(e->la);
    cublasLtMatrixLayoutDestroy(e->lb);
    cublasLtMatrixLayoutDestroy(e->lc);
    cublasLtMatmulDescDestroy(e->desc);
}

/* The cache slot for key {M, N, K, ta, tb, lda, ldb, ldc, align, prec}: the entry holding
 * it (*hit = 1), else a free slot, else (table full) the key's home slot, emptied. The
 * evicted entry's descriptors are host objects whose contents cuBLASLt reads when a
 * matmul is enqueued, so they are destroyed without waiting for the stream. */
static bool gemm_key_is(const tbc_gemm_entry *x, const int key[10]) {
    return x->M == key[0] && x->N == key[1] && x->K == key[2] && x->ta == key[3] && x->tb == key[4] &&
           x->lda == key[5] && x->ldb == key[6] && x->ldc == key[7] && x->align == key[8] && x->prec == key[9];
}
static tbc_gemm_entry *gemm_slot(tbc_gemm_entry *table, int size, const int key[10], int *hit) {
    unsigned h = gemm_hash(key, 10) % (unsigned)size;
    *hit = 0;
    for (int p = 0; p < size; p++) {
        tbc_gemm_entry *x = &table[(h + p) % (unsigned)size];
        if (!x->used) return x;
        if (gemm_key_is(x, key)) {
            *hit = 1;
            return x;
        }
    }
    tbc_gemm_entry *x = &table[h];
    gemm_entry_destroy(x);
    x->used = 0;
    tbc_g->gemm_evictions++;
    return x;
}

/* A missed slot's key fields. */
static void gemm_slot_fill(tbc_gemm_entry *e, const int key[10]) {
    memset(e, 0, sizeof *e);
    e->M = key[0], e->N = key[1], e->K = key[2], e->ta = key[3], e->tb = key[4];
    e->lda = key[5], e->ldb = key[6], e->ldc = key[7], e->align = key[8], e->prec = key[9];
    e->cm = e->M, e->ck = e->K;
}

static void layout_dims(cublasLtMatrixLayout_t l, int rows, int cols) {
    uint64_t r = (uint64_t)rows, c = (uint64_t)cols;
    TBC_CHECK_LT(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_ROWS, &r, sizeof r));
    TBC_CHECK_LT(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_COLS, &c, sizeof c));
}

/* An entry's layouts resized to this call's M and K (same bucket, same leading
 * dimensions): two attribute writes per layout instead of a new descriptor, layouts and
 * algorithm check per row count. cuBLASLt reads the layouts when a matmul is enqueued, so
 * they may change after each call. */
static void gemm_entry_resize(tbc_gemm_entry *e, int M, int K, int s8) {
    if (M == e->cm && K == e->ck) return;
    if (s8) { /* A = w (K, N), B = x (K, M), C (N, M); K is the weight's in: fixed */
        layout_dims(e->lb, e->K, M);
        layout_dims(e->lc, e->N, M);
    } else {
        if (K != e->ck) layout_dims(e->la, e->tb ? K : e->N, e->tb ? e->N : K);
        layout_dims(e->lb, e->ta ? M : K, e->ta ? K : M);
        if (M != e->cm) layout_dims(e->lc, e->N, M);
    }
    e->cm = M, e->ck = K;
}

/* The int8 entry (prec TBC_PREC_S8 in the key): yᵀ (out, n) = wᵀᵀ · xᵀ column-major, i.e.
 * cuBLASLt's A = w (in, out) transposed, B = x (in, n), "TN" as the int8 kernels want.
 * Returns -1 (entry marked unsupported) when no algorithm comes back. */
#define TBC_PREC_S8 (-8)
static int gemm_entry_layouts_s8(tbc_gemm_entry *e) {
    cublasOperation_t opA = CUBLAS_OP_T, opB = CUBLAS_OP_N;
    if (cublasLtMatmulDescCreate(&e->desc, CUBLAS_COMPUTE_32I, CUDA_R_32I) != CUBLAS_STATUS_SUCCESS) return -1;
    cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof opA);
    cublasLtMatmulDescSetAttribute(e->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof opB);
    int ok = cublasLtMatrixLayoutCreate(&e->la, CUDA_R_8I, e->K, e->N, e->lda) == CUBLAS_STATUS_SUCCESS &&
             cublasLtMatrixLayoutCreate(&e->lb, CUDA_R_8I, e->K, e->cm, e->ldb) == CUBLAS_STATUS_SUCCESS &&
             cublasLtMatrixLayoutCreate(&e->lc, CUDA_R_32I, e->N, e->cm, e->ldc) == CUBLAS_STATUS_SUCCESS;
    return ok ? 0 : -1;
}

/* Descriptor, layouts and algorithm of a missed entry (key fields filled, layouts at the
 * call's M and K). The algorithm is the one cuBLASLt picks for the key's bucket (M and K
 * rounded up to TBC_BUCKET rows, leading dimensions widened to fit): a function of the key
 * alone, not of the first shape seen in it, so a resumed run picks the same algorithms as
 * an uninterrupted one. Where the bucket gets none (e->unsupported), or cuBLASLt refuses
 * it for a call's exact shape, gemm_enqueue asks for that shape's own. Returns -1 when the
 * layouts cannot be made (int8). */
static void gemm_bucket_key(const tbc_gemm_entry *e, int bkey[10]);
static int gemm_entry_build(tbc_gemm_entry *e) {
    int s8 = e->prec == TBC_PREC_S8;
    if (s8 ? gemm_entry_layouts_s8(e) : (gemm_entry_layouts(e), 0)) return -1;
    int bkey[10], hit;
    gemm_bucket_key(e, bkey);
    tbc_gemm_entry *b = gemm_slot(tbc_g->bucket, TBC_BUCKETS, bkey, &hit);
    if (!hit) {
        gemm_slot_fill(b, bkey);
        b->unsupported = (s8 ? gemm_entry_layouts_s8(b) : (gemm_entry_layouts(b), 0)) || gemm_heuristic(b, 1, NULL);
        b->used = 1;
    }
    e->unsupported = b->unsupported;
    if (!b->unsupported) e->algo = b->algo;
    e->tune_pending = !b->unsupported && !b->tuned && (tbc_g->gemm_tune == 2 || (tbc_g->gemm_tune == 1 && s8));
    return 0;
}

/* The bucket key of an entry (its key's M and K are rounded already, gemm_entry_for). */
static void gemm_bucket_key(const tbc_gemm_entry *e, int bkey[10]) {
    int k[10] = {e->M, e->N, e->K, e->ta, e->tb, e->lda, e->ldb, e->ldc, e->align, e->prec + TBC_BUCKET_MARK};
    memcpy(bkey, k, sizeof k);
    if (e->prec != TBC_PREC_S8) { /* leading dimensions that hold the rounded rows (see gemm_entry_layouts) */
        int rb = e->ta ? bkey[0] : bkey[2], ra = e->tb ? bkey[2] : e->N;
        if (bkey[5] < rb) bkey[5] = rb;
        if (bkey[6] < ra) bkey[6] = ra;
    }
}

/* The entry's matmul at its current shape (D = C): the bucket's algorithm, or where there
 * is none or cuBLASLt refuses it for this shape (its checks run when the matmul is
 * enqueued, before anything is launched), the heuristic's choice for the exact shape,
 * asked again on each such call (not kept: an entry serves many shapes). */
static cublasStatus_t gemm_enqueue(tbc_gemm_entry *e, const void *alpha, const void *A, const void *B,
                                   const void *beta, void *C) {
    tbc_ctx *g = tbc_g;
    cublasStatus_t st = CUBLAS_STATUS_NOT_SUPPORTED;
    if (e->unsupported == 2) return st;
    if (!e->unsupported)
        st = cublasLtMatmul(g->lt, e->desc, alpha, A, e->la, B, e->lb, beta, C, e->lc, C, e->lc, &e->algo,
                            g->workspace, g->workspace_bytes, g->stream);
    if (st == CUBLAS_STATUS_SUCCESS) return st;
    cublasLtMatmulAlgo_t bucket = e->algo;
    if (gemm_heuristic(e, 1, NULL) == 0) {
        g->gemm_exact_uses++;
        st = cublasLtMatmul(g->lt, e->desc, alpha, A, e->la, B, e->lb, beta, C, e->lc, C, e->lc, &e->algo,
                            g->workspace, g->workspace_bytes, g->stream);
    }
    e->algo = bucket;
    return st;
}

/* An order-free 64-bit digest of the bits of a column-major (rows, cols) output: the
 * wrapping sum of a mixed hash of each (index, bits), so the atomics' order does not
 * matter (it feeds gemm_tune's comparison only, never training state). */
__global__ void k_gemm_digest(unsigned long long *out, const uint32_t *c, int rows, int cols, int ldc) {
    unsigned long long s = 0;
    size_t n = (size_t)rows * cols;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t col = i / (size_t)rows, row = i % (size_t)rows;
        unsigned long long z = ((unsigned long long)i << 32 | c[col * (size_t)ldc + row]) + 0x9e3779b97f4a7c15ull;
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        s += z ^ (z >> 31);
    }
    for (int o = 16; o; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) atomicAdd(out, s);
}

/* The bucket holding key, or NULL (a lookup that never evicts). */
static tbc_gemm_entry *gemm_find(tbc_gemm_entry *table, int size, const int key[10]) {
    unsigned h = gemm_hash(key, 10) % (unsigned)size;
    for (int p = 0; p < size; p++) {
        tbc_gemm_entry *x = &table[(h + p) % (unsigned)size];
        if (!x->used) return NULL;
        if (gemm_key_is(x, key)) return x;
    }
    return NULL;
}

#define TBC_TUNE_MAX 8
#define TBC_TUNE_REPS 4   /* back-to-back calls a timing */
#define TBC_TUNE_ROUNDS 3 /* timings a candidate, the candidates in turn; the least kept */
#define TBC_TUNE_SAVE_MAX ((size_t)64 << 20) /* outputs to restore (beta != 0) above this: not timed */

/* The algorithm of e's bucket chosen by timing, on this call's operands, before the call
 * itself runs: cuBLASLt's first TBC_TUNE_MAX choices for the bucket, each run once (C
 * restored first where beta != 0) and, for float outputs, its output's digest compared
 * with its first choice's; those with the same bits (int8: all of them, integer sums are
 * exact in any order, so no digest; float: the same products summed in the same order, so
 * a run's losses do not depend on which one wins) timed over TBC_TUNE_REPS back-to-back
 * calls, TBC_TUNE_ROUNDS times in turn (the least of a candidate's timings counts: one
 * noisy timing had made runs of the same build differ by 1.5%), the fastest kept for
 * every later call of the bucket. C is left as it was. Once
 * per bucket, in a run's first step (it waits for the stream). */
static void gemm_tune(tbc_gemm_entry *e, const void *alpha, const void *A, const void *B, const void *beta, void *C,
                      int beta_zero) {
    tbc_ctx *g = tbc_g;
    e->tune_pending = 0;
    int bkey[10];
    gemm_bucket_key(e, bkey);
    tbc_gemm_entry *b = gemm_find(g->bucket, TBC_BUCKETS, bkey);
    if (!b || b->unsupported || b->tuned) return;
    b->tuned = 1;
    size_t cbytes = ((size_t)e->ldc * (size_t)(e->cm - 1) + (size_t)e->N) * 4;
    if (!beta_zero && cbytes > TBC_TUNE_SAVE_MAX) return;
    cublasLtMatmulHeuristicResult_t cand[TBC_TUNE_MAX];
    cublasLtMatmulAlgo_t first = b->algo;
    int n = gemm_heuristic(b, TBC_TUNE_MAX, cand);
    b->algo = first;
    if (n < 2) return;
    int exact = e->prec == TBC_PREC_S8;
    void *c0 = NULL;
    static unsigned long long *dig; /* the digest's one word, kept */
    if ((!beta_zero && cudaMallocAsync(&c0, cbytes, g->stream) != cudaSuccess) ||
        (!exact && !dig && cudaMalloc(&dig, sizeof *dig) != cudaSuccess)) {
        (void)cudaGetLastError();
        if (c0) TBC_CHECK(cudaFreeAsync(c0, g->stream));
        return;
    }
    cudaEvent_t t0, t1;
    TBC_CHECK(cudaEventCreate(&t0));
    TBC_CHECK(cudaEventCreate(&t1));
    if (c0) TBC_CHECK(cudaMemcpyAsync(c0, C, cbytes, cudaMemcpyDeviceToDevice, g->stream));
    unsigned long long ref = 0;
    float ms[TBC_TUNE_MAX];
    int best = -1, ok[TBC_TUNE_MAX];
    for (int i = 0; i < n; i++) ms[i] = -1, ok[i] = 0;
    for (int i = 0; i < n; i++) {
        if (c0) TBC_CHECK(cudaMemcpyAsync(C, c0, cbytes, cudaMemcpyDeviceToDevice, g->stream));
        cublasStatus_t st = cublasLtMatmul(g->lt, e->desc, alpha, A, e->la, B, e->lb, beta, C, e->lc, C, e->lc,
                                           &cand[i].algo, g->workspace, g->workspace_bytes, g->stream);
        if (st != CUBLAS_STATUS_SUCCESS) {
            if (i == 0) break; /* the first choice refused at this shape: leave the bucket as it is */
            continue;
        }
        if (!exact) {
            unsigned long long h = 0;
            TBC_CHECK(cudaMemsetAsync(dig, 0, sizeof *dig, g->stream));
            k_gemm_digest<<<tbc_blocks((size_t)e->N * e->cm, 256), 256, 0, g->stream>>>(dig, (const uint32_t *)C,
                                                                                         e->N, e->cm, e->ldc);
            TBC_LAUNCHED();
            TBC_CHECK(cudaMemcpyAsync(&h, dig, sizeof h, cudaMemcpyDeviceToHost, g->stream));
            TBC_CHECK(cudaStreamSynchronize(g->stream));
            if (i == 0) ref = h;
            else if (h != ref) continue;
        }
        ok[i] = 1;
    }
    for (int round = 0; round < TBC_TUNE_ROUNDS; round++)
        for (int i = 0; i < n; i++) {
            if (!ok[i]) continue;
            float t = 0;
            TBC_CHECK(cudaEventRecord(t0, g->stream));
            for (int r = 0; r < TBC_TUNE_REPS; r++)
                (void)cublasLtMatmul(g->lt, e->desc, alpha, A, e->la, B, e->lb, beta, C, e->lc, C, e->lc,
                                     &cand[i].algo, g->workspace, g->workspace_bytes, g->stream);
            TBC_CHECK(cudaEventRecord(t1, g->stream));
            TBC_CHECK(cudaEventSynchronize(t1));
            TBC_CHECK(cudaEventElapsedTime(&t, t0, t1));
            t /= TBC_TUNE_REPS;
            if (ms[i] < 0 || t < ms[i]) ms[i] = t;
        }
    for (int i = 0; i < n; i++)
        if (ok[i] && (best < 0 || ms[i] < ms[best])) best = i;
    if (c0) {
        TBC_CHECK(cudaMemcpyAsync(C, c0, cbytes, cudaMemcpyDeviceToDevice, g->stream));
        TBC_CHECK(cudaFreeAsync(c0, g->stream));
    }
    TBC_CHECK(cudaEventDestroy(t0));
    TBC_CHECK(cudaEventDestroy(t1));
    if (best < 0) return;
    b->algo = e->algo = cand[best].algo;
    g->gemm_tuned++;
    if (best) g->gemm_tune_faster++;
    if (g->gemm_tune_log) {
        fprintf(stderr, "cuda gemm tune: M %d N %d K %d ta %d tb %d prec %d beta %s:", e->cm, e->N, e->ck, e->ta,
                e->tb, e->prec, beta_zero ? "0" : "1");
        for (int i = 0; i < n; i++) fprintf(stderr, " %.1f", ms[i] * 1e3);
        fprintf(stderr, " us (-1: other bits or refused); chosen %d\n", best);
    }
}

/* The cache entry for this call's key (M and K rounded up to TBC_BUCKET), its layouts at
 * the call's M and K. */
static tbc_gemm_entry *gemm_entry_for(int key[10], int M, int K, int s8) {
    tbc_ctx *g = tbc_g;
    key[0] = (key[0] + TBC_BUCKET - 1) / TBC_BUCKET * TBC_BUCKET;
    if (!s8) key[2] = (key[2] + TBC_BUCKET - 1) / TBC_BUCKET * TBC_BUCKET; /* int8: K is the weight's in */
    int hit;
    tbc_gemm_entry *e = gemm_slot(g->gemm, TBC_GEMM_CACHE, key, &hit);
    if (hit) {
        g->gemm_hits++;
        gemm_entry_resize(e, M, K, s8);
        return e;
    }
    g->gemm_misses++;
    gemm_slot_fill(e, key);
    e->cm = M, e->ck = K;
    e->used = 1;
    if (gemm_entry_build(e)) e->unsupported = 2; /* int8 layouts refused: the callers fall back */
    return e;
}

/* c = beta·c (or 0 when beta = 0) for K = 0, where cuBLASLt has nothing to multiply. */
__global__ void k_gemm_k0(float *c, int M, int N, int ldc, float beta) {
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    for (; i < (size_t)M * N; i += (size_t)gridDim.x * blockDim.x) {
        float *p = c + (i / N) * (size_t)ldc + i % N;
        *p = beta == 0.0f ? 0.0f : beta * *p;
    }
}

/* The cuBLASLt path of tbc_gemm and tbc_gemm_bf16 (prec: the key's precision field, which
 * picks the operand type and compute type, gemm_entry_layouts): c = beta c for K = 0, else
 * the cached entry's matmul. */
static void gemm_run(float *c, const void *a, const void *b, int M, int N, int K, int ta, int tb, int lda, int ldb,
                     int ldc, float alpha, float beta, int prec) {
    tbc_ctx *g = tbc_g;
    if (K <= 0) {
        k_gemm_k0<<<tbc_blocks((size_t)M * N, 256), 256, 0, g->stream>>>(c, M, N, ldc, beta);
        TBC_LAUNCHED();
        return;
    }
    int align = ptr_align(a);
    int ab = ptr_align(b), ac = ptr_align(c);
    if (ab < align) align = ab;
    if (ac < align) align = ac;
    int key[10] = {M, N, K, ta, tb, lda, ldb, ldc, align, prec};
    tbc_gemm_entry *e = gemm_entry_for(key, M, K, 0);
    if (e->tune_pending) gemm_tune(e, &alpha, b, a, &beta, c, beta == 0.0f);
    if (gemm_enqueue(e, &alpha, b, a, &beta, c) != CUBLAS_STATUS_SUCCESS)
        tbc_fatal("cublasLtMatmul", __FILE__, __LINE__, "no algorithm for this GEMM");
    tbc_op_sync();
}

void tbc_gemm(float *c, const float *a, const float *b, int M, int N, int K, int ta, int tb,
              int lda, int ldb, int ldc, float alpha, float beta, const struct tb_backend *be) {
    (void)be;
    tbc_ctx *g = tbc_g;
    if (M <= 0 || N <= 0) return;
    if (g->prec == TB_PREC_FP32 && !g->fp32_cublas) {
        tbc_gemm_ordered(c, a, b, M, N, K, ta, tb, lda, ldb, ldc, alpha, beta);
        return;
    }
    gemm_run(c, a, b, M, N, K, ta, tb, lda, ldb, ldc, alpha, beta, g->prec);
}

void tbc_gemm_bf16(float *c, const void *a, const void *b, int M, int N, int K, int ta, int tb, int lda, int ldb,
                   int ldc, float alpha, float beta) {
    if (M <= 0 || N <= 0) return;
    gemm_run(c, a, b, M, N, K, ta, tb, lda, ldb, ldc, alpha, beta, TBC_PREC_BF16IN);
}

int tbc_gemm_s8(int32_t *c, const int8_t *x, const int8_t *w, int n, int in, int out) {
    if (n <= 0 || out <= 0 || in <= 0 || (in & 3) || (out & 3)) return -1;
    int align = ptr_align(x), aw = ptr_align(w), ac = ptr_align(c);
    if (aw < align) align = aw;
    if (ac < align) align = ac;
    if (align < 4) return -1;
    int key[10] = {n, out, in, 0, 1, in, in, out, align, TBC_PREC_S8};
    tbc_gemm_entry *e = gemm_entry_for(key, n, in, 1);
    int32_t one = 1, zero = 0;
    if (e->tune_pending) gemm_tune(e, &one, w, x, &zero, c, 1);
    if (gemm_enqueue(e, &one, w, x, &zero, c) != CUBLAS_STATUS_SUCCESS) return -1;
    tbc_op_sync();
    return 0;
}

/* ---- deterministic reductions --------------------------------------------------- */

/* Block blockIdx.x's partial of f(x[i]) over i < n (grid-stride over TBC_RED_BLOCKS blocks). */
__device__ double reduce_block(const float *x, size_t n, int kind, double *sh) {
    double s = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)TBC_RED_BLOCKS * blockDim.x) {
        double v = x[i];
        s += kind == TBC_RED_ABS ? fabs(v) : kind == TBC_RED_SQUARE ? v * v : (isfinite(v) ? 0.0 : 1.0);
    }
    return tbc_block_sum_d(s, sh);
}
__global__ void k_reduce_partial(double *part, const float *x, size_t n, int kind) {
    __shared__ double sh[TBC_RED_THREADS];
    double s = reduce_block(x, n, kind, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}
/* The same per range: range blockIdx.y is x[off[r] ..] of n[r] values, partials at
 * part[r · TBC_RED_BLOCKS + blockIdx.x] (the same bits as one k_reduce_partial a range). */
__global__ void k_reduce_partial_many(double *part, const float *x, const size_t *rng, int kind) {
    __shared__ double sh[TBC_RED_THREADS];
    size_t r = blockIdx.y;
    double s = reduce_block(x + rng[2 * r], rng[2 * r + 1], kind, sh);
    if (threadIdx.x == 0) part[r * TBC_RED_BLOCKS + blockIdx.x] = s;
}

/* out[blockIdx.x] = the sum of that range's nparts partials. */
__global__ void k_reduce_final(double *out, const double *part, int nparts) {
    __shared__ double sh[TBC_RED_THREADS];
    part += (size_t)blockIdx.x * nparts;
    double s = 0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += part[i];
    s = tbc_block_sum_d(s, sh);
    if (threadIdx.x == 0) out[blockIdx.x] = s;
}

void tbc_reduce_float(double *out_dev, const float *x, size_t n, int kind) {
    double *part = (double *)tbc_scratch(TBC_SCR_REDUCE, TBC_RED_BLOCKS * sizeof(double));
    k_reduce_partial<<<TBC_RED_BLOCKS, TBC_RED_THREADS, 0, tbc_g->stream>>>(part, x, n, kind);
    TBC_LAUNCHED();
    k_reduce_final<<<1, TBC_RED_THREADS, 0, tbc_g->stream>>>(out_dev, part, TBC_RED_BLOCKS);
    TBC_LAUNCHED();
}

static double reduce_to_host(const float *x, size_t n, int kind) {
    double *d = (double *)tbc_scratch(TBC_SCR_RESULT, sizeof(double));
    tbc_reduce_float(d, x, n, kind);
    double h = 0;
    TBC_CHECK(cudaMemcpyAsync(&h, d, sizeof h, cudaMemcpyDeviceToHost, tbc_g->stream));
    TBC_CHECK(cudaStreamSynchronize(tbc_g->stream));
    return h;
}

/* ---- core element-wise ops ------------------------------------------------------ */

#define GRID_STRIDE(i, n)                                                              \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);           \
         i += (size_t)gridDim.x * blockDim.x)

__global__ void k_fill(float *x, float v, size_t n) { GRID_STRIDE(i, n) x[i] = v; }
/* V: four values a thread (tbc_vec4), n then counts float4s. */
template <bool V>
__global__ void k_axpy(float *y, float a, const float *x, size_t n) {
    if (V)
        GRID_STRIDE(q, n) {
            float4 u = reinterpret_cast<float4 *>(y)[q], v = reinterpret_cast<const float4 *>(x)[q];
            u.x += a * v.x, u.y += a * v.y, u.z += a * v.z, u.w += a * v.w;
            reinterpret_cast<float4 *>(y)[q] = u;
        }
    else
        GRID_STRIDE(i, n) y[i] += a * x[i];
}
__global__ void k_scale(float *x, float a, size_t n) { GRID_STRIDE(i, n) x[i] *= a; }
/* Built with --fmad=false: two roundings of the products and one of the sum, as the CPU. */
template <bool V>
__global__ void k_axpby(float *z, float a, const float *x, float b, const float *y, size_t n) {
    if (V)
        GRID_STRIDE(q, n) {
            float4 u = reinterpret_cast<const float4 *>(x)[q], v = reinterpret_cast<const float4 *>(y)[q], r;
            r.x = a * u.x + b * v.x, r.y = a * u.y + b * v.y, r.z = a * u.z + b * v.z, r.w = a * u.w + b * v.w;
            reinterpret_cast<float4 *>(z)[q] = r;
        }
    else
        GRID_STRIDE(i, n) z[i] = a * x[i] + b * y[i];
}

__global__ void k_adamw(float *w, float *m, float *v, const float *g, size_t n, float rb1, float rb2,
                        float c1, float c2, float decay, float step, float rbc2, float reps, float gs) {
    GRID_STRIDE(i, n) {
        float gi = g[i] * gs;
        float mi = rb1 * m[i] + c1 * gi;
        float vi = rb2 * v[i] + c2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] * decay - step * mi / (sqrtf(vi) * rbc2 + reps);
    }
}

static void cu_fill(real *x, real value, size_t n) {
    if (!n) return;
    if (value == 0 && !signbit(value)) { /* +0.0 is all zero bits: the driver's memset (wide stores) */
        TBC_CHECK(cudaMemsetAsync(x, 0, n * sizeof(real), tbc_g->stream));
        tbc_op_sync();
        return;
    }
    k_fill<<<tbc_blocks(n, 256), 256, 0, tbc_g->stream>>>(x, value, n);
    TBC_LAUNCHED();
}

static void cu_copy(real *y, const real *x, size_t n) {
    if (y == x || !n) return;
    TBC_CHECK(cudaMemcpyAsync(y, x, n * sizeof(real), cudaMemcpyDeviceToDevice, tbc_g->stream));
    tbc_op_sync();
}

static void cu_axpy(real *y, real a, const real *x, size_t n) {
    if (!n) return;
    if (tbc_vec4(n, y, x, x)) k_axpy<true><<<tbc_blocks(n / 4, 256), 256, 0, tbc_g->stream>>>(y, a, x, n / 4);
    else k_axpy<false><<<tbc_blocks(n, 256), 256, 0, tbc_g->stream>>>(y, a, x, n);
    TBC_LAUNCHED();
}

static void cu_scale(real *x, real a, size_t n) {
    if (!n) return;
    k_scale<<<tbc_blocks(n, 256), 256, 0, tbc_g->stream>>>(x, a, n);
    TBC_LAUNCHED();
}

static void cu_axpby(real *z, real a, const real *x, real b, const real *y, size_t n) {
    if (!n) return;
    if (tbc_vec4(n, z, x, y))
        k_axpby<true><<<tbc_blocks(n / 4, 256), 256, 0, tbc_g->stream>>>(z, a, x, b, y, n / 4);
    else
        k_axpby<false><<<tbc_blocks(n, 256), 256, 0, tbc_g->stream>>>(z, a, x, b, y, n);
    TBC_LAUNCHED();
}

static double cu_sumsq(const real *x, size_t n) { return reduce_to_host(x, n, TBC_RED_SQUARE); }

/* cu_sumsq of each range (the same bits: the same partials and tree per range) in two
 * launches for all of them (k_reduce_partial_many, k_reduce_final over count blocks) instead
 * of two per range; one copy back and one wait. Ranges go up in chunks of TBC_RED_CHUNK
 * (the (offset, n) pairs through a host staging copy, then the device). */
#define TBC_RED_CHUNK 4096
/* out_dev[i] (device doubles) = Σ f(x) over range i of base (offset[i], n[i]), f by kind,
 * for count ranges: two launches per TBC_RED_CHUNK ranges, the same bits as one
 * tbc_reduce_float a range. The (offset, n) pairs go up from a host buffer. */
void tbc_reduce_many(double *out_dev, const float *base, const size_t *offset, const size_t *n,
                     int count, int kind) {
    if (count <= 0) return;
    int chunk = count < TBC_RED_CHUNK ? count : TBC_RED_CHUNK;
    double *part = (double *)tbc_scratch(TBC_SCR_REDUCE, (size_t)chunk * TBC_RED_BLOCKS * sizeof(double));
    size_t *rng = (size_t *)tbc_scratch(TBC_SCR_REDUCE_RANGES, (size_t)chunk * 2 * sizeof(size_t));
    size_t *h = (size_t *)malloc((size_t)chunk * 2 * sizeof(size_t));
    if (!h) tbc_fatal("malloc", __FILE__, __LINE__, "out of host memory for the reduction ranges");
    for (int c0 = 0; c0 < count; c0 += chunk) {
        int m = count - c0 < chunk ? count - c0 : chunk;
        for (int i = 0; i < m; i++) h[2 * i] = offset[c0 + i], h[2 * i + 1] = n[c0 + i];
        /* pageable source: the call returns once h is staged, so h may be reused */
        TBC_CHECK(cudaMemcpyAsync(rng, h, (size_t)m * 2 * sizeof(size_t), cudaMemcpyHostToDevice, tbc_g->stream));
        k_reduce_partial_many<<<dim3(TBC_RED_BLOCKS, (unsigned)m), TBC_RED_THREADS, 0, tbc_g->stream>>>(
            part, base, rng, kind);
        TBC_LAUNCHED();
        k_reduce_final<<<(unsigned)m, TBC_RED_THREADS, 0, tbc_g->stream>>>(out_dev + c0, part, TBC_RED_BLOCKS);
        TBC_LAUNCHED();
    }
    free(h);
}

static void cu_sumsq_many(double *out, const real *base, const size_t *offset, const size_t *n,
                          int count) {
    if (count <= 0) return;
    double *d = (double *)tbc_scratch(TBC_SCR_RESULT, (size_t)count * sizeof(double));
    tbc_reduce_many(d, base, offset, n, count, TBC_RED_SQUARE);
    TBC_CHECK(cudaMemcpyAsync(out, d, (size_t)count * sizeof(double), cudaMemcpyDeviceToHost,
                              tbc_g->stream));
    TBC_CHECK(cudaStreamSynchronize(tbc_g->stream));
}

static int cu_all_finite(const real *x, size_t n) { return reduce_to_host(x, n, TBC_RED_NONFINITE) == 0.0; }

static void cu_adamw(real *w, real *m, real *v, const real *g, size_t n, double lr, double wd,
                     double b1, double b2, double eps, double bc1, double bc2, double gscale) {
    if (!n) return;
    k_adamw<<<tbc_blocks(n, 256), 256, 0, tbc_g->stream>>>(
        w, m, v, g, n, (float)b1, (float)b2, (float)(1 - b1), (float)(1 - b2), (float)(1 - lr * wd),
        (float)(lr / bc1), (float)(1 / sqrt(bc2)), (float)eps, (float)gscale);
    TBC_LAUNCHED();
}

/* ---- the memory interface: device memory ----------------------------------------- */

/* The model's buffers are plain device memory: the layers reach them only through ops
 * and to_device / to_host. TB_CUDA_MANAGED=1 (read once, at context creation) makes them
 * managed memory and the stream synchronous instead, for callers that still read or
 * write model buffers on the host (trainerd/cuda/README.md says which). */
/* Sizes of the live allocations (for mem_info): a handful of big buffers per model. */
#define TBC_LIVE_MAX 4096
static struct {
    void *p;
    size_t bytes;
} tbc_live[TBC_LIVE_MAX];

static void *cu_mem_alloc(size_t bytes) {
    void *p = NULL;
    if (!bytes) bytes = 1;
    cudaError_t e = tbc_g->managed ? cudaMallocManaged(&p, bytes, cudaMemAttachGlobal)
                                   : cudaMalloc(&p, bytes);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    TBC_CHECK(cudaMemsetAsync(p, 0, bytes, tbc_g->stream));
    TBC_CHECK(cudaStreamSynchronize(tbc_g->stream));
    for (int i = 0; i < TBC_LIVE_MAX; i++)
        if (!tbc_live[i].p) {
            tbc_live[i].p = p, tbc_live[i].bytes = bytes;
            tbc_g->held_bytes += (double)bytes;
            break;
        }
    return p;
}

static void cu_mem_free(void *p) {
    if (!p) return;
    TBC_CHECK(cudaStreamSynchronize(tbc_g->stream));
    TBC_CHECK(cudaFree(p));
    for (int i = 0; i < TBC_LIVE_MAX; i++)
        if (tbc_live[i].p == p) {
            tbc_g->held_bytes -= (double)tbc_live[i].bytes;
            tbc_live[i].p = NULL;
            break;
        }
}

static void cu_mem_info(double *held, double *used) {
    size_t fr = 0, tot = 0;
    TBC_CHECK(cudaMemGetInfo(&fr, &tot));
    *held = tbc_g->held_bytes;
    *used = (double)(tot - fr);
}

static void cu_mem_copy(void *dst, const void *src, size_t bytes) {
    if (!bytes || dst == src) return;
    TBC_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, tbc_g->stream));
    TBC_CHECK(cudaStreamSynchronize(tbc_g->stream));
}

static void cu_mem_set(void *p, int value, size_t bytes) {
    if (!bytes) return;
    TBC_CHECK(cudaMemsetAsync(p, value, bytes, tbc_g->stream));
    tbc_op_sync();
}

extern "C" void tb_cuda_fp32_gemm_cublas(int on) {
    if (tbc_g) tbc_g->fp32_cublas = on != 0;
}

extern "C" void tb_cuda_force_plain_attention(int on) {
    if (tbc_g) tbc_g->attn_plain = on != 0;
}

extern "C" void tb_cuda_tensor_core_tiles(int on) {
    if (tbc_g) tbc_g->tc_tiles = on == 1 ? TB_CUDA_TC_ATTN | TB_CUDA_TC_RET : on & (TB_CUDA_TC_ATTN | TB_CUDA_TC_RET);
}

extern "C" void tb_cuda_set_sync(int on) {
    if (tbc_g) {
        TBC_CHECK(cudaStreamSynchronize(tbc_g->stream));
        tbc_g->sync_ops = on != 0;
    }
}

/* bf16 needs sm_80+; fp16 tensor-core products need sm_70+ (older GPUs, such as the
 * P40, still run the fp16 mode: cuBLAS then computes without tensor cores). AUTO: bf16
 * where the GPU has it, else fp16. */
static int cu_set_precision(int mode) {
    if (mode == TB_PREC_AUTO) mode = tbc_g->cc_major >= 8 ? TB_PREC_BF16 : TB_PREC_FP16;
    if (mode == TB_PREC_BF16 && tbc_g->cc_major < 8) mode = TB_PREC_FP32;
    if (mode != TB_PREC_BF16 && mode != TB_PREC_FP16) mode = TB_PREC_FP32;
    TBC_CHECK(cudaStreamSynchronize(tbc_g->stream));
    tbc_g->prec = mode;
    return mode;
}

void tbc_ops_core_init(tb_ops_core *ops) {
    ops->host_memory = 0;
    ops->mem_alloc = cu_mem_alloc;
    ops->mem_free = cu_mem_free;
    ops->to_device = cu_mem_copy;
    ops->to_host = cu_mem_copy;
    ops->mem_set = cu_mem_set;
    ops->gemm = tbc_gemm;
    ops->set_precision = cu_set_precision;
    ops->mem_info = cu_mem_info;
    ops->fill = cu_fill;
    ops->copy = cu_copy;
    ops->axpy = cu_axpy;
    ops->scale = cu_scale;
    ops->axpby = cu_axpby;
    ops->sumsq = cu_sumsq;
    ops->sumsq_many = cu_sumsq_many;
    ops->all_finite = cu_all_finite;
    ops->adamw = cu_adamw;
}
