/* Validation: a fixed set of batches (the first validation.batches batches of a manifest's
 * stream with validation.seed, read through the prefetchd library, prefetchd/lib/stream.h),
 * evaluated without dropout. Used by the daemon every validation.every_n_steps steps and by
 * the one-shot `tb-trainerd --eval CKPT --data MANIFEST`. */
#ifndef TD_VALIDATION_H
#define TD_VALIDATION_H
#include <stdint.h>
#include "tb_err.h"
#include "trainer.h"

typedef struct td_valset {
    int n;             /* batches */
    int B, T;
    int32_t *ids;      // (n, B, T)
    int32_t *labels;   // (n, B, T)
    uint8_t *mask;     // (n, B, T)
} td_valset;

typedef struct td_val_opts {
    const char *manifest, *tokenizer;
    int64_t batches, seed, batch_size, seq_len;
    double mask_prob;
    int packing;
    int64_t vocab; /* the model's: the tokenizer must have exactly this many pieces */
} td_val_opts;

/* Reads the set; fewer batches than asked when the manifest is short (one epoch at most;
 * at least one batch or an error). */
int td_valset_load(td_valset *v, const td_val_opts *o, tb_err *err);
void td_valset_free(td_valset *v);

typedef struct td_val_result {
    double loss;      /* mean cross-entropy over the supervised tokens */
    double accuracy;  /* their top-1 accuracy */
    int64_t tokens;   /* supervised (masked) tokens */
    int64_t batches;
} td_val_result;

int td_valset_eval(td_trainer *t, const td_valset *v, td_val_result *r, tb_err *err);

#endif
