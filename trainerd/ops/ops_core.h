/* Op family "core" of the backend table (see trainerd/backend.h for conventions). */
#ifndef TB_OPS_CORE_H
#define TB_OPS_CORE_H
#include <stddef.h>
#include <stdint.h>
#include "../real.h"

struct tb_backend;

typedef struct tb_ops_core {
    int reserved; /* placeholder until the family's ops land */
} tb_ops_core;

#endif
