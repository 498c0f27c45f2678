#include "attention.h"
#include <stdio.h>
#include <stdlib.h>
#include "../backend.h"

/* Activation layout (n = B·T, kv = Hkv·hs): act_q, act_k, act_v (linear acts), q (n, C)
 * after position encoding, k (n, kv) after it, v (n, kv), probs (B, H, T, T), rowstat
 * (B, H, T), a = P̃ v (n, C), act_o, position table. */
typedef struct attn_layout {
    size_t act_q, act_k, act_v, q, k, v, probs, rowstat, a, act_o, tab, total;
} attn_layout;

static int uses_pos(const tb_attention *p) {
    return p->kind == TB_ATTN_TITAN && p->pos != TB_POS_NONE;
}

static attn_layout layout(const tb_attention *p, int B, int T) {
    size_t n = (size_t)B * T, C = (size_t)p->C, kv = (size_t)p->Hkv * (C / p->H);
    attn_layout l;
    size_t o = 0;
    l.act_q = o, o += linear_act_count(&p->q, n);
    /* k and v use q's act where they may (the same input u: linear_same_x) */
    if (linear_same_x(&p->q, &p->k)) l.act_k = l.act_q;
    else l.act_k = o, o += linear_act_count(&p->k, n);
    if (linear_same_x(&p->q, &p->v)) l.act_v = l.act_q;
    else l.act_v = o, o += linear_act_count(&p->v, n);
    l.q = o, o += n * C;
    l.k = o, o += n * kv;
    l.v = o, o += n * kv;
    l.probs = o, o += p->recompute_probs ? 0 : (size_t)B * p->H * T * T;
    l.rowstat = o, o += (size_t)B * p->H * T;
    l.a = o, o += n * C;
    l.act_o = o, o += linear_act_count(&p->o, n);
    l.tab = o, o += uses_pos(p) ? posenc_table_count(T, p->C / p->H) : 0;
    l.total = o;
    return l;
}

size_t attention_act_count(const tb_attention *p, int B, int T) {
    return layout(p, B, T).total;
}

static size_t max_lin_scratch(const tb_attention *p, size_t n) {
    size_t m = linear_scratch_count(&p->q, n), s;
    if ((s = linear_scratch_count(&p->k, n)) > m) m = s;
    if ((s = linear_scratch_count(&p->v, n)) > m) m = s;
    if ((s = linear_scratch_count(&p->o, n)) > m) m = s;
    return m;
}

/* da (n, C), dq (n, C), dk (n, kv), dv (n, kv), linear scratch, work (T). */
size_t attention_scratch_count(const tb_attention *p, int B, int T) {
    size_t n = (size_t)B * T, C = (size_t)p->C, kv = (size_t)p->Hkv * (C / p->H);
    return 2 * n * C + 2 * n * kv + max_lin_scratch(p, n) + (size_t)T;
}

/* The position table is computed on the host (libm, the CPU backend's values); off the
 * host it is built in a host buffer and copied. Host copies are kept per (kind, base,
 * damping, layer, T, hs), of which the table is a pure function: the cos / sin of T x hs/2
 * angles cost the host a few hundred microseconds a call, during which a GPU ran dry (the
 * ninth session's idle table). Off the host each is also kept in device memory (once,
 * per backend) and copied from there into the arena's table region on each call (the
 * region may be reused by other layers): a device-to-device copy on the backend's stream,
 * no host wait (an upload from the host waited for the stream, 11 times a frankenstein
 * step). Per thread; the steady state allocates nothing. */
#define TAB_CACHE 64
typedef struct tab_entry {
    int used, layer, T, hs;
    tb_pos_kind kind;
    double base, damping;
    real *h;
    real *dev;                /* the device copy, or NULL */
    const tb_backend *dev_be; /* whose memory dev is */
} tab_entry;
static _Thread_local tab_entry tab_cache[TAB_CACHE];
static _Thread_local unsigned tab_next;

static tab_entry *table_entry(const tb_attention *p, int layer, int T, int hs) {
    for (int i = 0; i < TAB_CACHE; i++) {
        tab_entry *e = &tab_cache[i];
        if (e->used && e->kind == p->pos && e->base == p->pos_base && e->damping == p->pos_damping &&
            e->layer == layer && e->T == T && e->hs == hs)
            return e;
    }
    tab_entry *e = &tab_cache[tab_next++ % TAB_CACHE];
    if (e->dev) e->dev_be->core.mem_free(e->dev);
    size_t count = posenc_table_count(T, hs);
    real *h = realloc(e->used ? e->h : NULL, (count ? count : 1) * sizeof(real));
    if (!h) {
        fprintf(stderr, "attention: out of host memory for a %zu-real position table\n", count);
        abort();
    }
    posenc_table(h, p->pos, p->pos_base, p->pos_damping, layer, T, hs);
    *e = (tab_entry){1, layer, T, hs, p->pos, p->pos_base, p->pos_damping, h, NULL, NULL};
    return e;
}

void attention_release_tables(const tb_backend *be) {
    for (int i = 0; i < TAB_CACHE; i++) {
        tab_entry *e = &tab_cache[i];
        if (e->dev && e->dev_be == be) {
            be->core.mem_free(e->dev);
            e->dev = NULL;
            e->dev_be = NULL;
        }
    }
}

static void write_table(const tb_backend *be, real *tab, const tb_attention *p, int layer, int T,
                        int hs) {
    if (be->core.host_memory) {
        posenc_table(tab, p->pos, p->pos_base, p->pos_damping, layer, T, hs);
        return;
    }
    tab_entry *e = table_entry(p, layer, T, hs);
    size_t count = posenc_table_count(T, hs);
    if (e->dev && e->dev_be != be) { /* another backend's copy: not this one's memory */
        e->dev_be->core.mem_free(e->dev);
        e->dev = NULL;
    }
    if (!e->dev && count && (e->dev = be->core.mem_alloc(count * sizeof(real))) != NULL) {
        e->dev_be = be;
        be->core.to_device(e->dev, e->h, count * sizeof(real)); /* once */
    }
    if (e->dev) be->core.copy(tab, e->dev, count);
    else be->core.to_device(tab, e->h, count * sizeof(real)); /* no device memory to spare */
}

void attention_forward(const tb_backend *be, real *out, real *act, const real *u,
                       const tb_attention *p, const uint8_t *key_mask, const tb_dropout *d,
                       int layer, int B, int T) {
    attn_layout l = layout(p, B, T);
    size_t n = (size_t)B * T;
    int hs = p->C / p->H;
    size_t kv = (size_t)p->Hkv * hs;
    linear_forward(be, act + l.q, act + l.act_q, u, &p->q, n);
    if (l.act_k == l.act_q) linear_forward_same_x(be, act + l.k, act + l.act_q, u, &p->k, n);
    else linear_forward(be, act + l.k, act + l.act_k, u, &p->k, n);
    if (l.act_v == l.act_q) linear_forward_same_x(be, act + l.v, act + l.act_q, u, &p->v, n);
    else linear_forward(be, act + l.v, act + l.act_v, u, &p->v, n);
    if (uses_pos(p)) {
        write_table(be, act + l.tab, p, layer, T, hs);
        posenc_forward(be, act + l.q, act + l.q, act + l.tab, p->pos, B, T, p->H, hs,
                       (size_t)p->C);
        posenc_forward(be, act + l.k, act + l.k, act + l.tab, p->pos, B, T, p->Hkv, hs, kv);
    }
    be->dense.attn_fwd(act + l.a, p->recompute_probs ? NULL : act + l.probs, act + l.rowstat, act + l.q, act + l.k,
                       act + l.v, (size_t)p->C, kv, key_mask, p->kind == TB_ATTN_SIGMOID, d,
                       TB_DROPOUT_SITE_ATTN, B, T, p->H, p->Hkv, hs);
    linear_forward(be, out, act + l.act_o, act + l.a, &p->o, n);
}

void attention_backward(const tb_backend *be, real *du, real *scratch, const real *dout,
                        const real *act, const real *u, const tb_attention *p,
                        const uint8_t *key_mask, const tb_dropout *d, int layer, int B,
                        int T) {
    (void)layer; /* the table forward stored */
    attn_layout l = layout(p, B, T);
    size_t n = (size_t)B * T, C = (size_t)p->C;
    int hs = p->C / p->H;
    size_t kv = (size_t)p->Hkv * hs;
    real *da = scratch, *dq = da + n * C, *dk = dq + n * C, *dv = dk + n * kv;
    real *lscr = dv + n * kv, *work = lscr + max_lin_scratch(p, n);
    linear_backward_set(be, da, lscr, dout, act + l.act_o, act + l.a, &p->o, n);
    be->dense.attn_bwd_set(dq, dk, dv, work, da, act + l.a, p->recompute_probs ? NULL : act + l.probs,
                       act + l.rowstat, act + l.q,
                       act + l.k, act + l.v, C, kv, key_mask, p->kind == TB_ATTN_SIGMOID, d,
                       TB_DROPOUT_SITE_ATTN, B, T, p->H, p->Hkv, hs);
    if (uses_pos(p)) {
        posenc_backward(be, dq, dq, act + l.tab, p->pos, B, T, p->H, hs, C);
        posenc_backward(be, dk, dk, act + l.tab, p->pos, B, T, p->Hkv, hs, kv);
    }
    linear_backward(be, du, lscr, dq, act + l.act_q, u, &p->q, n);
    linear_backward(be, du, lscr, dk, act + l.act_k, u, &p->k, n);
    linear_backward(be, du, lscr, dv, act + l.act_v, u, &p->v, n);
}
