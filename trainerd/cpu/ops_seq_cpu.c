#include "../backend.h"

void tb_cpu_ops_seq_init(tb_ops_seq *ops) {
    ops->reserved = 0;
}
