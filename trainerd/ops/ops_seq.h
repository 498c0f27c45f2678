/* Op family "seq" of the backend table (see trainerd/backend.h for conventions). */
#ifndef TB_OPS_SEQ_H
#define TB_OPS_SEQ_H
#include <stddef.h>
#include <stdint.h>
#include "../real.h"

struct tb_backend;

typedef struct tb_ops_seq {
    int reserved; /* placeholder until the family's ops land */
} tb_ops_seq;

#endif
