#include "../backend.h"

void tb_cpu_ops_dense_init(tb_ops_dense *ops) {
    ops->reserved = 0;
}
