/* The sample stream (stream.h): feeder (shard order, reading, shuffle buffer) ->
 * tokenizer pool with a sequencer -> packer and masker -> batches. */
#include "stream.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "doc.h"
#include "mask.h"
#include "reader.h"
#include "tb_crc32c.h"
#include "tb_log.h"
#include "tb_rng.h"

/* ---- small helpers ------------------------------------------------------------------ */

static const char *const bad_names[TB_BAD_KINDS] = {
    "open", "io", "checksum", "corrupt", "not_json", "missing_field", "bad_utf8",
};

const char *tb_bad_kind_name(tb_bad_kind k) {
    return (unsigned)k < TB_BAD_KINDS ? bad_names[k] : "unknown";
}

void tb_stream_config_default(tb_stream_config *c) {
    memset(c, 0, sizeof *c);
    c->seq_len = 512;
    c->batch_size = 32;
    c->mask_prob = 0.15;
    c->packing = true;
    c->seed = 1234;
    c->text_field = NULL;
    c->shuffle_buffer = 1024;
    c->min_doc_chars = 10;
    c->threads = 0;
    c->max_epochs = 0;
}

static void put64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint64_t get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

void tb_stream_cursor_serialize(uint8_t out[TB_STREAM_CURSOR_BYTES], const tb_stream_cursor *c) {
    memcpy(out, "TBC1", 4);
    out[4] = 1, out[5] = out[6] = out[7] = 0;
    const uint64_t f[8] = {c->generation, c->epoch,        c->shard_pos,       c->shard,
                           c->doc_ord,    c->token_offset, c->samples_emitted, c->batch_seq};
    for (int i = 0; i < 8; i++) put64(out + 8 + 8 * i, f[i]);
    uint32_t crc = tb_crc32c(0, out, 72);
    for (int i = 0; i < 4; i++) out[72 + i] = (uint8_t)(crc >> (8 * i));
}

int tb_stream_cursor_deserialize(tb_stream_cursor *out, const uint8_t *buf, size_t len,
                                 tb_err *err) {
    memset(out, 0, sizeof *out);
    if (len != TB_STREAM_CURSOR_BYTES)
        return tb_err_set(err, "cursor: %zu bytes, expected %d", len, TB_STREAM_CURSOR_BYTES);
    if (memcmp(buf, "TBC1", 4) != 0) return tb_err_set(err, "cursor: bad magic");
    if (buf[4] != 1) return tb_err_set(err, "cursor: unknown version %u", buf[4]);
    uint32_t crc = tb_crc32c(0, buf, 72);
    uint32_t want = (uint32_t)buf[72] | (uint32_t)buf[73] << 8 | (uint32_t)buf[74] << 16 |
                    (uint32_t)buf[75] << 24;
    if (crc != want) return tb_err_set(err, "cursor: crc 0x%08x, stored 0x%08x", crc, want);
    uint64_t f[8];
    for (int i = 0; i < 8; i++) f[i] = get64(buf + 8 + 8 * i);
    *out = (tb_stream_cursor){f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]};
    return 0;
}

void tb_stream_batch_free(tb_stream_batch *b) {
    if (!b) return;
    free(b->ids);
    free(b->labels);
    free(b->attn_mask);
    free(b->prov);
    free(b->segs);
    memset(b, 0, sizeof *b);
}

/* ---- documents and jobs --------------------------------------------------------------- */

typedef struct doc_pos {
    uint64_t generation, epoch, shard_pos, doc_ord, doc_id;
    uint32_t shard;
} doc_pos;

enum { JOB_OK = 0, JOB_SHORT, JOB_BAD, JOB_ERR };

typedef struct job {
    doc_pos pos;
    char *raw; /* owned until processed */
    size_t raw_len;
    tb_shard_format fmt;
    int status;
    tb_bad_kind kind;
    char why[256];
    int32_t *ids; /* n ids followed by [SEP] */
    size_t n;
    size_t text_len;
    int done;
} job;

static void job_clear(job *j) {
    free(j->raw);
    free(j->ids);
    memset(j, 0, sizeof *j);
}

/* Parse, check, tokenize: runs on a worker thread (or inline). Touches only *j. */
static void job_process(job *j, const tb_spm *spm, const char *field, uint32_t min_chars,
                        int32_t sep) {
    tb_doc_text t;
    if (tb_doc_extract(&t, j->raw, j->raw_len, j->fmt, field, &j->kind, j->why, sizeof j->why)) {
        j->status = JOB_BAD;
        goto out;
    }
    if (tb_doc_stripped_chars(t.text, t.len) <= min_chars) {
        j->status = JOB_SHORT;
        tb_doc_text_free(&t);
        goto out;
    }
    size_t cap = t.len + 3;
    j->ids = malloc(cap * sizeof *j->ids);
    tb_err e = {{0}};
    int64_t n = j->ids ? tb_spm_encode(spm, t.text, t.len, j->ids, cap - 1, &e) : -1;
    if (n >= 0 && (size_t)n + 1 > cap) {
        cap = (size_t)n + 1;
        int32_t *ni = realloc(j->ids, cap * sizeof *ni);
        if (ni) {
            j->ids = ni;
            n = tb_spm_encode(spm, t.text, t.len, j->ids, cap - 1, &e);
        } else {
            n = -1;
            snprintf(e.msg, sizeof e.msg, "out of memory for %zu ids", cap);
        }
    }
    if (n < 0) {
        j->status = JOB_ERR;
        snprintf(j->why, sizeof j->why, "%.200s", j->ids ? e.msg : "out of memory");
        tb_doc_text_free(&t);
        goto out;
    }
    j->n = (size_t)n;
    j->ids[n] = sep;
    j->text_len = t.len;
    j->status = JOB_OK;
    tb_doc_text_free(&t);
out:
    free(j->raw);
    j->raw = NULL;
}

/* ---- the stream ----------------------------------------------------------------------- */

typedef struct raw_doc {
    char *text;
    size_t len;
    uint64_t id;
    tb_shard_format fmt;
} raw_doc;

struct tb_stream {
    tb_stream_config cfg;
    char *text_field;
    const tb_spm *spm;
    tb_spm_specials sp;
    tb_mask mask;
    uint32_t *scratch; // (T)
    tb_stream_stats stats;

    /* feeder */
    tb_manifest man;
    uint32_t *order; // (man.n)
    uint64_t epoch;
    uint64_t shard_pos;
    int shard_open;
    int shard_eof;
    tb_reader *rd;
    raw_doc *sbuf; // (sbuf_cap)
    size_t sbuf_n, sbuf_cap;
    tb_rng drng;
    uint64_t doc_ord;
    uint64_t epoch_docs;
    int feeder_state; /* 1 running, 0 ended, -1 failed */
    char feeder_err[1024];

    /* pending swap */
    tb_manifest swap_to;
    int swap_pending;

    /* tokenizer pool + sequencer */
    unsigned threads;
    pthread_t *tids;
    size_t W;
    job *ring; // (W)
    uint64_t submitted, consumed, next_work;
    int stop;
    pthread_mutex_t mu;
    pthread_cond_t cv_work, cv_done;

    /* packer */
    job cur;
    int have_cur;
    size_t cur_off, cur_len;
    doc_pos next; /* position of the next document when no current one */
    uint64_t samples;
    uint64_t batch_seq;
    uint64_t used_epoch;
};

static void report_bad(tb_stream *s, tb_bad_kind kind, uint32_t shard, uint64_t line,
                       const char *why) {
    s->stats.bad[kind]++;
    const char *loc = shard < s->man.n ? s->man.shards[shard].location : "?";
    tb_warn("bad %s: shard %u '%s' line %llu: %s", tb_bad_kind_name(kind), shard, loc,
            (unsigned long long)line, why);
    if (s->cfg.on_bad) s->cfg.on_bad(s->cfg.on_bad_ctx, kind, shard, loc, line, why);
}

static void order_compute(uint32_t *order, size_t n, uint64_t seed, uint64_t gen, uint64_t epoch) {
    for (size_t i = 0; i < n; i++) order[i] = (uint32_t)i;
    tb_rng r;
    tb_rng_init(&r, seed, TB_RNG_SHUFFLE, (uint32_t)gen, (uint32_t)epoch, 0);
    for (size_t i = n; i > 1; i--) {
        size_t j = tb_rng_below(&r, (uint32_t)i);
        uint32_t t = order[i - 1];
        order[i - 1] = order[j];
        order[j] = t;
    }
}

static void feeder_close_shard(tb_stream *s) {
    tb_reader_close(s->rd);
    s->rd = NULL;
    for (size_t i = 0; i < s->sbuf_n; i++) free(s->sbuf[i].text);
    s->sbuf_n = 0;
    s->shard_open = 0;
    s->shard_eof = 0;
    s->doc_ord = 0;
}

/* Positions the feeder at (epoch, shard_pos) of the current manifest, nothing read. */
static void feeder_reset(tb_stream *s, uint64_t epoch, uint64_t shard_pos) {
    feeder_close_shard(s);
    s->epoch = epoch;
    s->shard_pos = shard_pos;
    s->epoch_docs = 0;
    s->feeder_state = 1;
    order_compute(s->order, s->man.n, s->cfg.seed, s->man.generation, epoch);
}

static void feeder_open_shard(tb_stream *s) {
    uint32_t shard = s->order[s->shard_pos];
    const tb_shard *sh = &s->man.shards[shard];
    tb_err e = {{0}};
    s->shard_open = 1;
    s->shard_eof = 1;
    s->doc_ord = 0;
    s->stats.shards_opened++;
    if (sh->has_sha256 || sh->size >= 0) {
        tb_source *src = tb_source_open(sh->location, s->cfg.opener, &s->cfg.file, &e);
        if (!src) {
            report_bad(s, TB_BAD_OPEN, shard, 0, e.msg);
            return;
        }
        uint64_t bytes = 0;
        int r = tb_shard_verify(src, sh, &bytes, &e);
        s->stats.bytes_raw += bytes;
        if (r != 0) {
            report_bad(s, r > 0 ? TB_BAD_CHECKSUM : TB_BAD_IO, shard, 0, e.msg);
            return;
        }
    }
    tb_source *src = tb_source_open(sh->location, s->cfg.opener, &s->cfg.file, &e);
    if (!src) {
        report_bad(s, TB_BAD_OPEN, shard, 0, e.msg);
        return;
    }
    s->rd = tb_reader_open(src, sh->location, &e);
    if (!s->rd) {
        report_bad(s, TB_BAD_OPEN, shard, 0, e.msg);
        return;
    }
    s->shard_eof = 0;
    tb_rng_init(&s->drng, s->cfg.seed, TB_RNG_SHUFFLE, (uint32_t)s->man.generation,
                (uint32_t)s->epoch, 1u + shard);
}

/* Next raw document in the defined order: 1 = *out filled (text owned by the caller),
 * 0 = end of the stream (max_epochs), -1 = failure (s->feeder_err). */
static int feeder_next(tb_stream *s, raw_doc *out, doc_pos *pos) {
    if (s->feeder_state <= 0) return s->feeder_state;
    size_t cap = s->sbuf_cap;
    for (;;) {
        if (s->shard_pos >= s->man.n) {
            if (s->epoch_docs == 0 && s->man.n > 0) {
                snprintf(s->feeder_err, sizeof s->feeder_err,
                         "no documents in any shard of generation %llu (epoch %llu)",
                         (unsigned long long)s->man.generation, (unsigned long long)s->epoch);
                s->feeder_state = -1;
                return -1;
            }
            if (s->man.n == 0) {
                snprintf(s->feeder_err, sizeof s->feeder_err, "generation %llu has no shards",
                         (unsigned long long)s->man.generation);
                s->feeder_state = -1;
                return -1;
            }
            if (s->cfg.max_epochs && s->epoch + 1 >= s->cfg.max_epochs) {
                s->feeder_state = 0;
                return 0;
            }
            feeder_reset(s, s->epoch + 1, 0);
        }
        if (!s->shard_open) feeder_open_shard(s);
        uint32_t shard = s->order[s->shard_pos];
        while (!s->shard_eof && s->sbuf_n < cap) {
            const char *d;
            size_t len;
            uint64_t id;
            tb_bad_kind kind;
            tb_err e = {{0}};
            int r = tb_reader_next(s->rd, &d, &len, &id, &kind, &e);
            if (r == 1) {
                char *copy = malloc(len ? len : 1);
                if (!copy) {
                    snprintf(s->feeder_err, sizeof s->feeder_err, "out of memory (%zu bytes)", len);
                    s->feeder_state = -1;
                    return -1;
                }
                memcpy(copy, d, len);
                s->sbuf[s->sbuf_n++] = (raw_doc){copy, len, id, tb_reader_format(s->rd)};
            } else if (r == 2) {
                report_bad(s, kind, shard, id + 1, e.msg);
            } else {
                if (r < 0) report_bad(s, kind, shard, tb_reader_line(s->rd), e.msg);
                s->stats.bytes_raw += tb_reader_bytes_raw(s->rd);
                tb_reader_close(s->rd);
                s->rd = NULL;
                s->shard_eof = 1;
            }
        }
        if (s->sbuf_n == 0) {
            feeder_close_shard(s);
            s->shard_pos++;
            continue;
        }
        size_t j = cap > 1 ? tb_rng_below(&s->drng, (uint32_t)s->sbuf_n) : 0;
        *out = s->sbuf[j];
        s->sbuf[j] = s->sbuf[--s->sbuf_n];
        *pos = (doc_pos){s->man.generation, s->epoch, s->shard_pos, s->doc_ord, out->id, shard};
        s->doc_ord++;
        s->epoch_docs++;
        s->stats.docs_read++;
        return 1;
    }
}

/* ---- tokenizer pool ------------------------------------------------------------------- */

static void *worker_main(void *arg) {
    tb_stream *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->stop && s->next_work == s->submitted) pthread_cond_wait(&s->cv_work, &s->mu);
        if (s->stop) break;
        job *j = &s->ring[s->next_work % s->W];
        s->next_work++;
        pthread_mutex_unlock(&s->mu);
        job_process(j, s->spm, s->text_field, s->cfg.min_doc_chars, s->sp.sep);
        pthread_mutex_lock(&s->mu);
        j->done = 1;
        pthread_cond_broadcast(&s->cv_done);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Waits for every submitted job and drops them all (seek, swap, close). */
static void pool_flush(tb_stream *s) {
    if (s->threads <= 1) return;
    pthread_mutex_lock(&s->mu);
    while (s->consumed < s->submitted) {
        job *j = &s->ring[s->consumed % s->W];
        while (!j->done) pthread_cond_wait(&s->cv_done, &s->mu);
        job_clear(j);
        s->consumed++;
    }
    pthread_mutex_unlock(&s->mu);
}

/* Next processed document in order: 1 = *out (owned by the caller), 0 = end, -1 = error. */
static int next_job(tb_stream *s, job *out, tb_err *err) {
    if (s->threads <= 1) {
        raw_doc d;
        doc_pos p;
        int r = feeder_next(s, &d, &p);
        if (r < 0) return tb_err_set(err, "%s", s->feeder_err);
        if (r == 0) return 0;
        memset(out, 0, sizeof *out);
        out->pos = p;
        out->raw = d.text;
        out->raw_len = d.len;
        out->fmt = d.fmt;
        job_process(out, s->spm, s->text_field, s->cfg.min_doc_chars, s->sp.sep);
        return 1;
    }
    /* Keep the window full: read ahead while the workers tokenize. */
    while (s->submitted - s->consumed < s->W && s->feeder_state > 0) {
        raw_doc d;
        doc_pos p;
        int r = feeder_next(s, &d, &p);
        if (r <= 0) break;
        job *j = &s->ring[s->submitted % s->W];
        memset(j, 0, sizeof *j);
        j->pos = p;
        j->raw = d.text;
        j->raw_len = d.len;
        j->fmt = d.fmt;
        pthread_mutex_lock(&s->mu);
        s->submitted++;
        pthread_cond_signal(&s->cv_work);
        pthread_mutex_unlock(&s->mu);
    }
    if (s->submitted == s->consumed) {
        if (s->feeder_state < 0) return tb_err_set(err, "%s", s->feeder_err);
        return 0;
    }
    job *j = &s->ring[s->consumed % s->W];
    pthread_mutex_lock(&s->mu);
    while (!j->done) pthread_cond_wait(&s->cv_done, &s->mu);
    pthread_mutex_unlock(&s->mu);
    *out = *j;
    memset(j, 0, sizeof *j);
    s->consumed++;
    return 1;
}

/* ---- packer ----------------------------------------------------------------------------- */

static void cur_drop(tb_stream *s) {
    if (s->have_cur) job_clear(&s->cur);
    s->have_cur = 0;
    s->cur_off = s->cur_len = 0;
}

/* Switches the feeder to the pending generation, at a document boundary: the new
 * generation's order for the current epoch, from its first shard. */
static int swap_apply(tb_stream *s, tb_err *err) {
    uint32_t *order = malloc((s->swap_to.n ? s->swap_to.n : 1) * sizeof *order);
    if (!order) return tb_err_set(err, "swap: out of memory");
    uint64_t epoch = s->next.epoch;
    pool_flush(s);
    feeder_close_shard(s);
    tb_manifest_free(&s->man);
    s->man = s->swap_to;
    memset(&s->swap_to, 0, sizeof s->swap_to);
    s->swap_pending = 0;
    free(s->order);
    s->order = order;
    feeder_reset(s, epoch, 0);
    s->next = (doc_pos){s->man.generation, epoch, 0, 0, 0, s->man.n ? s->order[0] : 0};
    s->used_epoch = epoch;
    tb_notice("generation %llu now in use (epoch %llu)", (unsigned long long)s->man.generation,
              (unsigned long long)epoch);
    return 0;
}

/* Makes s->cur a tokenized document with ids left: skips (and counts) bad and short
 * ones. 1 = ok, 0 = end of stream, -1 = error. */
static int cur_advance(tb_stream *s, tb_err *err) {
    for (;;) {
        if (s->have_cur && s->cur_off < s->cur_len) return 1;
        cur_drop(s);
        if (s->swap_pending && swap_apply(s, err)) return -1;
        job j;
        int r = next_job(s, &j, err);
        if (r <= 0) return r;
        s->next = j.pos;
        s->next.doc_ord++;
        if (j.pos.epoch >= s->used_epoch + 2) {
            job_clear(&j);
            return tb_err_set(err, "no usable document in a whole epoch of generation %llu",
                              (unsigned long long)j.pos.generation);
        }
        if (j.status == JOB_ERR) {
            tb_err_set(err, "shard %u line %llu: %s", j.pos.shard,
                       (unsigned long long)j.pos.doc_id + 1, j.why);
            job_clear(&j);
            return -1;
        }
        if (j.status == JOB_BAD) {
            report_bad(s, j.kind, j.pos.shard, j.pos.doc_id + 1, j.why);
            job_clear(&j);
            continue;
        }
        if (j.status == JOB_SHORT) {
            s->stats.docs_short++;
            job_clear(&j);
            continue;
        }
        s->stats.docs_used++;
        s->stats.tokens += j.n;
        s->stats.bytes_text += j.text_len;
        s->used_epoch = j.pos.epoch;
        s->cur = j;
        s->have_cur = 1;
        s->cur_off = 0;
        s->cur_len = s->cfg.packing ? j.n + 1 : j.n;
        if (!s->cfg.packing && j.n == 0) {
            /* An unpacked sample needs nothing from the document but [CLS][SEP]: still
             * a sample, so keep it with one pseudo id consumed by the layout. */
            s->cur_len = 1;
        }
        return 1;
    }
}

static int segs_push(tb_stream_batch *b, const tb_stream_seg *g) {
    if (b->n_segs == b->cap_segs) {
        size_t nc = b->cap_segs ? b->cap_segs * 2 : 256;
        tb_stream_seg *ns = realloc(b->segs, nc * sizeof *ns);
        if (!ns) return -1;
        b->segs = ns;
        b->cap_segs = nc;
    }
    b->segs[b->n_segs++] = *g;
    return 0;
}

/* Builds sample row b of out. 1 = ok, 0 = end, -1 = error. */
static int build_sample(tb_stream *s, tb_stream_batch *out, size_t b, tb_err *err) {
    size_t T = s->cfg.seq_len;
    int32_t *ids = out->ids + b * T;
    int32_t *labels = out->labels + b * T;
    uint8_t *am = out->attn_mask + b * T;
    tb_sample_prov *pv = &out->prov[b];
    memset(pv, 0, sizeof *pv);
    pv->seg_first = (uint32_t)out->n_segs;
    ids[0] = s->sp.cls;
    size_t t = 1;
    if (s->cfg.packing) {
        while (t < T) {
            int r = cur_advance(s, err);
            if (r <= 0) return r;
            size_t take = s->cur_len - s->cur_off;
            if (take > T - t) take = T - t;
            memcpy(ids + t, s->cur.ids + s->cur_off, take * sizeof *ids);
            tb_stream_seg g = {s->cur.pos.generation, s->cur.pos.epoch, s->cur.pos.doc_id,
                               s->cur_off, s->cur.pos.shard, (uint32_t)take};
            if (segs_push(out, &g)) return tb_err_set(err, "batch: out of memory");
            t += take;
            s->cur_off += take;
        }
        memset(am, 1, T);
    } else {
        int r = cur_advance(s, err);
        if (r <= 0) return r;
        size_t take = s->cur.n < T - 2 ? s->cur.n : T - 2;
        memcpy(ids + 1, s->cur.ids, take * sizeof *ids);
        ids[1 + take] = s->sp.sep;
        t = take + 2;
        for (size_t k = t; k < T; k++) ids[k] = s->sp.pad;
        memset(am, 1, t);
        memset(am + t, 0, T - t);
        tb_stream_seg g = {s->cur.pos.generation, s->cur.pos.epoch, s->cur.pos.doc_id, 0,
                           s->cur.pos.shard, (uint32_t)take};
        if (segs_push(out, &g)) return tb_err_set(err, "batch: out of memory");
        s->cur_off = s->cur_len;
    }
    const tb_stream_seg *g0 = &out->segs[pv->seg_first];
    pv->sample = s->samples;
    pv->generation = g0->generation;
    pv->epoch = g0->epoch;
    pv->doc = g0->doc;
    pv->token_offset = g0->token_offset;
    pv->shard = g0->shard;
    pv->length = (uint32_t)t;
    pv->seg_count = (uint32_t)(out->n_segs - pv->seg_first);
    tb_mask_apply(ids, labels, s->scratch, T, &s->mask, s->cfg.seed, pv->epoch, pv->sample);
    s->samples++;
    s->stats.samples++;
    return 1;
}

void tb_stream_cursor_get(const tb_stream *s, tb_stream_cursor *out) {
    const doc_pos *p = s->have_cur && s->cur_off < s->cur_len ? &s->cur.pos : &s->next;
    out->generation = p->generation;
    out->epoch = p->epoch;
    out->shard_pos = p->shard_pos;
    out->shard = p->shard;
    out->doc_ord = p->doc_ord;
    out->token_offset = s->have_cur && s->cur_off < s->cur_len ? s->cur_off : 0;
    out->samples_emitted = s->samples;
    out->batch_seq = s->batch_seq;
}

int tb_stream_next_batch(tb_stream *s, tb_stream_batch *out, tb_err *err) {
    size_t B = s->cfg.batch_size, T = s->cfg.seq_len;
    if (out->B != B || out->T != T || !out->ids) {
        tb_stream_batch_free(out);
        out->ids = malloc(B * T * sizeof *out->ids);
        out->labels = malloc(B * T * sizeof *out->labels);
        out->attn_mask = malloc(B * T);
        out->prov = malloc(B * sizeof *out->prov);
        if (!out->ids || !out->labels || !out->attn_mask || !out->prov) {
            tb_stream_batch_free(out);
            return tb_err_set(err, "batch: out of memory for B=%zu T=%zu", B, T);
        }
        out->B = (uint32_t)B;
        out->T = (uint32_t)T;
    }
    out->n_segs = 0;
    for (size_t b = 0; b < B; b++) {
        int r = build_sample(s, out, b, err);
        if (r <= 0) return r;
    }
    out->seq = s->batch_seq++;
    s->stats.batches++;
    tb_stream_cursor_get(s, &out->cursor_after);
    return 1;
}

void tb_stream_stats_get(const tb_stream *s, tb_stream_stats *out) { *out = s->stats; }

/* ---- open, seek, swap, close ------------------------------------------------------------ */

int tb_stream_seek(tb_stream *s, const tb_stream_cursor *c, tb_err *err) {
    if (c->generation != s->man.generation)
        return tb_err_set(err, "seek: cursor generation %llu, stream has generation %llu",
                          (unsigned long long)c->generation,
                          (unsigned long long)s->man.generation);
    if (s->man.n == 0)
        return tb_err_set(err, "seek: generation %llu has no shards",
                          (unsigned long long)s->man.generation);
    if (c->shard_pos > s->man.n)
        return tb_err_set(err, "seek: cursor shard position %llu > %zu shards",
                          (unsigned long long)c->shard_pos, s->man.n);
    pool_flush(s);
    cur_drop(s);
    s->swap_pending = 0;
    tb_manifest_free(&s->swap_to);
    uint64_t epoch = c->epoch, pos = c->shard_pos, ord = c->doc_ord, off = c->token_offset;
    if (pos == s->man.n) {
        if (ord || off) return tb_err_set(err, "seek: cursor past the last shard with a document");
        epoch++;
        pos = 0;
    }
    if (s->cfg.max_epochs && epoch >= s->cfg.max_epochs) {
        feeder_reset(s, epoch, pos);
        s->feeder_state = 0;
    } else {
        feeder_reset(s, epoch, pos);
        if (pos == c->shard_pos && s->order[pos] != c->shard)
            return tb_err_set(err,
                              "seek: cursor says shard %llu at position %llu of epoch %llu, the "
                              "order gives shard %u (different seed or manifest?)",
                              (unsigned long long)c->shard, (unsigned long long)pos,
                              (unsigned long long)epoch, s->order[pos]);
    }
    s->next = (doc_pos){s->man.generation, epoch, pos, ord, 0, s->order[pos]};
    s->used_epoch = epoch;
    s->samples = c->samples_emitted;
    s->batch_seq = c->batch_seq;
    /* Replay the shard's shuffle buffer up to the cursor, without tokenizing. */
    for (uint64_t i = 0; i < ord; i++) {
        raw_doc d;
        doc_pos p;
        int r = feeder_next(s, &d, &p);
        if (r < 0) return tb_err_set(err, "seek: %s", s->feeder_err);
        if (r == 0 || p.epoch != epoch || p.shard_pos != pos) {
            if (r > 0) free(d.text);
            return tb_err_set(err, "seek: shard %llu has fewer than %llu documents",
                              (unsigned long long)c->shard, (unsigned long long)ord);
        }
        free(d.text);
    }
    if (off > 0) {
        int r = cur_advance(s, err);
        if (r < 0) return -1;
        if (r == 0 || s->cur.pos.doc_ord != ord || s->cur.pos.shard_pos != pos ||
            off >= s->cur_len)
            return tb_err_set(err,
                              "seek: document %llu of shard %llu does not have %llu tokens left "
                              "(different tokenizer or data?)",
                              (unsigned long long)ord, (unsigned long long)c->shard,
                              (unsigned long long)off);
        s->cur_off = off;
    }
    return 0;
}

int tb_stream_swap(tb_stream *s, const tb_manifest *m, tb_err *err) {
    if (m->generation <= s->man.generation)
        return tb_err_set(err, "swap: generation %llu is not newer than %llu",
                          (unsigned long long)m->generation,
                          (unsigned long long)s->man.generation);
    if (m->n == 0)
        return tb_err_set(err, "swap: generation %llu has no shards",
                          (unsigned long long)m->generation);
    tb_manifest_free(&s->swap_to);
    if (tb_manifest_copy(&s->swap_to, m, err)) return -1;
    s->swap_pending = 1;
    if (!(s->have_cur && s->cur_off < s->cur_len)) {
        cur_drop(s);
        return swap_apply(s, err);
    }
    return 0;
}

void tb_stream_close(tb_stream *s) {
    if (!s) return;
    if (s->tids) {
        pthread_mutex_lock(&s->mu);
        s->stop = 1;
        pthread_cond_broadcast(&s->cv_work);
        pthread_mutex_unlock(&s->mu);
        for (unsigned i = 0; i < s->threads; i++) pthread_join(s->tids[i], NULL);
        free(s->tids);
        for (size_t i = 0; i < s->W; i++) job_clear(&s->ring[i]);
    }
    if (s->threads > 1) {
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cv_work);
        pthread_cond_destroy(&s->cv_done);
    }
    free(s->ring);
    cur_drop(s);
    feeder_close_shard(s);
    free(s->sbuf);
    free(s->order);
    free(s->scratch);
    free(s->text_field);
    tb_mask_free(&s->mask);
    tb_manifest_free(&s->man);
    tb_manifest_free(&s->swap_to);
    free(s);
}

tb_stream *tb_stream_open(const tb_stream_config *cfg, const tb_manifest *m, const tb_spm *spm,
                          const tb_stream_cursor *at, tb_err *err) {
    if (cfg->seq_len < 8 || cfg->seq_len > (1u << 20)) {
        tb_err_set(err, "stream: seq_len %u not in [8, 1048576]", cfg->seq_len);
        return NULL;
    }
    if (cfg->batch_size < 1 || cfg->batch_size > (1u << 16)) {
        tb_err_set(err, "stream: batch_size %u not in [1, 65536]", cfg->batch_size);
        return NULL;
    }
    if (m->n == 0) {
        tb_err_set(err, "stream: generation %llu has no shards", (unsigned long long)m->generation);
        return NULL;
    }
    tb_stream *s = calloc(1, sizeof *s);
    if (!s) {
        tb_err_set(err, "stream: out of memory");
        return NULL;
    }
    s->cfg = *cfg;
    s->spm = spm;
    s->sp = tb_spm_get_specials(spm);
    s->cfg.text_field = NULL;
    if (cfg->text_field && !(s->text_field = strdup(cfg->text_field))) goto oom;
    s->cfg.text_field = s->text_field;
    if (s->sp.cls < 0 || s->sp.sep < 0 || s->sp.pad < 0) {
        tb_err_set(err, "stream: tokenizer lacks [CLS], [SEP] or [PAD]");
        goto fail;
    }
    if (tb_mask_init(&s->mask, spm, cfg->mask_prob, err)) goto fail;
    if (cfg->mask_share > 0 && tb_mask_set_share(&s->mask, cfg->mask_share, err)) goto fail;
    if (tb_manifest_copy(&s->man, m, err)) goto fail;
    s->order = malloc(m->n * sizeof *s->order);
    s->scratch = malloc(cfg->seq_len * sizeof *s->scratch);
    s->sbuf_cap = cfg->shuffle_buffer > 1 ? cfg->shuffle_buffer : 1;
    s->sbuf = malloc(s->sbuf_cap * sizeof *s->sbuf);
    if (!s->order || !s->scratch || !s->sbuf) goto oom;
    unsigned threads = cfg->threads;
    if (threads == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 0 ? (unsigned)n : 1;
    }
    if (threads > 1024) threads = 1024;
    s->threads = threads;
    if (threads > 1) {
        s->W = cfg->inflight_docs ? cfg->inflight_docs : (size_t)threads * 256;
        if (s->W < 2) s->W = 2;
        s->ring = calloc(s->W, sizeof *s->ring);
        s->tids = calloc(threads, sizeof *s->tids);
        if (!s->ring || !s->tids) goto oom;
        pthread_mutex_init(&s->mu, NULL);
        pthread_cond_init(&s->cv_work, NULL);
        pthread_cond_init(&s->cv_done, NULL);
        for (unsigned i = 0; i < threads; i++) {
            if (pthread_create(&s->tids[i], NULL, worker_main, s)) {
                s->threads = i; /* join those started */
                tb_err_set(err, "stream: cannot start tokenizer thread %u", i);
                goto fail;
            }
        }
    }
    tb_stream_cursor start = {.generation = m->generation, .shard = 0};
    if (!at) {
        feeder_reset(s, 0, 0);
        start.shard = s->order[0];
        at = &start;
    }
    if (tb_stream_seek(s, at, err)) goto fail;
    return s;
oom:
    tb_err_set(err, "stream: out of memory");
fail:
    tb_stream_close(s);
    return NULL;
}

/* ---- rebuild ---------------------------------------------------------------------------- */

/* Tokenizes document `doc` of a shard into *ids (n ids + [SEP]). */
static int rebuild_doc(int32_t **ids, size_t *n, const tb_stream_config *cfg, const tb_shard *sh,
                       uint64_t doc, const tb_spm *spm, int32_t sep, tb_err *err) {
    tb_source *src = tb_source_open(sh->location, cfg->opener, &cfg->file, err);
    if (!src) return -1;
    tb_reader *rd = tb_reader_open(src, sh->location, err);
    if (!rd) return -1;
    for (;;) {
        const char *d;
        size_t len;
        uint64_t id;
        tb_bad_kind kind;
        int r = tb_reader_next(rd, &d, &len, &id, &kind, err);
        if (r < 0) break;
        if (r == 0 || id > doc) {
            tb_err_set(err, "rebuild: %s has no document at line %llu", sh->location,
                       (unsigned long long)doc + 1);
            break;
        }
        if (r != 1 || id != doc) continue;
        job j = {0};
        j.raw = malloc(len ? len : 1);
        if (!j.raw) {
            tb_err_set(err, "rebuild: out of memory");
            break;
        }
        memcpy(j.raw, d, len);
        j.raw_len = len;
        j.fmt = tb_reader_format(rd);
        job_process(&j, spm, cfg->text_field, cfg->min_doc_chars, sep);
        tb_reader_close(rd);
        if (j.status != JOB_OK) {
            tb_err_set(err, "rebuild: %s line %llu is not a usable document (%s)", sh->location,
                       (unsigned long long)doc + 1, j.why);
            job_clear(&j);
            return -1;
        }
        *ids = j.ids;
        *n = j.n;
        return 0;
    }
    tb_reader_close(rd);
    return -1;
}

int tb_stream_rebuild_sample(int32_t *ids, int32_t *labels, uint8_t *attn_mask,
                             const tb_stream_config *cfg, const tb_manifest_history *h,
                             const tb_spm *spm, const tb_sample_prov *prov,
                             const tb_stream_seg *segs, tb_err *err) {
    size_t T = cfg->seq_len;
    tb_spm_specials sp = tb_spm_get_specials(spm);
    if (prov->seg_count == 0) return tb_err_set(err, "rebuild: sample has no segments");
    ids[0] = sp.cls;
    size_t t = 1;
    for (uint32_t k = 0; k < prov->seg_count; k++) {
        const tb_stream_seg *g = &segs[k];
        const tb_manifest *m = tb_manifest_history_get(h, g->generation);
        if (!m) return tb_err_set(err, "rebuild: generation %llu not in the history",
                                  (unsigned long long)g->generation);
        if (g->shard >= m->n)
            return tb_err_set(err, "rebuild: shard %u not in generation %llu", g->shard,
                              (unsigned long long)g->generation);
        int32_t *d;
        size_t n;
        if (rebuild_doc(&d, &n, cfg, &m->shards[g->shard], g->doc, spm, sp.sep, err)) return -1;
        size_t avail = cfg->packing ? n + 1 : n;
        if (g->token_offset + g->length > avail || t + g->length > (cfg->packing ? T : T - 1)) {
            free(d);
            return tb_err_set(err, "rebuild: segment %u (offset %llu, length %u) does not fit",
                              k, (unsigned long long)g->token_offset, g->length);
        }
        memcpy(ids + t, d + g->token_offset, g->length * sizeof *ids);
        t += g->length;
        free(d);
    }
    if (cfg->packing) {
        if (t != T) return tb_err_set(err, "rebuild: segments give %zu of %zu ids", t, T);
        memset(attn_mask, 1, T);
    } else {
        ids[t++] = sp.sep;
        for (size_t k = t; k < T; k++) ids[k] = sp.pad;
        memset(attn_mask, 1, t);
        memset(attn_mask + t, 0, T - t);
    }
    tb_mask mk;
    if (tb_mask_init(&mk, spm, cfg->mask_prob, err)) return -1;
    if (cfg->mask_share > 0 && tb_mask_set_share(&mk, cfg->mask_share, err)) {
        tb_mask_free(&mk);
        return -1;
    }
    uint32_t *scratch = malloc(T * sizeof *scratch);
    if (!scratch) {
        tb_mask_free(&mk);
        return tb_err_set(err, "rebuild: out of memory");
    }
    tb_mask_apply(ids, labels, scratch, T, &mk, cfg->seed, prov->epoch, prov->sample);
    free(scratch);
    tb_mask_free(&mk);
    return 0;
}
