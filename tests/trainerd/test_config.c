/* Config and parameter registry: presets give MODEL.md's parameter counts; the
 * reference's key sets (fixtures) load unchanged and give the presets' names and shapes;
 * bad values fail with a message naming the key. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>
#include "model/config.h"
#include "model/params.h"

static int64_t preset_count(const char *name) {
    tb_run_config rc;
    tb_err err = {{0}};
    int rv = tb_run_config_preset(&rc, name, &err);
    if (rv) printf("%s\n", err.msg);
    assert_int_equal(rv, 0);
    return tb_params_count(&rc.model);
}

static void test_preset_param_counts_match_model_md(void **s) {
    (void)s;
    assert_int_equal(preset_count("tiny"), 3662692);
    assert_int_equal(preset_count("mini"), 44525990);
    assert_int_equal(preset_count("frankenstein"), 369600544);
    assert_int_equal(preset_count("ultra"), 1177237664);
}

static void test_unknown_preset_is_rejected(void **s) {
    (void)s;
    tb_run_config rc;
    tb_err err = {{0}};
    assert_int_equal(tb_run_config_preset(&rc, "huge", &err), -1);
    assert_non_null(strstr(err.msg, "huge"));
}

static void same_registry(const char *fixture, const char *preset) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/trainerd/fixtures/%s", TB_SOURCE_DIR, fixture);
    tb_run_config a, b;
    tb_err err = {{0}};
    int rv = tb_run_config_load(&a, path, &err);
    if (rv) printf("%s\n", err.msg);
    assert_int_equal(rv, 0);
    assert_int_equal(tb_run_config_preset(&b, preset, &err), 0);
    tb_params pa, pb;
    assert_int_equal(tb_params_build(&pa, &a.model, &err), 0);
    assert_int_equal(tb_params_build(&pb, &b.model, &err), 0);
    assert_int_equal(pa.count, pb.count);
    for (int i = 0; i < pa.count; i++) {
        assert_string_equal(pa.t[i].name, pb.t[i].name);
        assert_int_equal(pa.t[i].ndim, pb.t[i].ndim);
        for (int d = 0; d < pa.t[i].ndim; d++) assert_int_equal(pa.t[i].shape[d], pb.t[i].shape[d]);
    }
    assert_int_equal(pa.total, pb.total);
    tb_params_free(&pa);
    tb_params_free(&pb);
}

static void test_reference_mini_yaml_matches_preset_mini(void **s) {
    (void)s;
    same_registry("mini.yaml", "mini");
}

static void test_reference_frankenstein_yaml_matches_preset(void **s) {
    (void)s;
    same_registry("frankenstein.yaml", "frankenstein");
}

static void test_reference_yaml_values_are_loaded(void **s) {
    (void)s;
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/trainerd/fixtures/mini.yaml", TB_SOURCE_DIR);
    tb_run_config rc;
    tb_err err = {{0}};
    assert_int_equal(tb_run_config_load(&rc, path, &err), 0);
    assert_string_equal(rc.model_class, "mini");
    assert_int_equal(rc.training.batch_size, 8);
    assert_int_equal(rc.training.gradient_accumulation_steps, 4);
    assert_true(rc.training.group[TB_GROUP_ODE].lr == 1e-7);
    assert_true(rc.training.group[TB_GROUP_NORMS].wd == 0.001);
    assert_true(rc.training.group[TB_GROUP_RETNET].beta2 == 0.95);
    assert_true(rc.training.grad_clip_max_norm == 5.0);
    assert_int_equal(rc.model.pos_encoding, TB_CFG_POS_HOPE);
    assert_int_equal(rc.model.pattern_len, 6);
    assert_int_equal(rc.model.pattern[3], TB_MIXER_MAMBA);
}

static void test_defaults_are_model_md_section_10(void **s) {
    (void)s;
    tb_run_config rc;
    tb_err err = {{0}};
    assert_int_equal(tb_run_config_preset(&rc, "tiny", &err), 0);
    const double lr[TB_GROUP_COUNT] = {1e-4, 2e-4, 5e-5, 1.5e-4, 1e-4, 1e-4, 1e-4};
    for (int g = 0; g < TB_GROUP_COUNT; g++) {
        assert_true(rc.training.group[g].lr == lr[g]);
        assert_true(rc.training.group[g].wd == (g == TB_GROUP_NORMS ? 0.001 : 0.01));
        assert_true(rc.training.group[g].beta1 == 0.9 && rc.training.group[g].beta2 == 0.95);
        assert_true(rc.training.group[g].eps == 1e-8);
    }
    assert_true(rc.training.grad_clip_max_norm == 1.0);
    assert_true(rc.training.scheduler_warmup_ratio == 0.1);
    assert_true(rc.training.min_lr_ratio == 0.1);
}

static int load_str(tb_run_config *rc, const char *yaml, tb_err *err) {
    if (tb_run_config_defaults(rc, err)) return -1;
    if (tb_cfg_load_string(rc, tb_run_config_schema(), "t.yaml", yaml, NULL, err)) return -1;
    return tb_run_config_finish(rc, err);
}

static void test_bad_values_name_the_key(void **s) {
    (void)s;
    tb_run_config rc;
    tb_err err = {{0}};
    assert_int_equal(load_str(&rc, "model:\n  layer_pattern: [retnet, lstm]\n", &err), -1);
    assert_non_null(strstr(err.msg, "layer_pattern"));
    printf("%s\n", err.msg);
    assert_int_equal(load_str(&rc, "model:\n  hidden_size: 100\n  num_heads: 3\n", &err), -1);
    assert_non_null(strstr(err.msg, "num_heads"));
    printf("%s\n", err.msg);
    assert_int_equal(load_str(&rc, "training:\n  optimizer:\n    parameters:\n"
                                   "      adamw-betas_ode: [0.9, x]\n", &err), -1);
    assert_non_null(strstr(err.msg, "adamw-betas_ode"));
    printf("%s\n", err.msg);
    assert_int_equal(load_str(&rc, "model:\n  num_experts: 2\n  top_k_experts: 3\n", &err), -1);
    assert_non_null(strstr(err.msg, "top_k_experts"));
    assert_int_equal(load_str(&rc, "model:\n  widht: 3\n", &err), -1);
    printf("%s\n", err.msg);
}

static void test_registry_groups_follow_owning_layer(void **s) {
    (void)s;
    tb_run_config rc;
    tb_err err = {{0}};
    assert_int_equal(tb_run_config_preset(&rc, "tiny", &err), 0);
    tb_params p;
    assert_int_equal(tb_params_build(&p, &rc.model, &err), 0);
    struct { const char *name; int group; int bit; } want[] = {
        {"emb.embedding.weight", TB_GROUP_EMBEDDINGS, 0},
        {"emb.conv.weight", TB_GROUP_EMBEDDINGS, 0},
        {"emb.proj.weight", TB_GROUP_EMBEDDINGS, 1},
        {"layers.0.norm1.alpha", TB_GROUP_NORMS, 0},
        {"layers.0.mixer.q_proj.weight", TB_GROUP_RETNET, 1},
        {"layers.0.mixer.norm.gamma", TB_GROUP_NORMS, 0},
        {"layers.1.mixer.k_proj.weight", TB_GROUP_ATTENTION, 1},
        {"layers.3.mixer.dt_proj.weight", TB_GROUP_MAMBA, 0},
        {"layers.3.mixer.mem_decay", TB_GROUP_MAMBA, 0},
        {"layers.5.mixer.ode_func.qkv.weight", TB_GROUP_ODE, 1},
        {"layers.5.mixer.ode_func.norm.s", TB_GROUP_NORMS, 0},
        {"layers.5.router.weight", TB_GROUP_OTHER, 0},
        {"layers.5.experts.3.2.weight", TB_GROUP_OTHER, 1},
        {"final_norm.beta", TB_GROUP_NORMS, 0},
        {"head.weight", TB_GROUP_OTHER, 1},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        int ix = tb_params_find(&p, want[i].name);
        if (ix < 0) printf("missing %s\n", want[i].name);
        assert_true(ix >= 0);
        assert_int_equal(p.t[ix].group, want[i].group);
        assert_int_equal(p.t[ix].bitlinear, want[i].bit);
    }
    int ix = tb_params_find(&p, "layers.3.mixer.conv1d.weight");
    assert_int_equal(p.t[ix].shape[0], 256);
    assert_int_equal(p.t[ix].shape[1], 1);
    assert_int_equal(p.t[ix].shape[2], 4);
    ix = tb_params_find(&p, "layers.3.mixer.x_proj.weight");
    assert_int_equal(p.t[ix].shape[0], 8 + 32);
    assert_int_equal(p.t[ix].shape[1], 256);
    tb_params_free(&p);
}

static void test_init_is_reproducible_and_follows_section_9(void **s) {
    (void)s;
    tb_run_config rc;
    tb_err err = {{0}};
    assert_int_equal(tb_run_config_preset(&rc, "tiny", &err), 0);
    rc.model.vocab_size = 300;
    tb_params a, b;
    assert_int_equal(tb_params_build(&a, &rc.model, &err), 0);
    assert_int_equal(tb_params_build(&b, &rc.model, &err), 0);
    assert_int_equal(tb_params_alloc(&a, &err), 0);
    assert_int_equal(tb_params_alloc(&b, &err), 0);
    tb_params_init(&a, 42);
    tb_params_init(&b, 42);
    assert_memory_equal(a.param, b.param, a.total * sizeof(real));
    tb_params_init(&b, 43);
    assert_memory_not_equal(a.param, b.param, a.total * sizeof(real));
    /* Linear bounds, constants, A_log, dt bias range. */
    int q = tb_params_find(&a, "layers.0.mixer.q_proj.weight");
    real *w = tb_params_w(&a, q);
    double bound = 1 / sqrt(128.0), mx = 0;
    for (size_t i = 0; i < a.t[q].numel; i++) mx = fabs(w[i]) > mx ? fabs(w[i]) : mx;
    assert_true(mx <= bound && mx > 0.9 * bound);
    int al = tb_params_find(&a, "layers.3.mixer.A_log");
    assert_true(fabs(tb_params_w(&a, al)[17] - log(2.0)) < 1e-6); /* row 1, n = 1 */
    int db = tb_params_find(&a, "layers.3.mixer.dt_proj.bias");
    for (size_t i = 0; i < a.t[db].numel; i++) {
        double x = tb_params_w(&a, db)[i], dt = log1p(exp(x));
        assert_true(dt >= 0.999e-3 && dt <= 1.001e-1);
    }
    int md = tb_params_find(&a, "layers.3.mixer.mem_decay");
    assert_true(tb_params_w(&a, md)[0] == (real)2.2);
    int e = tb_params_find(&a, "emb.embedding.weight");
    double s2 = 0;
    for (size_t i = 0; i < a.t[e].numel; i++) s2 += tb_params_w(&a, e)[i] * tb_params_w(&a, e)[i];
    s2 /= (double)a.t[e].numel;
    assert_true(s2 > 0.9 && s2 < 1.1); /* N(0, 1) */
    tb_params_free(&a);
    tb_params_free(&b);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_preset_param_counts_match_model_md),
        cmocka_unit_test(test_unknown_preset_is_rejected),
        cmocka_unit_test(test_reference_mini_yaml_matches_preset_mini),
        cmocka_unit_test(test_reference_frankenstein_yaml_matches_preset),
        cmocka_unit_test(test_reference_yaml_values_are_loaded),
        cmocka_unit_test(test_defaults_are_model_md_section_10),
        cmocka_unit_test(test_bad_values_name_the_key),
        cmocka_unit_test(test_registry_groups_follow_owning_layer),
        cmocka_unit_test(test_init_is_reproducible_and_follows_section_9),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
