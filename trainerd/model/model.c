#include "model.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "../layers/loss.h"
#include "tb_clock.h"

/* Slots of Σ k1² per logical layer in ode_sq / ode_sums (one per ODE step). */
static size_t ode_slots(const tb_model_config *c) {
    return (size_t)(c->ode_steps > 0 ? c->ode_steps : 1);
}

/* ---- binding the registry to the layers' parameter structs ---- */

static tb_linear bind_linear(tb_model *m, int ix) {
    tb_linear l;
    memset(&l, 0, sizeof l);
    const tb_tensor *t = &m->p.t[ix];
    l.w = tb_params_w(&m->p, ix);
    l.dw = tb_params_dw(&m->p, ix);
    l.out = (int)t->shape[0];
    l.in = (int)t->shape[1];
    l.bitnet = t->bitlinear && m->cfg.use_bitnet;
    if (l.bitnet) {
        l.wq = m->p.codes + t->codes_offset;
        l.sw = m->p.scales + t->scale_index;
    }
    m->linears[m->nlinears++] = l;
    return l;
}

static tb_norm bind_norm(tb_model *m, const tb_norm_ix *ix) {
    tb_norm n;
    memset(&n, 0, sizeof n);
    n.type = (tb_norm_type)m->cfg.norm_type; /* same order (config.h, norm.h) */
    n.C = (int)m->cfg.hidden_size;
    const int order[6] = {ix->alpha, ix->s, ix->gamma, ix->beta, ix->weight, ix->bias};
    int k = 0;
    for (int i = 0; i < 6; i++)
        if (order[i] >= 0 && k < TB_NORM_MAX_PARAMS) {
            n.p[k] = tb_params_w(&m->p, order[i]);
            n.dp[k] = tb_params_dw(&m->p, order[i]);
            k++;
        }
    return n;
}

static tb_pos_kind pos_kind(int cfg_pos) {
    switch (cfg_pos) {
    case TB_CFG_POS_HOPE: return TB_POS_HOPE;
    case TB_CFG_POS_HOPE_HYPERBOLIC: return TB_POS_HOPE_HYPERBOLIC;
    case TB_CFG_POS_ROPE: return TB_POS_ROPE;
    default: return TB_POS_NONE;
    }
}

/* Whether the backend's attention recomputes P in its backward for head size hs. */
static int recomputes(const tb_backend *be, int hs) {
    return be->dense.attn_recomputes && be->dense.attn_recomputes(hs);
}

static int bind(tb_model *m, tb_err *err) {
    const tb_model_config *c = &m->cfg;
    tb_params *p = &m->p;
    int C = (int)c->hidden_size;
    m->linears = calloc((size_t)p->count, sizeof *m->linears);
    m->blocks = calloc((size_t)c->num_layers, sizeof *m->blocks);
    size_t nexp = c->use_moe ? 2 * (size_t)c->num_experts * (size_t)c->num_layers : 1;
    m->expert_linears = calloc(nexp, sizeof *m->expert_linears);
    if (!m->linears || !m->blocks || !m->expert_linears)
        return tb_err_set(err, "model: out of memory");
    /* embedding */
    tb_embedding *e = &m->emb;
    e->V = (int)c->vocab_size;
    e->C = C;
    e->factorized = c->use_factorized_embedding != 0;
    e->conv = e->factorized && c->use_embedding_conv;
    e->Cl = e->factorized ? (int)c->factorized_embedding_dim : C;
    e->k = (int)c->embedding_conv_kernel;
    e->table = tb_params_w(p, p->emb);
    e->dtable = tb_params_dw(p, p->emb);
    if (e->conv) {
        e->conv_w = tb_params_w(p, p->emb_conv_w);
        e->dconv_w = tb_params_dw(p, p->emb_conv_w);
        e->conv_b = tb_params_w(p, p->emb_conv_b);
        e->dconv_b = tb_params_dw(p, p->emb_conv_b);
    }
    if (e->factorized) e->proj = bind_linear(m, p->emb_proj);
    for (int i = 0; i < c->num_layers; i++) {
        const tb_layer_ix *L = &p->layers[i];
        tb_block *b = &m->blocks[i];
        b->mixer = L->mixer;
        b->n1 = bind_norm(m, &L->norm1);
        b->n2 = bind_norm(m, &L->norm2);
        switch (L->mixer) {
        case TB_MIXER_TITAN_ATTN:
        case TB_MIXER_STANDARD_ATTN:
        case TB_MIXER_SIGMOID_ATTN:
            b->attn.q = bind_linear(m, L->q);
            b->attn.k = bind_linear(m, L->k);
            b->attn.v = bind_linear(m, L->v);
            b->attn.o = bind_linear(m, L->o);
            b->attn.kind = L->mixer == TB_MIXER_TITAN_ATTN      ? TB_ATTN_TITAN
                           : L->mixer == TB_MIXER_STANDARD_ATTN ? TB_ATTN_STANDARD
                                                                : TB_ATTN_SIGMOID;
            b->attn.C = C;
            b->attn.H = (int)c->num_heads;
            b->attn.Hkv = (int)tb_mc_kv_heads(c);
            b->attn.pos = pos_kind(c->pos_encoding);
            b->attn.pos_base = c->hope_base;
            b->attn.pos_damping = c->hope_damping;
            b->attn.recompute_probs = b->attn.kind != TB_ATTN_SIGMOID &&
                                      recomputes(m->be, C / b->attn.H);
            break;
        case TB_MIXER_ODE:
            b->ode.norm = bind_norm(m, &L->mnorm);
            b->ode.qkv = bind_linear(m, L->qkv);
            b->ode.o = bind_linear(m, L->o);
            b->ode.C = C;
            b->ode.H = (int)c->num_heads;
            b->ode.steps = (int)c->ode_steps;
            b->ode.rk4 = c->ode_solver == TB_CFG_ODE_RK4;
            b->ode.recompute_probs = recomputes(m->be, C / b->ode.H);
            break;
        case TB_MIXER_RETNET:
            b->ret.q = bind_linear(m, L->q);
            b->ret.k = bind_linear(m, L->k);
            b->ret.v = bind_linear(m, L->v);
            b->ret.g = bind_linear(m, L->g);
            b->ret.o = bind_linear(m, L->o);
            b->ret.norm = bind_norm(m, &L->mnorm);
            b->ret.C = C;
            b->ret.H = (int)c->retention_heads;
            b->ret.bidirectional = c->retention_bidirectional != 0;
            break;
        default: { /* TB_MIXER_MAMBA */
            tb_mamba *mb = &b->mamba;
            mb->in_proj = bind_linear(m, L->in_proj);
            mb->x_proj = bind_linear(m, L->x_proj);
            mb->dt_proj = bind_linear(m, L->dt_w);
            mb->out_proj = bind_linear(m, L->o);
            mb->conv_w = tb_params_w(p, L->conv_w);
            mb->dconv_w = tb_params_dw(p, L->conv_w);
            mb->conv_b = tb_params_w(p, L->conv_b);
            mb->dconv_b = tb_params_dw(p, L->conv_b);
            mb->dt_b = tb_params_w(p, L->dt_b);
            mb->ddt_b = tb_params_dw(p, L->dt_b);
            mb->A_log = tb_params_w(p, L->a_log);
            mb->dA_log = tb_params_dw(p, L->a_log);
            mb->D = tb_params_w(p, L->d);
            mb->dD = tb_params_dw(p, L->d);
            mb->titan = c->titan_memory != 0;
            if (mb->titan) {
                mb->mem_q = bind_linear(m, L->mem_q);
                mb->mem_k = bind_linear(m, L->mem_k);
                mb->mem_v = bind_linear(m, L->mem_v);
                mb->mem_decay = tb_params_w(p, L->mem_decay);
                mb->dmem_decay = tb_params_dw(p, L->mem_decay);
            }
            mb->C = C;
            mb->Di = 2 * C;
            mb->N = (int)c->mamba_d_state;
            mb->R = (int)tb_mc_dt_rank(c);
            mb->k = (int)c->mamba_d_conv;
            mb->H = (int)c->num_heads;
            mb->state_every = m->be->seq.scan_state_every;
            break;
        }
        }
        int act = c->ffn_activation == TB_CFG_ACT_GELU ? TB_ACT_GELU : TB_ACT_SILU;
        int F = (int)tb_mc_ffn(c);
        b->use_moe = c->use_moe != 0;
        if (b->use_moe) {
            int E = (int)c->num_experts;
            if (E > TB_MOE_MAX_EXPERTS)
                return tb_err_set(err, "model.num_experts: %d exceeds %d", E, TB_MOE_MAX_EXPERTS);
            tb_moe *mo = &b->moe;
            mo->router = bind_linear(m, L->router);
            mo->up = m->expert_linears + (size_t)i * 2 * (size_t)E;
            mo->down = mo->up + E;
            for (int e = 0; e < E; e++) {
                mo->up[e] = bind_linear(m, L->expert_up[e]);
                mo->down[e] = bind_linear(m, L->expert_down[e]);
            }
            mo->C = C;
            mo->F = F;
            mo->E = E;
            mo->K = (int)c->top_k_experts;
            mo->act = act;
            mo->renormalize = c->moe_renormalize != 0;
            mo->capacity_factor = c->moe_capacity_factor;
            /* the fixed-capacity layout where reading the routing costs a host wait */
            mo->fixed_rows = !m->be->core.host_memory;
        } else {
            b->ffn.up = bind_linear(m, L->ffn_up);
            b->ffn.down = bind_linear(m, L->ffn_down);
            b->ffn.C = C;
            b->ffn.F = F;
            b->ffn.act = act;
        }
    }
    m->final_norm = bind_norm(m, &p->final_norm);
    m->head = bind_linear(m, p->head);
    return 0;
}

/* ---- sizes ---- */

static size_t mixer_act(const tb_block *b, int B, int T) {
    switch (b->mixer) {
    case TB_MIXER_ODE: return ode_act_count(&b->ode, B, T);
    case TB_MIXER_RETNET: return retention_act_count(&b->ret, B, T);
    case TB_MIXER_MAMBA: return mamba_act_count(&b->mamba, B, T);
    default: return attention_act_count(&b->attn, B, T);
    }
}

static size_t mixer_scratch(const tb_block *b, int B, int T) {
    switch (b->mixer) {
    case TB_MIXER_ODE: return ode_scratch_count(&b->ode, B, T);
    case TB_MIXER_RETNET: return retention_scratch_count(&b->ret, B, T);
    case TB_MIXER_MAMBA: return mamba_scratch_count(&b->mamba, B, T);
    default: return attention_scratch_count(&b->attn, B, T);
    }
}

static size_t ffn_act(const tb_block *b, size_t n) {
    return b->use_moe ? moe_act_count(&b->moe, n) : ffn_act_count(&b->ffn, n);
}

static size_t ffn_scratch(const tb_block *b, size_t n) {
    return b->use_moe ? moe_scratch_count(&b->moe, n) : ffn_scratch_count(&b->ffn, n);
}

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }

static int mixer_part(int mixer) {
    switch (mixer) {
    case TB_MIXER_ODE: return TB_ARENA_ODE;
    case TB_MIXER_RETNET: return TB_ARENA_RETNET;
    case TB_MIXER_MAMBA: return TB_ARENA_MAMBA;
    default: return TB_ARENA_ATTN;
    }
}

const char *const tb_arena_part_names[TB_ARENA_PARTS] = {
    "layer io", "ode", "retnet", "mamba", "attention", "ffn", "recompute", "head", "backward"};

/* ---- memory through the backend (ops_core.h's memory interface) ---- */

/* The registry's flat buffers in the backend's memory (zeroed), as tb_params_alloc does
 * on the host. */
static int params_alloc(tb_params *p, const tb_backend *be, tb_err *err) {
    size_t n = p->total ? p->total : 1;
    p->param = be->core.mem_alloc(n * sizeof(real));
    p->grad = be->core.mem_alloc(n * sizeof(real));
    p->m = be->core.mem_alloc(n * sizeof(real));
    p->v = be->core.mem_alloc(n * sizeof(real));
    p->codes = be->core.mem_alloc(p->codes_total ? p->codes_total : 1);
    p->scales = be->core.mem_alloc((p->scales_total ? p->scales_total : 1) * sizeof(real));
    if (!p->param || !p->grad || !p->m || !p->v || !p->codes || !p->scales)
        return tb_err_set(err, "params: cannot allocate 4 x %zu reals on backend %s", p->total,
                          be->name);
    return 0;
}

static void params_release(tb_params *p, const tb_backend *be) {
    void *bufs[6] = {p->param, p->grad, p->m, p->v, p->codes, p->scales};
    for (int i = 0; i < 6; i++)
        if (bufs[i]) be->core.mem_free(bufs[i]);
    p->param = p->grad = p->m = p->v = p->scales = NULL;
    p->codes = NULL;
}

/* Backend-side copies of the batch (ids, labels, key mask) for backends whose memory the
 * host cannot hand over directly; they follow the nlogical L_bal slots of m->lbal. */
static size_t stage_reals(size_t ntok) {
    return (2 * ntok * sizeof(int32_t) + ntok + sizeof(real) - 1) / sizeof(real);
}
static int32_t *stage_ids(const tb_model *m) { return (int32_t *)(m->lbal + m->nlogical); }
static int32_t *stage_labels(const tb_model *m) {
    return stage_ids(m) + (size_t)m->maxB * (size_t)m->maxT;
}
static uint8_t *stage_mask(const tb_model *m) {
    return (uint8_t *)(stage_labels(m) + (size_t)m->maxB * (size_t)m->maxT);
}

/* The batch as the ops see it: the caller's pointers on a host-memory backend, else the
 * staged copies of the last forward. */
static tb_batch batch_view(const tb_model *m, const tb_batch *bt) {
    if (m->be->core.host_memory) return *bt;
    tb_batch v = *bt;
    v.ids = stage_ids(m);
    v.labels = stage_labels(m);
    v.key_mask = bt->key_mask ? stage_mask(m) : NULL;
    return v;
}

int tb_model_create(tb_model *m, const tb_model_config *mc, const tb_backend *be, int maxB,
                    int maxT, tb_err *err) {
    memset(m, 0, sizeof *m);
    m->be = be;
    m->cfg = *mc;
    if (m->cfg.pattern_len < 1 && tb_model_config_finish(&m->cfg, err)) return -1;
    if (maxB < 1 || maxT < 1) return tb_err_set(err, "model: bad batch shape %d x %d", maxB, maxT);
    m->maxB = maxB;
    m->maxT = maxT;
    if (tb_params_build(&m->p, &m->cfg, err) || params_alloc(&m->p, be, err)) goto fail;
    if (bind(m, err)) goto fail;
    const tb_model_config *c = &m->cfg;
    int B = maxB, T = maxT;
    size_t n = (size_t)B * T, C = (size_t)c->hidden_size, V = (size_t)c->vocab_size;
    size_t nact = norm_act_count((tb_norm_type)c->norm_type, n);
    m->nlogical = (int)(c->num_layers * c->num_loops);
    m->ls = calloc((size_t)m->nlogical, sizeof *m->ls);
    /* Σ k1² of each (ODE layer, step): queued into backend memory by the forward, read
     * once at its end (ode_sq, then the host copy ode_sums) */
    size_t nsq = (size_t)m->nlogical * ode_slots(c);
    m->ode_sums = calloc(nsq ? nsq : 1, sizeof *m->ode_sums);
    m->ode_sq = be->core.mem_alloc((nsq ? nsq : 1) * sizeof(double));
    /* L_bal slots (written by an op) and, off the host, the batch's staging area. */
    size_t nstage = be->core.host_memory ? 0 : stage_reals(n);
    m->lbal = be->core.mem_alloc(((size_t)m->nlogical + nstage) * sizeof *m->lbal);
    if (!m->ls || !m->ode_sums || !m->ode_sq || !m->lbal) {
        tb_err_set(err, "model: out of memory");
        goto fail;
    }
    /* Measure pass: offsets into one arena, then a single allocation. */
    size_t off = 0;
    size_t o_emb = off; off += embedding_act_count(&m->emb, B, T);
    size_t o_layers = off;
    /* With activation_recompute each logical layer keeps its input x; the rest of a
     * layer's activations share one region sized for the largest block, written by the
     * forward and again, layer by layer, by the backward's replay. The norm outputs u =
     * N1(x) and v = N2(h) of every layer share two buffers: the backward rebuilds them
     * from x and h (an element-wise norm, the same bits) instead of keeping 2 n C reals
     * per logical layer. */
    m->rec = calloc((size_t)(m->nlogical ? m->nlogical : 1), sizeof *m->rec);
    if (!m->rec) {
        tb_err_set(err, "model: out of memory");
        goto fail;
    }
    int any_rec = 0;
    m->rec_last = -1;
    size_t shared = 0, *part = m->arena_parts;
    for (int l = 0; l < m->nlogical; l++) {
        const tb_block *b = &m->blocks[l % c->num_layers];
        m->rec[l] = c->activation_recompute == TB_CFG_RECOMPUTE_ALL ||
                    (c->activation_recompute == TB_CFG_RECOMPUTE_ODE && b->mixer == TB_MIXER_ODE);
        size_t mix = mixer_act(b, B, T), ffn = ffn_act(b, n), inner = n * C + 2 * nact + mix + ffn;
        if (m->rec[l]) {
            any_rec = 1;
            m->rec_last = l;
            shared = max_sz(shared, inner);
        } else {
            part[TB_ARENA_LAYER_IO] += n * C + 2 * nact;
            part[mixer_part(b->mixer)] += mix;
            part[TB_ARENA_FFN] += ffn;
        }
        part[TB_ARENA_LAYER_IO] += n * C;
        off += m->rec[l] ? n * C : n * C + inner;
    }
    size_t o_shared = off;
    if (any_rec) off += shared;
    part[TB_ARENA_RECOMPUTE] = any_rec ? shared : 0;
    size_t o_uv = off; off += 2 * n * C;
    part[TB_ARENA_LAYER_IO] += 2 * n * C;
    part[TB_ARENA_HEAD] = off; /* minus the start, below */
    size_t o_xf = off; off += n * C;
    size_t o_fn = off; off += nact;
    size_t o_yf = off; off += n * C;
    size_t o_head = off; off += linear_act_count(&m->head, n);
    size_t o_logits = off; off += n * V;
    size_t o_loss = off; off += loss_act_count(n);
    part[TB_ARENA_HEAD] = off - part[TB_ARENA_HEAD] + (o_layers - o_emb);
    /* dlogits: the logits' own buffer (dense.xent_bwd writes it in place: the logits are
     * not read after the loss's backward) */
    size_t o_d = off; off += 4 * n * C;
    size_t scr = max_sz(embedding_scratch_count(&m->emb, B, T), linear_scratch_count(&m->head, n));
    for (int i = 0; i < c->num_layers; i++) {
        scr = max_sz(scr, mixer_scratch(&m->blocks[i], B, T));
        scr = max_sz(scr, ffn_scratch(&m->blocks[i], n));
    }
    off = (off + 3) & ~(size_t)3; /* 16-byte aligned: the MoE's expert operands live there */
    size_t o_scr = off; off += scr;
    part[TB_ARENA_BACKWARD] = off - o_d;
    m->arena_count = off;
    m->arena = be->core.mem_alloc((off ? off : 1) * sizeof(real));
    if (!m->arena) {
        tb_err_set(err, "model: cannot allocate the %zu-real activation arena", off);
        goto fail;
    }
    real *a = m->arena;
    m->emb_act = a + o_emb;
    off = o_layers;
    for (int l = 0; l < m->nlogical; l++) {
        const tb_block *b = &m->blocks[l % c->num_layers];
        tb_lstore *s = &m->ls[l];
        int rec = m->rec[l];
        s->x = a + off, off += n * C;
        size_t keep = off;
        if (rec) off = o_shared;
        s->n1act = a + off, off += nact;
        s->u = a + o_uv;
        s->mact = a + off, off += mixer_act(b, B, T);
        s->h = a + off, off += n * C;
        s->n2act = a + off, off += nact;
        s->v = a + o_uv + n * C;
        s->fact = a + off, off += ffn_act(b, n);
        if (rec) off = keep;
    }
    m->x_final = a + o_xf;
    m->fn_act = a + o_fn;
    m->y_final = a + o_yf;
    m->head_act = a + o_head;
    m->logits = a + o_logits;
    m->loss_act = a + o_loss;
    m->dlogits = m->logits;
    m->dx = a + o_d;
    m->dh = m->dx + n * C;
    m->du = m->dh + n * C;
    m->dv = m->du + n * C;
    m->scratch = a + o_scr;
    return 0;
fail:
    tb_model_free(m);
    return -1;
}

void tb_model_free(tb_model *m) {
    if (m->be) {
        if (!m->be->core.host_memory) attention_release_tables(m->be);
        params_release(&m->p, m->be);
        if (m->lbal) m->be->core.mem_free(m->lbal);
        if (m->ode_sq) m->be->core.mem_free(m->ode_sq);
        if (m->arena) m->be->core.mem_free(m->arena);
    }
    tb_params_free(&m->p);
    free(m->linears);
    free(m->blocks);
    free(m->ls);
    free(m->rec);
    free(m->ode_sums);
    free(m->expert_linears);
    memset(m, 0, sizeof *m);
}

size_t tb_model_arena_bytes(const tb_model *m) { return m->arena_count * sizeof(real); }

size_t tb_model_arena_part_bytes(const tb_model *m, int part) {
    return part >= 0 && part < TB_ARENA_PARTS ? m->arena_parts[part] * sizeof(real) : 0;
}

/* Every BitLinear's codes and scale from its weights (after each optimizer step): one
 * bitlinear_quant_w_many for all of them (one at a time if the range table cannot be
 * allocated). */
void tb_model_refresh(tb_model *m) {
    tb_quant_w_range *r = malloc((size_t)(m->nlinears > 0 ? m->nlinears : 1) * sizeof *r);
    int n = 0;
    for (int i = 0; i < m->nlinears; i++) {
        const tb_linear *l = &m->linears[i];
        if (!l->bitnet) continue;
        if (!r) {
            linear_refresh(m->be, l);
            continue;
        }
        r[n].w_off = (size_t)(l->w - m->p.param);
        r[n].code_off = (size_t)(l->wq - m->p.codes);
        r[n].count = (size_t)l->in * (size_t)l->out;
        r[n].scale = (size_t)(l->sw - m->p.scales);
        n++;
    }
    if (r && n) m->be->dense.bitlinear_quant_w_many(m->p.codes, m->p.scales, m->p.param, r, n);
    free(r);
}

void tb_model_init(tb_model *m, uint64_t seed) {
    const tb_backend *be = m->be;
    size_t bytes = (m->p.total ? m->p.total : 1) * sizeof(real);
    if (be->core.host_memory) {
        tb_params_init(&m->p, seed);
    } else {
        /* Initialise on the host, then one copy to the backend (whose memory the host
         * cannot write). */
        real *host = malloc(bytes);
        if (!host) {
            fprintf(stderr, "model init: out of host memory for the %zu-byte staging buffer\n",
                    bytes);
            abort();
        }
        real *dev = m->p.param;
        m->p.param = host;
        tb_params_init(&m->p, seed);
        m->p.param = dev;
        be->core.to_device(dev, host, m->p.total * sizeof(real));
        free(host);
    }
    tb_model_refresh(m);
}

const tb_block *tb_model_block(const tb_model *m, int physical) { return &m->blocks[physical]; }

/* ---- phase timing ---- */

const char *const tb_phase_names[TB_PHASE_COUNT] = {"embedding", "norms", "ode", "retnet",
                                                    "mamba", "attention", "ffn", "head+loss"};

void tb_model_profile(tb_model *m, int on) {
    m->profile = on;
    memset(m->prof, 0, sizeof m->prof);
}

/* Waits for the backend's queued work (a one-byte read), then charges the time since *t
 * to the phase and restarts *t. */
static int mixer_phase(int mixer) {
    switch (mixer) {
    case TB_MIXER_ODE: return TB_PHASE_ODE;
    case TB_MIXER_RETNET: return TB_PHASE_RETNET;
    case TB_MIXER_MAMBA: return TB_PHASE_MAMBA;
    default: return TB_PHASE_ATTN;
    }
}

static void phase_end(tb_model *m, int dir, int phase, double *t) {
    if (!m->profile) return;
    unsigned char b;
    if (!m->be->core.host_memory) m->be->core.to_host(&b, m->arena, 1);
    double now = tb_clock_mono_s();
    m->prof[dir][phase] += now - *t;
    *t = now;
}

/* Logical layers whose L_bal the forward reads in one copy (more: one copy each). */
#define TB_MAX_LOGICAL_LAYERS 256

/* ---- forward ---- */

static tb_dropout layer_drop(const tb_model *m, uint32_t layer) {
    tb_dropout d = {(float)m->cfg.dropout, m->drop.seed, m->drop.counter, layer, m->drop.enabled};
    return d;
}

/* Logical layer l from its input ls[l].x to out: norm, mixer, residual, norm, FFN,
 * residual. replay = 1: the backward's recompute (activation_recompute), timed as
 * backward and leaving the forward's L_ode record alone; every other result is the
 * forward's bit for bit (the ops are deterministic and dropout is keyed by step and
 * layer). */
static void layer_forward(tb_model *m, const tb_batch *bt, int l, real *out, int replay, double *tp) {
    const tb_backend *be = m->be;
    const tb_model_config *c = &m->cfg;
    int B = m->B, T = m->T;
    size_t n = (size_t)B * T, C = (size_t)c->hidden_size;
    const tb_block *b = &m->blocks[l % c->num_layers];
    tb_lstore *s = &m->ls[l];
    norm_forward(be, s->u, s->n1act, s->x, &b->n1, n);
    phase_end(m, replay, TB_PHASE_NORMS, tp);
    tb_dropout dl = layer_drop(m, (uint32_t)l);
    /* mixer output goes to h, then h += x (residual) */
    switch (b->mixer) {
    case TB_MIXER_ODE: {
        /* a replay writes the same sums again */
        ode_forward(be, s->h, s->mact, m->scratch, s->u, &b->ode, bt->key_mask, &dl, B, T,
                    m->ode_sq + (size_t)l * ode_slots(c));
        break;
    }
    case TB_MIXER_RETNET:
        retention_forward(be, s->h, s->mact, s->u, &b->ret, B, T);
        break;
    case TB_MIXER_MAMBA:
        mamba_forward(be, s->h, s->mact, s->u, &b->mamba, B, T);
        break;
    default:
        attention_forward(be, s->h, s->mact, s->u, &b->attn, bt->key_mask, &dl, l, B, T);
        break;
    }
    be->core.axpy(s->h, R(1.0), s->x, n * C);
    phase_end(m, replay, mixer_phase(b->mixer), tp);
    norm_forward(be, s->v, s->n2act, s->h, &b->n2, n);
    phase_end(m, replay, TB_PHASE_NORMS, tp);
    if (b->use_moe) moe_forward(be, out, &m->lbal[l], s->fact, m->scratch, s->v, &b->moe, n);
    else ffn_forward(be, out, s->fact, s->v, &b->ffn, n);
    be->core.axpy(out, R(1.0), s->h, n * C);
    phase_end(m, replay, TB_PHASE_FFN, tp);
}

int tb_model_forward(tb_model *m, const tb_batch *bt, const tb_dropout_ctx *d,
                     tb_fwd_result *res, tb_err *err) {
    const tb_backend *be = m->be;
    const tb_model_config *c = &m->cfg;
    int B = bt->B, T = bt->T;
    if (B < 1 || T < 1 || B > m->maxB || T > m->maxT || (size_t)B * T > (size_t)m->maxB * m->maxT)
        return tb_err_set(err, "model: batch %d x %d exceeds the arena's %d x %d", B, T, m->maxB,
                          m->maxT);
    size_t n = (size_t)B * T;
    int V = (int)c->vocab_size;
    if (embedding_check_ids(err, bt->ids, n, V)) return -1;
    if (loss_check_labels(err, bt->labels, n, V)) return -1;
    if (!be->core.host_memory) {
        be->core.to_device(stage_ids(m), bt->ids, n * sizeof(int32_t));
        be->core.to_device(stage_labels(m), bt->labels, n * sizeof(int32_t));
        if (bt->key_mask) be->core.to_device(stage_mask(m), bt->key_mask, n);
    }
    const tb_batch bv = batch_view(m, bt);
    bt = &bv;
    m->B = B;
    m->T = T;
    if (d) m->drop = *d;
    else memset(&m->drop, 0, sizeof m->drop);
    tb_dropout de = layer_drop(m, TB_DROPOUT_LAYER_EMB);
    real *x0 = m->nlogical ? m->ls[0].x : m->x_final;
    double tp = m->profile ? tb_clock_mono_s() : 0;
    embedding_forward(be, x0, m->emb_act, bt->ids, &m->emb, &de, B, T);
    phase_end(m, 0, TB_PHASE_EMBED, &tp);
    double ode_total = 0, bal_total = 0;
    int n_moe = 0;
    m->n_ode_evals = 0;
    for (int l = 0; l < m->nlogical; l++) {
        const tb_block *b = &m->blocks[l % c->num_layers];
        layer_forward(m, bt, l, l + 1 < m->nlogical ? m->ls[l + 1].x : m->x_final, 0, &tp);
        if (b->mixer == TB_MIXER_ODE) m->n_ode_evals++;
    }
    norm_forward(be, m->y_final, m->fn_act, m->x_final, &m->final_norm, n);
    linear_forward(be, m->logits, m->head_act, m->y_final, &m->head, n);
    tb_ce_result ce;
    loss_forward(be, &ce, m->loss_act, m->logits, bt->labels, n, V);
    /* L_bal of every MoE layer in one copy after the whole forward (the head's loss
     * included) is queued: a GPU backend waits once, not once per layer; summed in layer
     * order as before */
    real lb_all[TB_MAX_LOGICAL_LAYERS];
    if (m->nlogical > 0 && m->nlogical <= TB_MAX_LOGICAL_LAYERS)
        be->core.to_host(lb_all, m->lbal, (size_t)m->nlogical * sizeof *m->lbal);
    for (int l = 0; l < m->nlogical; l++) {
        const tb_block *b = &m->blocks[l % c->num_layers];
        if (!b->use_moe) continue;
        real lb;
        if (m->nlogical <= TB_MAX_LOGICAL_LAYERS) lb = lb_all[l];
        else be->core.to_host(&lb, &m->lbal[l], sizeof lb);
        bal_total += (double)lb;
        n_moe++;
    }
    /* L_ode's per-step sums of every ODE layer, likewise in one copy; summed in layer order */
    if (m->n_ode_evals) {
        size_t S = ode_slots(c);
        be->core.to_host(m->ode_sums, m->ode_sq, (size_t)m->nlogical * S * sizeof(double));
        for (int l = 0; l < m->nlogical; l++) {
            const tb_block *b = &m->blocks[l % c->num_layers];
            if (b->mixer == TB_MIXER_ODE) ode_total += ode_lode(m->ode_sums + (size_t)l * S, &b->ode, B, T);
        }
    }
    phase_end(m, 0, TB_PHASE_HEAD, &tp);
    tb_fwd_result r;
    memset(&r, 0, sizeof r);
    r.ce = ce.loss;
    r.accuracy = ce.accuracy;
    r.count = ce.count;
    r.correct = ce.correct;
    r.l_ode = m->n_ode_evals ? ode_total / ((double)m->n_ode_evals * (double)c->ode_steps) : 0;
    r.l_bal = n_moe ? bal_total / n_moe : 0;
    r.loss = r.ce + c->lambda_ode * r.l_ode + c->lambda_bal * r.l_bal;
    *res = r;
    return 0;
}

/* ---- backward ---- */

void tb_model_backward(tb_model *m, const tb_batch *bt, double grad_scale) {
    const tb_backend *be = m->be;
    const tb_model_config *c = &m->cfg;
    int B = m->B, T = m->T, V = (int)c->vocab_size;
    size_t n = (size_t)B * T, C = (size_t)c->hidden_size;
    /* Counted on the caller's labels: the staged copy is not host memory. */
    int64_t nsup = loss_count_labels(bt->labels, n, V);
    const tb_batch bv = batch_view(m, bt);
    bt = &bv;
    double tp = m->profile ? tb_clock_mono_s() : 0;
    loss_backward(be, m->dlogits, m->loss_act, m->logits, bt->labels, nsup, (real)grad_scale, n,
                  V);
    linear_backward_set(be, m->dh, m->scratch, m->dlogits, m->head_act, m->y_final, &m->head, n);
    norm_backward_to(be, m->dx, NULL, m->dh, m->fn_act, m->x_final, &m->final_norm, n);
    phase_end(m, 1, TB_PHASE_HEAD, &tp);
    real g_ode = m->n_ode_evals
                     ? (real)(grad_scale * c->lambda_ode / ((double)m->n_ode_evals * (double)c->ode_steps))
                     : R(0.0);
    /* Every logical layer evaluates the MoE once when use_moe. */
    real bal_scale = c->use_moe ? (real)(grad_scale * c->lambda_bal / m->nlogical) : R(0.0);
    /* m->dx holds dL/d(out) of the layer being walked. */
    for (int l = m->nlogical - 1; l >= 0; l--) {
        const tb_block *b = &m->blocks[l % c->num_layers];
        const tb_lstore *s = &m->ls[l];
        /* Recompute: the layer's activations again from its input (its output lands in
         * dv, which is cleared next); the last recomputed layer's are still in the shared
         * region from the forward. */
        int replayed = m->rec[l] && l != m->rec_last;
        if (replayed) layer_forward(m, bt, l, m->dv, 1, &tp);
        /* u and v of this layer again, unless the replay just wrote them */
        if (!replayed) {
            norm_forward(be, s->u, s->n1act, s->x, &b->n1, n);
            norm_forward(be, s->v, s->n2act, s->h, &b->n2, n);
            phase_end(m, 1, TB_PHASE_NORMS, &tp);
        }
        /* out = h + FFN(N2(h)) */
        if (b->use_moe) {
            moe_backward_set(be, m->dv, m->scratch, m->dx, bal_scale, s->fact, s->v, &b->moe, n);
        } else {
            be->core.fill(m->dv, R(0.0), n * C);
            ffn_backward(be, m->dv, m->scratch, m->dx, s->fact, s->v, &b->ffn, n);
        }
        phase_end(m, 1, TB_PHASE_FFN, &tp);
        norm_backward_to(be, m->dh, m->dx, m->dv, s->n2act, s->h, &b->n2, n);
        phase_end(m, 1, TB_PHASE_NORMS, &tp);
        /* h = x + Mixer(N1(x)) */
        be->core.fill(m->du, R(0.0), n * C);
        tb_dropout dl = layer_drop(m, (uint32_t)l);
        switch (b->mixer) {
        case TB_MIXER_ODE:
            ode_backward(be, m->du, m->scratch, m->dh, s->mact, s->u, &b->ode, bt->key_mask, &dl,
                         g_ode, B, T);
            break;
        case TB_MIXER_RETNET:
            retention_backward(be, m->du, m->scratch, m->dh, s->mact, s->u, &b->ret, B, T);
            break;
        case TB_MIXER_MAMBA:
            mamba_backward(be, m->du, m->scratch, m->dh, s->mact, s->u, &b->mamba, B, T);
            break;
        default:
            attention_backward(be, m->du, m->scratch, m->dh, s->mact, s->u, &b->attn, bt->key_mask,
                               &dl, l, B, T);
            break;
        }
        phase_end(m, 1, mixer_phase(b->mixer), &tp);
        norm_backward_to(be, m->dx, m->dh, m->du, s->n1act, s->x, &b->n1, n);
        phase_end(m, 1, TB_PHASE_NORMS, &tp);
    }
    tb_dropout de = layer_drop(m, TB_DROPOUT_LAYER_EMB);
    embedding_backward(be, m->scratch, m->dx, m->emb_act, bt->ids, &m->emb, &de, B, T);
    phase_end(m, 1, TB_PHASE_EMBED, &tp);
}

double tb_model_train_flops_per_token(const tb_model_config *c, int T) {
    double C = (double)c->hidden_size, V = (double)c->vocab_size, H = (double)c->num_heads;
    double hs = C / H, kv = (double)tb_mc_kv_heads(c) * hs, attn = 4.0 * T * C;
    double F = c->ffn_hidden_size > 0 ? (double)c->ffn_hidden_size : 2 * C;
    double f = 0;
    if (c->use_factorized_embedding) {
        double Cl = (double)c->factorized_embedding_dim;
        f += 2 * Cl * C;
        if (c->use_embedding_conv) f += 2 * Cl * Cl * (double)c->embedding_conv_kernel;
    }
    int64_t L = c->num_layers * c->num_loops;
    for (int64_t l = 0; l < L; l++) {
        int kind = c->pattern[(l % c->num_layers) % c->pattern_len];
        switch (kind) {
        case TB_MIXER_RETNET: f += 2 * 5 * C * C + attn; break;
        case TB_MIXER_ODE: {
            double evals = (double)c->ode_steps * (c->ode_solver == TB_CFG_ODE_RK4 ? 4 : 1);
            f += evals * (2 * 4 * C * C + attn);
            break;
        }
        case TB_MIXER_MAMBA: {
            double Di = 2 * C, N = (double)c->mamba_d_state, R = ceil(C / 16);
            f += 2 * C * 2 * Di + 2 * Di * (R + 2 * N) + 2 * R * Di + 2 * Di * C + 9 * Di * N;
            if (c->titan_memory) f += 3 * 2 * C * C + 4 * C * hs;
            break;
        }
        default: f += 2 * (2 * C * C + 2 * C * kv) + attn; break; /* attention kinds */
        }
        if (c->use_moe)
            f += 2 * C * (double)c->num_experts + (double)c->top_k_experts * 4 * C * F;
        else
            f += 4 * C * F;
    }
    f += 2 * C * V;
    return 3 * f;
}
