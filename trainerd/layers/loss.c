#include "loss.h"
#include "../backend.h"

int loss_check_labels(tb_err *err, const int32_t *labels, size_t n, int V) {
    for (size_t t = 0; t < n; t++)
        if (labels[t] != TB_LABEL_IGNORE && (labels[t] < 0 || labels[t] >= V))
            return tb_err_set(err, "labels[%zu]: %d is neither -100 nor in [0, %d)", t,
                              (int)labels[t], V);
    return 0;
}

int64_t loss_count_labels(const int32_t *labels, size_t n, int V) {
    int64_t count = 0;
    for (size_t t = 0; t < n; t++) count += labels[t] >= 0 && labels[t] < V;
    return count;
}

size_t loss_act_count(size_t ntok) {
    return ntok;
}

void loss_forward(const tb_backend *be, tb_ce_result *res, real *act, const real *logits,
                  const int32_t *labels, size_t ntok, int V) {
    be->dense.xent_fwd(act, &res->sum, &res->count, &res->correct, logits, labels, ntok, V);
    res->loss = res->count ? res->sum / (double)res->count : 0.0;
    res->accuracy = res->count ? (double)res->correct / (double)res->count : 0.0;
}

void loss_backward(const tb_backend *be, real *dlogits, const real *act, const real *logits,
                   const int32_t *labels, int64_t count, real dloss, size_t ntok, int V) {
    if (count == 0) { /* no supervised row: a zero gradient (dlogits may hold the logits) */
        be->core.fill(dlogits, R(0.0), ntok * (size_t)V);
        return;
    }
    be->dense.xent_bwd(dlogits, logits, act, labels, dloss / (real)count, ntok, V);
}
