#include "../backend.h"
#include "dense_cpu.h"

void tb_cpu_ops_dense_init(tb_ops_dense *ops) {
    ops->linear_fwd = dense_cpu_linear_fwd;
    ops->linear_bwd = dense_cpu_linear_bwd;
    ops->bitlinear_quant_w = dense_cpu_bitlinear_quant_w;
    ops->bitlinear_quant_x = dense_cpu_bitlinear_quant_x;
    ops->bitlinear_fwd = dense_cpu_bitlinear_fwd;
    ops->bitlinear_bwd = dense_cpu_bitlinear_bwd;
    ops->norm_fwd = dense_cpu_norm_fwd;
    ops->norm_bwd = dense_cpu_norm_bwd;
    ops->norm_bwd_to = dense_cpu_norm_bwd_to;
    ops->dropout_fwd = dense_cpu_dropout_fwd;
    ops->dropout_bwd = dense_cpu_dropout_bwd;
    ops->embed_fwd = dense_cpu_embed_fwd;
    ops->embed_bwd = dense_cpu_embed_bwd;
    ops->conv1d_fwd = dense_cpu_conv1d_fwd;
    ops->conv1d_bwd = dense_cpu_conv1d_bwd;
    ops->posenc_apply = dense_cpu_posenc_apply;
    ops->attn_fwd = dense_cpu_attn_fwd;
    ops->attn_bwd = dense_cpu_attn_bwd;
    ops->xent_fwd = dense_cpu_xent_fwd;
    ops->xent_bwd = dense_cpu_xent_bwd;
    ops->axpy = dense_cpu_axpy;
    ops->sum_squares = dense_cpu_sum_squares;
}
