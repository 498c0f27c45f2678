/* The CPU table of the "seq" op family (ops/ops_seq.h), filled by the cpu/seq_*.c files. */
#include "../backend.h"

void tb_cpu_seq_retention_init(tb_ops_seq *ops); /* seq_retention.c: retention, Titan */
void tb_cpu_seq_scan_init(tb_ops_seq *ops);      /* seq_scan.c: selective scan, conv */
void tb_cpu_seq_moe_init(tb_ops_seq *ops);       /* seq_moe.c: routing, gather/scatter */
void tb_cpu_seq_elem_init(tb_ops_seq *ops);      /* seq_elem.c: element-wise helpers */

void tb_cpu_ops_seq_init(tb_ops_seq *ops) {
    tb_cpu_seq_retention_init(ops);
    tb_cpu_seq_scan_init(ops);
    tb_cpu_seq_moe_init(ops);
    tb_cpu_seq_elem_init(ops);
}
