/* state.msgpack of a checkpoint: everything besides weights and AdamW moments that
 * training needs to continue as if never stopped (docs/TRAINERD.md "Checkpoints"). */
#ifndef TD_STATE_H
#define TD_STATE_H
#include <stdbool.h>
#include <stdint.h>
#include "tb_err.h"
#include "tb_proto_feed.h"

typedef struct td_state {
    int64_t step;            /* optimizer updates applied (AdamW t) */
    int64_t attempts;        /* step attempts (applied + skipped) */
    int64_t epoch;           /* data epoch of the last applied batch */
    int64_t epoch_start_step;
    bool has_cursor;         /* false: no batch applied yet */
    tb_cursor cursor;        /* cursor after the last applied batch (owned) */
    uint64_t last_seq;       /* seq of the last applied batch (valid with has_cursor) */
    uint64_t batches_applied;
    uint64_t applied_hash;   /* chain over (seq, crc) of every applied batch, in order */
    double lr_scale;
    int64_t nan_retries;
    double loss_ema;         /* moving average of the loss (NaN before the first step) */
    int64_t ema_count;
    double best_metric;      /* lowest metric among checkpoints saved as best (NaN none) */
    double val_loss;         /* last validation (NaN none) */
    double loss_scale;       /* dynamic loss scale (1 on fp32 backends) */
    uint64_t seed;           /* RNG: every draw is (seed, purpose, step/micro counter, ...) */
    int64_t dropout_counter; /* step x accumulation: the next micro-batch's dropout counter */
    int64_t total_steps;     /* schedule */
    double sched_factor;
    char *config_yaml;       /* the values the run used (owned, may be NULL) */
} td_state;

void td_state_init(td_state *s);
void td_state_free(td_state *s);
/* Deep copy of the cursor and config. */
int td_state_copy(td_state *dst, const td_state *src, tb_err *err);

/* The hash chain step for one applied batch. */
uint64_t td_state_chain(uint64_t h, uint64_t seq, uint32_t crc);

int td_state_write(const char *path, const td_state *s, tb_err *err);
/* Parses and checks types; on error *s is freed and err names the key. */
int td_state_read(const char *path, td_state *s, tb_err *err);

#endif
