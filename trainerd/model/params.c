#include "params.h"
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "tb_rng.h"

typedef struct builder {
    tb_params *p;
    int cap;
    int oom;
} builder;

static int add(builder *b, int group, int layer, int bitlinear, int init, double a, double bb,
               int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 10, 11)));

static int add(builder *b, int group, int layer, int bitlinear, int init, double a, double bb,
               int ndim, const int64_t *shape, const char *fmt, ...) {
    tb_params *p = b->p;
    if (p->count == b->cap) {
        int nc = b->cap ? 2 * b->cap : 64;
        tb_tensor *nt = realloc(p->t, (size_t)nc * sizeof *nt);
        if (!nt) {
            b->oom = 1;
            return -1;
        }
        p->t = nt;
        b->cap = nc;
    }
    tb_tensor *t = &p->t[p->count];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = shape[i];
        t->numel *= (size_t)shape[i];
    }
    t->offset = p->total;
    p->total += t->numel;
    t->bitlinear = bitlinear;
    if (bitlinear) {
        t->codes_offset = p->codes_total;
        p->codes_total += t->numel;
        t->scale_index = p->scales_total++;
    } else {
        t->codes_offset = t->scale_index = SIZE_MAX;
    }
    t->group = group;
    t->init = init;
    t->init_a = a;
    t->init_b = bb;
    t->layer = layer;
    return p->count++;
}

/* A Linear weight [out, in] with PyTorch's default init U(±1/sqrt(in)). */
static int linear(builder *b, int group, int layer, int bitlinear, int64_t out, int64_t in,
                  const char *name) {
    return add(b, group, layer, bitlinear, TB_INIT_UNIFORM, 1.0 / sqrt((double)in), 0, 2,
               (const int64_t[]){out, in}, "%s", name);
}

static int vec(builder *b, int group, int layer, int init, double a, int64_t n, const char *name) {
    return add(b, group, layer, 0, init, a, 0, 1, (const int64_t[]){n}, "%s", name);
}

static void norm(builder *b, tb_norm_ix *ix, int layer, const char *prefix) {
    int64_t C = b->p->cfg.hidden_size;
    char nm[160];
    ix->alpha = ix->s = ix->gamma = ix->beta = ix->weight = ix->bias = -1;
#define NV(field, n, val, suffix)                                             \
    do {                                                                      \
        snprintf(nm, sizeof nm, "%s.%s", prefix, suffix);                     \
        ix->field = vec(b, TB_GROUP_NORMS, layer, TB_INIT_CONST, val, n, nm); \
    } while (0)
    switch (b->p->cfg.norm_type) {
    case TB_CFG_NORM_DYNAMIC_TANH:
        NV(alpha, C, 1.0, "alpha");
        NV(beta, C, 0.0, "beta");
        break;
    case TB_CFG_NORM_DYT:
        NV(alpha, 1, 0.5, "alpha");
        NV(gamma, C, 1.0, "gamma");
        NV(beta, C, 0.0, "beta");
        break;
    case TB_CFG_NORM_DERF:
        NV(alpha, 1, 1.0, "alpha");
        NV(s, 1, 0.0, "s");
        NV(gamma, C, 1.0, "gamma");
        NV(beta, C, 0.0, "beta");
        break;
    case TB_CFG_NORM_LAYER_NORM:
        NV(weight, C, 1.0, "weight");
        NV(bias, C, 0.0, "bias");
        break;
    default: /* TB_CFG_NORM_RMS_NORM */
        NV(weight, C, 1.0, "weight");
        break;
    }
#undef NV
}

static void layer_ix_clear(tb_layer_ix *L) {
    int *fields[] = {&L->q,      &L->k,      &L->v,      &L->g,     &L->o,       &L->qkv,
                     &L->in_proj, &L->conv_w, &L->conv_b, &L->x_proj, &L->dt_w,   &L->dt_b,
                     &L->a_log,  &L->d,      &L->mem_q,  &L->mem_k, &L->mem_v,   &L->mem_decay,
                     &L->router, &L->ffn_up, &L->ffn_down};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) *fields[i] = -1;
    L->mnorm = (tb_norm_ix){-1, -1, -1, -1, -1, -1};
    L->expert_up = L->expert_down = NULL;
}

static void build_layer(builder *b, int i) {
    const tb_model_config *mc = &b->p->cfg;
    tb_layer_ix *L = &b->p->layers[i];
    int64_t C = mc->hidden_size, H = mc->num_heads, hs = C / H;
    int bit = mc->use_bitnet != 0;
    char pre[32], nm[128];
    layer_ix_clear(L);
    L->mixer = tb_mc_layer_mixer(mc, i);
    snprintf(pre, sizeof pre, "layers.%d", i);
#define NAME(...) (snprintf(nm, sizeof nm, __VA_ARGS__), nm)
    norm(b, &L->norm1, i, NAME("%s.norm1", pre));
    norm(b, &L->norm2, i, NAME("%s.norm2", pre));
    switch (L->mixer) {
    case TB_MIXER_TITAN_ATTN:
    case TB_MIXER_STANDARD_ATTN:
    case TB_MIXER_SIGMOID_ATTN: {
        int64_t kvc = tb_mc_kv_heads(mc) * hs;
        int g = TB_GROUP_ATTENTION;
        L->q = linear(b, g, i, bit, C, C, NAME("%s.mixer.q_proj.weight", pre));
        L->k = linear(b, g, i, bit, kvc, C, NAME("%s.mixer.k_proj.weight", pre));
        L->v = linear(b, g, i, bit, kvc, C, NAME("%s.mixer.v_proj.weight", pre));
        L->o = linear(b, g, i, bit, C, C, NAME("%s.mixer.out_proj.weight", pre));
        break;
    }
    case TB_MIXER_ODE: {
        int g = TB_GROUP_ODE;
        L->qkv = linear(b, g, i, bit, 3 * C, C, NAME("%s.mixer.ode_func.qkv.weight", pre));
        L->o = linear(b, g, i, bit, C, C, NAME("%s.mixer.ode_func.out_proj.weight", pre));
        norm(b, &L->mnorm, i, NAME("%s.mixer.ode_func.norm", pre));
        break;
    }
    case TB_MIXER_RETNET: {
        int g = TB_GROUP_RETNET;
        L->q = linear(b, g, i, bit, C, C, NAME("%s.mixer.q_proj.weight", pre));
        L->k = linear(b, g, i, bit, C, C, NAME("%s.mixer.k_proj.weight", pre));
        L->v = linear(b, g, i, bit, C, C, NAME("%s.mixer.v_proj.weight", pre));
        L->g = linear(b, g, i, bit, C, C, NAME("%s.mixer.g_proj.weight", pre));
        L->o = linear(b, g, i, bit, C, C, NAME("%s.mixer.out_proj.weight", pre));
        norm(b, &L->mnorm, i, NAME("%s.mixer.norm", pre));
        break;
    }
    default: { /* TB_MIXER_MAMBA (MODEL.md section 6) */
        int g = TB_GROUP_MAMBA;
        int64_t Di = 2 * C, R = tb_mc_dt_rank(mc), N = mc->mamba_d_state, k = mc->mamba_d_conv;
        L->in_proj = linear(b, g, i, bit, 2 * Di, C, NAME("%s.mixer.in_proj.weight", pre));
        L->conv_w = add(b, g, i, 0, TB_INIT_UNIFORM, 1.0 / sqrt((double)k), 0, 3,
                        (const int64_t[]){Di, 1, k}, "%s.mixer.conv1d.weight", pre);
        L->conv_b = vec(b, g, i, TB_INIT_UNIFORM, 1.0 / sqrt((double)k), Di,
                        NAME("%s.mixer.conv1d.bias", pre));
        L->x_proj = linear(b, g, i, bit, R + 2 * N, Di, NAME("%s.mixer.x_proj.weight", pre));
        L->dt_w = linear(b, g, i, 0, Di, R, NAME("%s.mixer.dt_proj.weight", pre));
        L->dt_b = add(b, g, i, 0, TB_INIT_DT_BIAS, 1e-3, 1e-1, 1, (const int64_t[]){Di},
                      "%s.mixer.dt_proj.bias", pre);
        L->a_log = add(b, g, i, 0, TB_INIT_A_LOG, 0, 0, 2, (const int64_t[]){Di, N},
                       "%s.mixer.A_log", pre);
        L->d = vec(b, g, i, TB_INIT_CONST, 1.0, Di, NAME("%s.mixer.D", pre));
        if (mc->titan_memory) {
            L->mem_q = linear(b, g, i, bit, C, C, NAME("%s.mixer.mem_q_proj.weight", pre));
            L->mem_k = linear(b, g, i, bit, C, C, NAME("%s.mixer.mem_k_proj.weight", pre));
            L->mem_v = linear(b, g, i, bit, C, C, NAME("%s.mixer.mem_v_proj.weight", pre));
            L->mem_decay = vec(b, g, i, TB_INIT_CONST, 2.2, H, NAME("%s.mixer.mem_decay", pre));
        }
        L->o = linear(b, g, i, bit, C, Di, NAME("%s.mixer.out_proj.weight", pre));
        break;
    }
    }
    int64_t F = tb_mc_ffn(mc);
    int g = TB_GROUP_OTHER;
    if (mc->use_moe) {
        int64_t E = mc->num_experts;
        /* Router: plain linear, fp32 (MODEL.md section 7). */
        L->router = linear(b, g, i, 0, E, C, NAME("%s.router.weight", pre));
        L->expert_up = malloc((size_t)E * sizeof(int));
        L->expert_down = malloc((size_t)E * sizeof(int));
        if (!L->expert_up || !L->expert_down) {
            b->oom = 1;
            return;
        }
        for (int64_t e = 0; e < E; e++) {
            L->expert_up[e] = linear(b, g, i, bit, F, C, NAME("%s.experts.%lld.0.weight", pre, (long long)e));
            L->expert_down[e] = linear(b, g, i, bit, C, F, NAME("%s.experts.%lld.2.weight", pre, (long long)e));
        }
    } else {
        L->ffn_up = linear(b, g, i, bit, F, C, NAME("%s.ffn.0.weight", pre));
        L->ffn_down = linear(b, g, i, bit, C, F, NAME("%s.ffn.2.weight", pre));
    }
#undef NAME
}

int tb_params_build(tb_params *p, const tb_model_config *mc, tb_err *err) {
    memset(p, 0, sizeof *p);
    p->cfg = *mc;
    if (p->cfg.pattern_len < 1 && tb_model_config_finish(&p->cfg, err)) return -1;
    const tb_model_config *c = &p->cfg;
    builder b = {p, 0, 0};
    int64_t V = c->vocab_size, C = c->hidden_size;
    int bit = c->use_bitnet != 0;
    p->emb_conv_w = p->emb_conv_b = p->emb_proj = -1;
    p->layers = calloc((size_t)c->num_layers, sizeof *p->layers);
    if (!p->layers) return tb_err_set(err, "params: out of memory");
    int g = TB_GROUP_EMBEDDINGS;
    if (c->use_factorized_embedding) {
        int64_t Cl = c->factorized_embedding_dim, k = c->embedding_conv_kernel;
        p->emb = add(&b, g, -1, 0, TB_INIT_NORMAL, 1.0, 0, 2, (const int64_t[]){V, Cl},
                     "emb.embedding.weight");
        if (c->use_embedding_conv) {
            double bound = 1.0 / sqrt((double)(Cl * k));
            p->emb_conv_w = add(&b, g, -1, 0, TB_INIT_UNIFORM, bound, 0, 3,
                                (const int64_t[]){Cl, Cl, k}, "emb.conv.weight");
            p->emb_conv_b = vec(&b, g, -1, TB_INIT_UNIFORM, bound, Cl, "emb.conv.bias");
        }
        p->emb_proj = linear(&b, g, -1, bit, C, Cl, "emb.proj.weight");
    } else {
        p->emb = add(&b, g, -1, 0, TB_INIT_NORMAL, 1.0, 0, 2, (const int64_t[]){V, C},
                     "emb.weight");
    }
    for (int i = 0; i < c->num_layers; i++) build_layer(&b, i);
    norm(&b, &p->final_norm, -1, "final_norm");
    p->head = linear(&b, TB_GROUP_OTHER, -1, bit, V, C, "head.weight");
    if (b.oom) {
        tb_params_free(p);
        return tb_err_set(err, "params: out of memory building the registry");
    }
    return 0;
}

int tb_params_alloc(tb_params *p, tb_err *err) {
    size_t n = p->total ? p->total : 1;
    p->param = calloc(n, sizeof(real));
    p->grad = calloc(n, sizeof(real));
    p->m = calloc(n, sizeof(real));
    p->v = calloc(n, sizeof(real));
    p->codes = calloc(p->codes_total ? p->codes_total : 1, 1);
    p->scales = calloc(p->scales_total ? p->scales_total : 1, sizeof(real));
    if (!p->param || !p->grad || !p->m || !p->v || !p->codes || !p->scales)
        return tb_err_set(err, "params: cannot allocate 4 x %zu reals", p->total);
    return 0;
}

void tb_params_free(tb_params *p) {
    if (p->layers)
        for (int i = 0; i < p->cfg.num_layers; i++) {
            free(p->layers[i].expert_up);
            free(p->layers[i].expert_down);
        }
    free(p->layers);
    free(p->t);
    free(p->param);
    free(p->grad);
    free(p->m);
    free(p->v);
    free(p->codes);
    free(p->scales);
    memset(p, 0, sizeof *p);
}

void tb_params_init(tb_params *p, uint64_t seed) {
    for (int i = 0; i < p->count; i++) {
        const tb_tensor *t = &p->t[i];
        real *w = p->param + t->offset;
        tb_rng r;
        tb_rng_init(&r, seed, TB_RNG_INIT, (uint32_t)i, 0, 0);
        switch (t->init) {
        case TB_INIT_UNIFORM:
            for (size_t j = 0; j < t->numel; j++)
                w[j] = (real)((2 * tb_rng_uniform(&r) - 1) * t->init_a);
            break;
        case TB_INIT_NORMAL:
            for (size_t j = 0; j < t->numel; j++) w[j] = (real)(tb_rng_normal(&r) * t->init_a);
            break;
        case TB_INIT_CONST:
            for (size_t j = 0; j < t->numel; j++) w[j] = (real)t->init_a;
            break;
        case TB_INIT_A_LOG: {
            int64_t N = t->shape[1];
            for (size_t j = 0; j < t->numel; j++) w[j] = (real)log((double)(j % (size_t)N) + 1);
            break;
        }
        default: { /* TB_INIT_DT_BIAS: dt = exp(U(ln a, ln b)), bias = dt + log(-expm1(-dt)) */
            double la = log(t->init_a), lb = log(t->init_b);
            for (size_t j = 0; j < t->numel; j++) {
                double dt = exp(la + (lb - la) * tb_rng_uniform(&r));
                w[j] = (real)(dt + log(-expm1(-dt)));
            }
            break;
        }
        }
    }
}

int tb_params_find(const tb_params *p, const char *name) {
    for (int i = 0; i < p->count; i++)
        if (!strcmp(p->t[i].name, name)) return i;
    return -1;
}

int64_t tb_params_count(const tb_model_config *mc) {
    tb_params p;
    tb_err err;
    if (tb_params_build(&p, mc, &err)) return -1;
    int64_t n = (int64_t)p.total;
    tb_params_free(&p);
    return n;
}
