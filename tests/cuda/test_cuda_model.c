/* The whole model on the CUDA backend against the CPU backend (issue 6): the tiny and
 * mini presets (reduced T), use_bitnet false, dropout off (MODEL.md section 12), built
 * from one seed on both backends through the backend memory interface. Checks: the
 * initial parameters are bit-identical (host init staged to the device); the loss terms
 * agree; every gradient tensor's relative error max|gpu - cpu| / max|cpu| <= 1e-5.
 * Only norm parameters may fall back to the error scaled by the largest gradient of the
 * model (MODEL.md section 12: derf s); every tensor that needs it is printed.
 * Without a device: "SKIP: no CUDA device", exit 77. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include "cuda_test_util.h"
#include "model/config.h"
#include "model/model.h"
#include "tb_rng.h"

typedef struct side {
    tb_model m;
    tb_fwd_result r;
} side;

static double rel_scalar(double g, double c) {
    double d = fabs(g - c), s = fabs(c);
    return d / (s > 1e-30 ? s : 1e-30);
}

/* Backend memory -> new host buffer. */
static void *down(const tb_backend *be, const void *src, size_t bytes) {
    void *h = ct_hmalloc(bytes);
    be->core.to_host(h, src, bytes);
    return h;
}

static double max_abs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        if (fabs((double)x[i]) > m) m = fabs((double)x[i]);
    return m;
}

static double max_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

/* prec: the GPU's GEMM precision (bound CT_TOL in fp32, 2e-2 in bf16 / fp16); fp16 runs
 * its backward with the first dynamic loss scale (1024) and divides it out, as the
 * trainer does; plain: softmax attention through the plain kernels (stored P). */
static void compare_model(const char *preset, int B, int T, double lambda_ode, int prec, int plain) {
    tb_err err = {{0}};
    double tol = prec == TB_PREC_FP32 ? CT_TOL : 2e-2, gseed = prec == TB_PREC_FP16 ? 1024.0 : 1.0;
    assert_int_equal(ct_gpu->core.set_precision(prec), prec);
    tb_cuda_force_plain_attention(plain);
    tb_run_config rc;
    if (tb_run_config_preset(&rc, preset, &err)) fail_msg("%s", err.msg);
    tb_model_config mc = rc.model;
    mc.use_bitnet = 0;
    mc.dropout = 0;
    mc.lambda_ode = lambda_ode;
    if (tb_model_config_finish(&mc, &err)) fail_msg("%s", err.msg);
    static side cpu, gpu;
    if (tb_model_create(&cpu.m, &mc, ct_cpu, B, T, &err)) fail_msg("cpu: %s", err.msg);
    if (tb_model_create(&gpu.m, &mc, ct_gpu, B, T, &err)) fail_msg("cuda: %s", err.msg);
    const uint64_t seed = 20261122;
    tb_model_init(&cpu.m, seed);
    tb_model_init(&gpu.m, seed);
    const tb_params *pc = &cpu.m.p, *pg = &gpu.m.p;
    assert_int_equal(pc->total, pg->total);
    printf("%s: %d tensors, %zu parameters, B %d T %d, lambda_ode %g, arena %.1f MiB, GEMMs %s,"
           " attention %s\n", preset, pc->count, pc->total, B, T, lambda_ode,
           tb_model_arena_bytes(&gpu.m) / 1048576.0,
           prec == TB_PREC_BF16 ? "bf16" : prec == TB_PREC_FP16 ? "fp16" : "fp32",
           plain ? "plain" : "fused where it fits");
    /* Initial parameters: the device copy of the host initialisation, bit for bit. */
    float *w = down(ct_gpu, pg->param, pg->total * sizeof(float));
    assert_memory_equal(w, pc->param, pg->total * sizeof(float));
    free(w);

    size_t n = (size_t)B * T;
    int V = (int)mc.vocab_size;
    int32_t *ids = ct_hmalloc(n * sizeof *ids), *labels = ct_hmalloc(n * sizeof *labels);
    uint8_t *mask = ct_hmalloc(n);
    tb_rng r;
    tb_rng_init(&r, 11, TB_RNG_TEST, 2, 0, 0);
    for (size_t i = 0; i < n; i++) {
        ids[i] = (int32_t)tb_rng_below(&r, (uint32_t)V);
        labels[i] = i % 4 == 1 ? (int32_t)tb_rng_below(&r, (uint32_t)V) : -100;
        /* last two tokens of the last sequence are padding */
        mask[i] = !(i / (size_t)T == (size_t)B - 1 && i % (size_t)T >= (size_t)T - 2);
    }
    tb_batch bt = {ids, labels, mask, B, T};
    if (tb_model_forward(&cpu.m, &bt, NULL, &cpu.r, &err)) fail_msg("cpu forward: %s", err.msg);
    if (tb_model_forward(&gpu.m, &bt, NULL, &gpu.r, &err)) fail_msg("cuda forward: %s", err.msg);

    /* Forward diagnostics: each logical layer's input, then the logits. */
    size_t C = (size_t)mc.hidden_size;
    double worst_act = 0;
    for (int l = 0; l <= cpu.m.nlogical; l++) {
        const real *xc = l < cpu.m.nlogical ? cpu.m.ls[l].x : cpu.m.x_final;
        const real *xg = l < gpu.m.nlogical ? gpu.m.ls[l].x : gpu.m.x_final;
        float *h = down(ct_gpu, xg, n * C * sizeof(float));
        double e = ct_rel_err(h, xc, n * C);
        if (!(e <= worst_act)) worst_act = e;
        printf("  %s: layer %2d input rel err %.3e\n", preset, l, e);
        free(h);
    }
    float *lg = down(ct_gpu, gpu.m.logits, n * (size_t)V * sizeof(float));
    double e_logits = ct_rel_err(lg, cpu.m.logits, n * (size_t)V);
    free(lg);
    printf("  %s: logits rel err %.3e\n", preset, e_logits);
    printf("  %s: loss cpu %.9f cuda %.9f (rel %.3e); ce rel %.3e; l_bal %.9g / %.9g (rel %.3e);"
           " l_ode %.9g / %.9g (rel %.3e); correct %lld / %lld of %lld\n",
           preset, cpu.r.loss, gpu.r.loss, rel_scalar(gpu.r.loss, cpu.r.loss),
           rel_scalar(gpu.r.ce, cpu.r.ce), cpu.r.l_bal, gpu.r.l_bal,
           rel_scalar(gpu.r.l_bal, cpu.r.l_bal), cpu.r.l_ode, gpu.r.l_ode,
           rel_scalar(gpu.r.l_ode, cpu.r.l_ode), (long long)cpu.r.correct,
           (long long)gpu.r.correct, (long long)cpu.r.count);

    tb_model_backward(&cpu.m, &bt, 1.0);
    tb_model_backward(&gpu.m, &bt, gseed);
    float *gg = down(ct_gpu, pg->grad, pg->total * sizeof(float));
    for (size_t i = 0; i < pg->total; i++) gg[i] = (float)(gg[i] / gseed);
    const float *gc = pc->grad;
    double gmax = max_abs(gc, pc->total);
    double worst = 0, worst_scaled = 0;
    const char *worst_name = "";
    int nfail = 0, nscaled = 0, nfail_prev = 0;
    for (int i = 0; i < pc->count; i++) {
        const tb_tensor *t = &pc->t[i];
        const float *a = gg + t->offset, *b = gc + t->offset;
        double m = max_abs(b, t->numel), d = max_diff(a, b, t->numel);
        double e = d / (m > 1e-30 ? m : 1e-30), es = d / (gmax > 1e-30 ? gmax : 1e-30);
        const char *verdict = "ok";
        if (!(e <= tol)) {
            if (t->group == TB_GROUP_NORMS && es <= tol) {
                verdict = "ok (scaled by the largest gradient)";
                nscaled++;
                if (es > worst_scaled) worst_scaled = es;
            } else {
                verdict = "FAIL";
                nfail++;
            }
        }
        /* worst over the tensors held to the per-tensor bound (failures included) */
        if (strcmp(verdict, "ok") == 0 || nfail_prev != nfail) {
            if (!(e <= worst)) {
                worst = e;
                worst_name = t->name;
            }
        }
        nfail_prev = nfail;
        printf("  %s: grad %-44s n %9zu max|cpu| %.3e rel %.3e scaled %.3e %s\n", preset,
               t->name, t->numel, m, e, es, verdict);
    }
    free(gg);
    printf("%s: %d gradient tensors, largest |grad| %.3e; worst per-tensor rel err %.3e (%s);"
           " %d norm tensors need the scaled tolerance (worst %.3e); %d fail; worst layer "
           "input %.3e\n",
           preset, pc->count, gmax, worst, worst_name, nscaled, worst_scaled, nfail, worst_act);
    assert_true(rel_scalar(gpu.r.loss, cpu.r.loss) <= tol);
    assert_true(rel_scalar(gpu.r.ce, cpu.r.ce) <= tol);
    assert_true(fabs(gpu.r.l_bal - cpu.r.l_bal) <= tol * (fabs(cpu.r.l_bal) + 1e-30));
    assert_true(fabs(gpu.r.l_ode - cpu.r.l_ode) <= tol * (fabs(cpu.r.l_ode) + 1e-30));
    assert_true(gpu.r.count == cpu.r.count);
    assert_int_equal(nfail, 0);
    ct_gpu->core.set_precision(TB_PREC_FP32);
    tb_cuda_force_plain_attention(0);
    free(ids);
    free(labels);
    free(mask);
    tb_model_free(&cpu.m);
    tb_model_free(&gpu.m);
}

static void test_tiny_model_loss_and_every_gradient_match_cpu(void **s) {
    (void)s;
    compare_model("tiny", 2, 64, 0.1, TB_PREC_FP32, 0);
}

static void test_mini_model_loss_and_every_gradient_match_cpu(void **s) {
    (void)s;
    compare_model("mini", 2, 32, 0.0, TB_PREC_FP32, 0);
}

static void test_tiny_and_mini_in_bf16_match_cpu(void **s) {
    (void)s;
    compare_model("tiny", 2, 64, 0.1, TB_PREC_BF16, 0);
    compare_model("mini", 2, 32, 0.0, TB_PREC_BF16, 0);
}

/* The bf16 mode with the fused attention on bf16 tensor cores (tb_cuda_tensor_core_tiles). */
static void test_tiny_and_mini_in_bf16_with_tensor_core_attention_match_cpu(void **s) {
    (void)s;
    tb_cuda_tensor_core_tiles(1);
    compare_model("tiny", 2, 64, 0.1, TB_PREC_BF16, 0);
    compare_model("mini", 2, 32, 0.0, TB_PREC_BF16, 0);
    tb_cuda_tensor_core_tiles(0);
}

/* The P40's paths forced on this GPU: fp16 GEMMs with the loss scale, plain attention;
 * and fp32 with plain attention. */
static void test_p40_paths_fp16_loss_scale_and_plain_attention_match_cpu(void **s) {
    (void)s;
    compare_model("tiny", 2, 64, 0.1, TB_PREC_FP16, 1);
    compare_model("mini", 2, 32, 0.0, TB_PREC_FP16, 1);
    compare_model("tiny", 2, 64, 0.1, TB_PREC_FP32, 1);
}

int main(void) {
    ct_init_or_skip();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_model_loss_and_every_gradient_match_cpu),
        cmocka_unit_test(test_mini_model_loss_and_every_gradient_match_cpu),
        cmocka_unit_test(test_tiny_and_mini_in_bf16_match_cpu),
        cmocka_unit_test(test_tiny_and_mini_in_bf16_with_tensor_core_attention_match_cpu),
        cmocka_unit_test(test_p40_paths_fp16_loss_scale_and_plain_attention_match_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
