/* Op family "dense" of the backend table (see trainerd/backend.h for conventions). */
#ifndef TB_OPS_DENSE_H
#define TB_OPS_DENSE_H
#include <stddef.h>
#include <stdint.h>
#include "../real.h"

struct tb_backend;

typedef struct tb_ops_dense {
    int reserved; /* placeholder until the family's ops land */
} tb_ops_dense;

#endif
