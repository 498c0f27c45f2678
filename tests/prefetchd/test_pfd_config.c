/* The daemon's configuration: an unknown key, a value out of range, a bad override and a
 * tcp endpoint without CURVE keys each stop tb-prefetchd with exit 78 and
 * "file:line: key: why"; the example file printed from the schema loads cleanly and
 * deploy/prefetchd.example.yaml is exactly that output (kept in sync). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "pfd_config.h"

static char g_dir[64];

/* Runs tb-prefetchd with args; returns exit status, output in out. */
static int run(char *out, size_t cap, const char *args) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "%s/prefetchd/tb-prefetchd %s 2>&1", TB_BINARY_DIR, args);
    FILE *p = popen(cmd, "r");
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void write_cfg(const char *name, const char *text) {
    char p[200];
    snprintf(p, sizeof p, "%s/%s", g_dir, name);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
}

static void test_bad_config_exits_78_with_file_line_key(void **state) {
    (void)state;
    char out[4096], args[512];
    write_cfg("unknown.yaml", "data:\n  seq_len: 128\n  seq_lenn: 5\n");
    snprintf(args, sizeof args, "-c %s/unknown.yaml --check-config", g_dir);
    assert_int_equal(run(out, sizeof out, args), 78);
    assert_non_null(strstr(out, "unknown.yaml:3"));
    assert_non_null(strstr(out, "seq_lenn"));

    write_cfg("range.yaml", "workers:\n  processes: 1\nring:\n  slots: 1\n");
    snprintf(args, sizeof args, "-c %s/range.yaml --check-config", g_dir);
    assert_int_equal(run(out, sizeof out, args), 78);
    assert_non_null(strstr(out, "range.yaml:4"));
    assert_non_null(strstr(out, "ring.slots"));

    write_cfg("type.yaml", "data:\n  packing: maybe\n");
    snprintf(args, sizeof args, "-c %s/type.yaml --check-config", g_dir);
    assert_int_equal(run(out, sizeof out, args), 78);
    assert_non_null(strstr(out, "type.yaml:2"));
    assert_non_null(strstr(out, "data.packing"));

    assert_int_equal(run(out, sizeof out, "-s data.batch_size=0 --check-config"), 78);
    assert_non_null(strstr(out, "data.batch_size"));

    assert_int_equal(run(out, sizeof out, "-s endpoints.feed=tcp://127.0.0.1:5555 --check-config"), 78);
    assert_non_null(strstr(out, "needs curve.secret_key_file"));
}

static void test_example_config_loads_and_matches_schema_output(void **state) {
    (void)state;
    static char out[65536], file[65536];
    assert_int_equal(run(out, sizeof out, "--print-example-config"), 0);
    char p[300];
    snprintf(p, sizeof p, "%s/example.yaml", g_dir);
    FILE *f = fopen(p, "w");
    fputs(out, f);
    fclose(f);
    char args[400];
    static char vals[65536];
    snprintf(args, sizeof args, "-c %s --check-config", p);
    assert_int_equal(run(vals, sizeof vals, args), 0);
    /* every default survives the round trip */
    pfd_config a, b;
    tb_err err;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    assert_int_equal(pfd_config_load(&a, NULL, NULL, 0, &err), 0);
    assert_int_equal(pfd_config_load(&b, p, NULL, 0, &err), 0);
    char *va = NULL, *vb = NULL;
    size_t la = 0, lb = 0;
    FILE *ma = open_memstream(&va, &la), *mb = open_memstream(&vb, &lb);
    tb_cfg_write_values(ma, &a, &pfd_config_schema);
    tb_cfg_write_values(mb, &b, &pfd_config_schema);
    fclose(ma);
    fclose(mb);
    assert_true(la > 100);
    assert_string_equal(va, vb);
    free(va);
    free(vb);
    /* the checked-in example is the schema's output */
    snprintf(p, sizeof p, "%s/deploy/prefetchd.example.yaml", TB_SOURCE_DIR);
    f = fopen(p, "r");
    assert_non_null(f);
    size_t n = fread(file, 1, sizeof file - 1, f);
    file[n] = '\0';
    fclose(f);
    if (strcmp(file, out) != 0)
        fprintf(stderr, "deploy/prefetchd.example.yaml is stale: regenerate it with "
                        "tb-prefetchd --print-example-config\n");
    assert_string_equal(file, out);
}

/* Workers load the master's effective values as written by tb_cfg_write_values: every
 * value, awkward strings and doubles included, must come back exactly. */
static void test_effective_values_round_trip_for_workers(void **state) {
    (void)state;
    write_cfg("odd.yaml",
              "paths:\n  ring: \"/run/tb/ring with: colon # and hash\"\n"
              "  state_dir: \"/var/lib/tb/'quoted' \\\"dir\\\"\"\n"
              "data:\n  text_field: \"  text  \"\n  mask_prob: 0.1234567890123\n"
              "  seed: 18446744073709551\n  packing: false\n"
              "daemon:\n  log_level: debug\n");
    char p[300];
    snprintf(p, sizeof p, "%s/odd.yaml", g_dir);
    char *over[] = {"data.manifest=\"/etc/tb/m: x.manifest\"", "http.retries=7"};
    pfd_config a, b;
    tb_err err;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    if (pfd_config_load(&a, p, over, 2, &err) != 0) fprintf(stderr, "%s\n", err.msg);
    assert_string_equal(a.ring_path, "/run/tb/ring with: colon # and hash");
    assert_string_equal(a.text_field, "  text  ");
    char *va = NULL;
    size_t la = 0;
    FILE *ma = open_memstream(&va, &la);
    tb_cfg_write_values(ma, &a, &pfd_config_schema);
    fclose(ma);
    snprintf(p, sizeof p, "%s/values.yaml", g_dir);
    FILE *f = fopen(p, "w");
    fputs(va, f);
    fclose(f);
    if (pfd_config_load(&b, p, NULL, 0, &err) != 0) fprintf(stderr, "%s\n%s", err.msg, va);
    assert_string_equal(b.ring_path, a.ring_path);
    assert_string_equal(b.state_dir, a.state_dir);
    assert_string_equal(b.manifest, a.manifest);
    assert_string_equal(b.text_field, a.text_field);
    assert_true(b.mask_prob == a.mask_prob);
    assert_true(b.seed == a.seed);
    assert_int_equal(b.packing, a.packing);
    assert_int_equal(b.http_retries, 7);
    assert_int_equal(b.log_level, 4);
    char *vb = NULL;
    size_t lb = 0;
    FILE *mb = open_memstream(&vb, &lb);
    tb_cfg_write_values(mb, &b, &pfd_config_schema);
    fclose(mb);
    assert_string_equal(va, vb);
    free(va);
    free(vb);
}

static int setup(void **state) {
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/pfdt-cfg-XXXXXX");
    return mkdtemp(g_dir) ? 0 : -1;
}
static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_config_exits_78_with_file_line_key),
        cmocka_unit_test(test_example_config_loads_and_matches_schema_output),
        cmocka_unit_test(test_effective_values_round_trip_for_workers),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
