#include "validation.h"
#include <stdlib.h>
#include <string.h>
#include "manifest.h"
#include "stream.h"
#include "tb_spm.h"

void td_valset_free(td_valset *v) {
    free(v->ids);
    free(v->labels);
    free(v->mask);
    memset(v, 0, sizeof *v);
}

int td_valset_load(td_valset *v, const td_val_opts *o, tb_err *err) {
    memset(v, 0, sizeof *v);
    if (o->batches < 1 || o->batch_size < 1 || o->seq_len < 8)
        return tb_err_set(err, "validation: batches %lld, batch size %lld, seq_len %lld: out of range",
                          (long long)o->batches, (long long)o->batch_size, (long long)o->seq_len);
    tb_manifest m;
    if (tb_manifest_load(&m, o->manifest, err)) return tb_err_wrap(err, "validation.manifest");
    tb_spm *spm = tb_spm_load(o->tokenizer, err);
    if (!spm) {
        tb_manifest_free(&m);
        return tb_err_wrap(err, "validation.tokenizer");
    }
    int rc = -1;
    tb_stream *s = NULL;
    tb_stream_batch b;
    memset(&b, 0, sizeof b);
    if (o->vocab > 0 && tb_spm_vocab_size(spm) != o->vocab) {
        tb_err_set(err, "validation.tokenizer %s: %d pieces, but model.vocab_size is %lld",
                   o->tokenizer, (int)tb_spm_vocab_size(spm), (long long)o->vocab);
        goto out;
    }
    tb_stream_config sc;
    tb_stream_config_default(&sc);
    sc.seq_len = (uint32_t)o->seq_len;
    sc.batch_size = (uint32_t)o->batch_size;
    sc.mask_prob = o->mask_prob;
    sc.packing = o->packing != 0;
    sc.seed = (uint64_t)o->seed;
    sc.threads = 1;
    sc.max_epochs = 1;
    s = tb_stream_open(&sc, &m, spm, NULL, err);
    if (!s) {
        tb_err_wrap(err, "validation: %s", o->manifest);
        goto out;
    }
    size_t per = (size_t)o->batch_size * (size_t)o->seq_len, cap = (size_t)o->batches;
    v->B = (int)o->batch_size;
    v->T = (int)o->seq_len;
    v->ids = malloc(cap * per * sizeof *v->ids);
    v->labels = malloc(cap * per * sizeof *v->labels);
    v->mask = malloc(cap * per);
    if (!v->ids || !v->labels || !v->mask) {
        tb_err_set(err, "validation: out of memory for %lld batches", (long long)o->batches);
        goto out;
    }
    while ((int64_t)v->n < o->batches) {
        int r = tb_stream_next_batch(s, &b, err);
        if (r < 0) {
            tb_err_wrap(err, "validation: %s", o->manifest);
            goto out;
        }
        if (r == 0) break;
        size_t at = (size_t)v->n * per;
        memcpy(v->ids + at, b.ids, per * sizeof *v->ids);
        memcpy(v->labels + at, b.labels, per * sizeof *v->labels);
        memcpy(v->mask + at, b.attn_mask, per);
        v->n++;
    }
    if (v->n == 0) {
        tb_err_set(err, "validation: %s yields no complete batch of %lld x %lld", o->manifest,
                   (long long)o->batch_size, (long long)o->seq_len);
        goto out;
    }
    rc = 0;
out:
    tb_stream_batch_free(&b);
    if (s) tb_stream_close(s);
    tb_spm_free(spm);
    tb_manifest_free(&m);
    if (rc) td_valset_free(v);
    return rc;
}

int td_valset_eval(td_trainer *t, const td_valset *v, td_val_result *r, tb_err *err) {
    memset(r, 0, sizeof *r);
    double sum = 0;
    int64_t correct = 0;
    size_t per = (size_t)v->B * (size_t)v->T;
    for (int i = 0; i < v->n; i++) {
        double loss;
        int64_t cnt, cor;
        if (td_trainer_eval(t, v->ids + (size_t)i * per, v->labels + (size_t)i * per,
                            v->mask + (size_t)i * per, v->B, v->T, &loss, &cnt, &cor, err))
            return tb_err_wrap(err, "validation batch %d", i);
        sum += loss * (double)cnt;
        r->tokens += cnt;
        correct += cor;
        r->batches++;
    }
    r->loss = r->tokens ? sum / (double)r->tokens : 0;
    r->accuracy = r->tokens ? (double)correct / (double)r->tokens : 0;
    return 0;
}
