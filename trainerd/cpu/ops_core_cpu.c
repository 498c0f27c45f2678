#include "../backend.h"

void tb_cpu_ops_core_init(tb_ops_core *ops) {
    ops->reserved = 0;
}
