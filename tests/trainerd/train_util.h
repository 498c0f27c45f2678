/* Shared by the fp32 training tests: a small config and synthetic MLM batches. */
#ifndef TB_TEST_TRAIN_UTIL_H
#define TB_TEST_TRAIN_UTIL_H
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "model/config.h"
#include "model/train.h"
#include "tb_rng.h"

/* The tiny preset shrunk (C 32, V 211, F 64, 4 heads); every mixer of its pattern. */
static inline int test_small_config(tb_run_config *rc, tb_err *err) {
    if (tb_run_config_preset(rc, "tiny", err)) return -1;
    rc->model.vocab_size = 211;
    rc->model.hidden_size = 32;
    rc->model.factorized_embedding_dim = 16;
    rc->model.ffn_hidden_size = 64;
    rc->training.scheduler_total_steps = 100;
    rc->training.seed = 11;
    return tb_run_config_finish(rc, err);
}

/* Deterministic synthetic batch k: ids from a Zipf-like draw; 15% supervised positions
 * whose input id is replaced by 3 (a stand-in [MASK]). */
static inline void test_make_batch(int32_t *ids, int32_t *labels, int B, int T, int V, uint32_t k) {
    tb_rng r;
    tb_rng_init(&r, 77, TB_RNG_TEST, k, 0, 0);
    for (int i = 0; i < B * T; i++) {
        uint32_t u = tb_rng_below(&r, (uint32_t)V - 4), v = tb_rng_below(&r, u + 1);
        int32_t id = 4 + (int32_t)v; /* skewed towards small ids */
        if (tb_rng_below(&r, 100) < 15) {
            labels[i] = id;
            ids[i] = 3;
        } else {
            labels[i] = -100;
            ids[i] = id;
        }
    }
}

#endif
