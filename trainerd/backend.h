/* The op interface: a backend is a table of ops (forward and backward kernels) over
 * tensors in the backend's memory. The model (trainerd/layers/, trainerd/model.c) is
 * written once over this table; the CPU backend (trainerd/cpu/) is the reference and the
 * oracle; a CUDA backend fills the same table. Ops know shapes, not layers.
 *
 * Conventions for every op (STYLE.md):
 * - outputs first, then inputs, then sizes, then the backend context;
 * - forward ops overwrite their outputs; backward ops ACCUMULATE (+=) into gradient
 *   outputs (input gradients and parameter gradients), so two calls equal one call on
 *   the concatenation and shared parameters (loops) sum naturally;
 * - every tensor pointer carries a shape comment.
 * The table is split by family, each family's header owned by its file set. */
#ifndef TB_BACKEND_H
#define TB_BACKEND_H
#include <stddef.h>
#include <stdint.h>
#include "real.h"
#include "ops/ops_core.h"
#include "ops/ops_dense.h"
#include "ops/ops_seq.h"

typedef struct tb_backend {
    const char *name; /* "cpu", "cuda" */
    tb_ops_core core;   /* GEMM, element-wise, reductions, optimizer (ops_core.h) */
    tb_ops_dense dense; /* BitLinear, norms, embedding, position encoding, attention, loss */
    tb_ops_seq seq;     /* retention, selective scan, Titan memory, MoE routing */
    void *impl;         /* backend-private context (CUDA: stream, handles, workspace) */
} tb_backend;

/* The CPU backend (a static table; never NULL). */
const tb_backend *tb_backend_cpu(void);

/* Each family's CPU table, filled by trainerd/cpu/<family>*.c. */
void tb_cpu_ops_core_init(tb_ops_core *ops);
void tb_cpu_ops_dense_init(tb_ops_dense *ops);
void tb_cpu_ops_seq_init(tb_ops_seq *ops);

#endif
