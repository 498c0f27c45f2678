#include "../backend.h"
#include <pthread.h>
#include <stdlib.h>
#include "core_cpu.h"

static tb_backend cpu_backend;
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

static void cpu_backend_init(void) {
    cpu_backend.name = "cpu";
    tb_cpu_ops_core_init(&cpu_backend.core);
    tb_cpu_ops_dense_init(&cpu_backend.dense);
    const char *ref = getenv("TB_CPU_REFERENCE");
    if (!ref || !*ref || *ref == '0') tb_cpu_core_accelerate_dense(&cpu_backend.dense);
    tb_cpu_ops_seq_init(&cpu_backend.seq);
    cpu_backend.impl = NULL;
}

const tb_backend *tb_backend_cpu(void) {
    pthread_once(&cpu_once, cpu_backend_init);
    return &cpu_backend;
}
