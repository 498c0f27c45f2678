/* Masked cross-entropy and accuracy over the head's logits (MODEL.md section 8):
 * CE = Σ over positions with label != -100 of (logsumexp(logits) - logits[label]) / count
 * (0 when count = 0); accuracy = share of those positions whose argmax (lowest index on
 * ties) equals the label (0 when count = 0). */
#ifndef TB_LOSS_H
#define TB_LOSS_H
#include <stddef.h>
#include <stdint.h>
#include "../real.h"
#include "tb_err.h"

struct tb_backend;

#define TB_LABEL_IGNORE (-100)

typedef struct tb_ce_result {
    double loss;     /* CE (mean) */
    double accuracy;
    double sum;      /* Σ CE */
    int64_t count;   /* supervised positions */
    int64_t correct;
} tb_ce_result;

/* 0 if every label is -100 or in [0, V), else -1 naming the position and value. */
int loss_check_labels(tb_err *err, const int32_t *labels, size_t n, int V);

/* Supervised positions (label in [0, V)) of host labels: the count loss_backward takes,
 * counted by the caller because the op's labels may live in backend memory. */
int64_t loss_count_labels(const int32_t *labels, size_t n, int V);

size_t loss_act_count(size_t ntok); /* ntok (the logsumexp of each row) */

void loss_forward(const struct tb_backend *be, tb_ce_result *res,
                  real *act,              // loss_act_count
                  const real *logits,     // (ntok, V)
                  const int32_t *labels,  // (ntok)
                  size_t ntok, int V);
/* dlogits = dloss · dCE/dlogits (dloss = dL/dCE; zeros when count = 0), count =
 * loss_count_labels of the same labels. dlogits may be logits (the model's one buffer). */
void loss_backward(const struct tb_backend *be,
                   real *dlogits,          // (ntok, V) =, may equal logits
                   const real *act, const real *logits,
                   const int32_t *labels,  // (ntok)
                   int64_t count, real dloss, size_t ntok, int V);

#endif
