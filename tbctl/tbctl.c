/* tbctl: the operator's client for tb-prefetchd and tb-trainerd (control REP, metrics PUB).
 *
 *   tbctl [OPTIONS] status | pause | resume | stop
 *   tbctl [OPTIONS] shards list | shards set FILE | shards add PATH|URL | shards remove PATH|URL
 *   tbctl [OPTIONS] reload [--wait]
 *   tbctl [OPTIONS] tail [--json] [--topic T] [--count N]
 *   tbctl plot CSV -o OUT.png      (trainerd's CSV: loss, accuracy, lr, tokens/s vs steps;
 *                                   gnuplot, Debian package gnuplot-nox)
 *   tbctl [OPTIONS] VERB [KEY=VALUE | VALUE]...   (any other verb is passed through: e.g.
 *                                                  trainerd's `checkpoint`, `set-lr-scale 0.5`)
 * Options: --daemon prefetchd|trainerd (default endpoints), --endpoint E (control, or the
 * metrics endpoint for tail), --timeout MS, --json, --server-key FILE --client-key FILE
 * (CURVE for tcp:// endpoints). Exit: 0 ok, 1 the daemon said no, 2 no reply, 64 usage. */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <zmq.h>

#include "tb_endpoint.h"
#include "tb_clock.h"
#include "tb_proto_ctl.h"

static volatile sig_atomic_t g_stop;
static void on_sig(int s) {
    (void)s;
    g_stop = 1;
}

static void usage(FILE *f) {
    fputs("usage: tbctl [--daemon prefetchd|trainerd] [--endpoint E] [--timeout MS] [--json]\n"
          "             [--server-key FILE --client-key FILE] COMMAND\n"
          "commands: status | pause | resume | stop | reload [--wait]\n"
          "          shards list | shards set FILE | shards add LOC | shards remove LOC\n"
          "          tail [--json] [--topic T] [--count N]\n"
          "          plot CSV -o OUT.png   (trainerd CSV: 4 panels; needs gnuplot)\n"
          "          VERB [KEY=VALUE | VALUE]...   (passed through to the daemon)\n",
          f);
}

static json_t *kv_json(const tb_kvmap *m) {
    json_t *o = json_object();
    for (size_t i = 0; i < m->n; i++) {
        const tb_kv *kv = &m->items[i];
        json_t *v = kv->type == TB_KV_INT      ? json_integer(kv->v.i)
                    : kv->type == TB_KV_DOUBLE ? json_real(kv->v.d)
                    : kv->type == TB_KV_BOOL   ? json_boolean(kv->v.b)
                                               : json_string(kv->v.s);
        json_object_set_new(o, kv->key, v ? v : json_null());
    }
    return o;
}

static void kv_print(FILE *f, const tb_kv *kv) {
    switch (kv->type) {
    case TB_KV_INT: fprintf(f, "%lld", (long long)kv->v.i); break;
    case TB_KV_DOUBLE: fprintf(f, "%.6g", kv->v.d); break;
    case TB_KV_BOOL: fputs(kv->v.b ? "true" : "false", f); break;
    case TB_KV_STR: fputs(kv->v.s, f); break;
    }
}

/* VALUE text -> typed kv: integer, number, true/false, else string. */
static int add_arg(tb_kvmap *m, const char *key, const char *val, tb_err *err) {
    char *end;
    errno = 0;
    long long i = strtoll(val, &end, 10);
    if (*val && !*end && errno == 0) return tb_kvmap_add_int(m, key, i, err);
    double d = strtod(val, &end);
    if (*val && !*end) return tb_kvmap_add_double(m, key, d, err);
    if (!strcmp(val, "true") || !strcmp(val, "false"))
        return tb_kvmap_add_bool(m, key, !strcmp(val, "true"), err);
    return tb_kvmap_add_str(m, key, val, err);
}

static void *open_socket(void *ctx, int type, const char *ep, const char *skey, const char *ckey,
                         tb_err *err) {
    void *s = zmq_socket(ctx, type);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    int64_t max = TB_PROTO_MAX_MSG;
    zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &max, sizeof max);
    if (tb_endpoint_client_curve(s, ep, skey, ckey, err) < 0 || zmq_connect(s, ep) != 0) {
        if (!err->msg[0]) tb_err_set(err, "connect %s: %s", ep, zmq_strerror(errno));
        zmq_close(s);
        return NULL;
    }
    return s;
}

static int do_tail(void *ctx, const char *ep, const char *skey, const char *ckey, int json,
                   const char *topic, long count) {
    tb_err err = {""};
    void *s = open_socket(ctx, ZMQ_SUB, ep, skey, ckey, &err);
    if (!s) {
        fprintf(stderr, "tbctl: %s\n", err.msg);
        return 2;
    }
    zmq_setsockopt(s, ZMQ_SUBSCRIBE, topic, strlen(topic));
    int to = 200;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &to, sizeof to);
    long got = 0;
    while (!g_stop && (count <= 0 || got < count)) {
        zmq_msg_t t, m;
        zmq_msg_init(&t);
        if (zmq_msg_recv(&t, s, 0) < 0) {
            zmq_msg_close(&t);
            continue;
        }
        if (!zmq_msg_more(&t)) {
            zmq_msg_close(&t);
            continue;
        }
        zmq_msg_init(&m);
        zmq_msg_recv(&m, s, 0);
        tb_metrics rec;
        if (tb_proto_decode_metrics(zmq_msg_data(&m), zmq_msg_size(&m), &rec, &err) < 0) {
            fprintf(stderr, "tbctl: bad record: %s\n", err.msg);
        } else {
            if (json) {
                json_t *o = json_pack("{s:s, s:I, s:f, s:o}", "topic", rec.topic, "seq",
                                      (json_int_t)rec.seq, "time", rec.time, "fields",
                                      kv_json(&rec.fields));
                char *txt = json_dumps(o, JSON_COMPACT);
                puts(txt ? txt : "{}");
                free(txt);
                json_decref(o);
            } else {
                char ts[40];
                time_t sec = (time_t)rec.time;
                struct tm tm;
                gmtime_r(&sec, &tm);
                strftime(ts, sizeof ts, "%H:%M:%S", &tm);
                printf("%s %s #%llu", ts, rec.topic, (unsigned long long)rec.seq);
                for (size_t i = 0; i < rec.fields.n; i++) {
                    printf(" %s=", rec.fields.items[i].key);
                    kv_print(stdout, &rec.fields.items[i]);
                }
                putchar('\n');
            }
            fflush(stdout);
            tb_metrics_free(&rec);
            got++;
        }
        zmq_msg_close(&m);
        zmq_msg_close(&t);
    }
    zmq_close(s);
    return 0;
}

static int do_request(void *ctx, const char *ep, const char *skey, const char *ckey, long timeout,
                      int json, const tb_request *q) {
    tb_err err = {""};
    void *s = open_socket(ctx, ZMQ_REQ, ep, skey, ckey, &err);
    if (!s) {
        fprintf(stderr, "tbctl: %s\n", err.msg);
        return 2;
    }
    int to = (int)timeout;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &to, sizeof to);
    zmq_setsockopt(s, ZMQ_SNDTIMEO, &to, sizeof to);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    if (tb_proto_encode_request(&pk, q, &err) < 0) {
        fprintf(stderr, "tbctl: %s\n", err.msg);
        msgpack_sbuffer_destroy(&sb);
        zmq_close(s);
        return 64;
    }
    int rc = 2;
    if (zmq_send(s, sb.data, sb.size, 0) < 0) {
        fprintf(stderr, "tbctl: send to %s: %s\n", ep, zmq_strerror(errno));
    } else {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, 0) < 0) {
            fprintf(stderr, "tbctl: no reply from %s within %ld ms\n", ep, timeout);
        } else {
            tb_reply r;
            if (tb_proto_decode_reply(zmq_msg_data(&m), zmq_msg_size(&m), &r, &err) < 0) {
                fprintf(stderr, "tbctl: bad reply: %s\n", err.msg);
            } else {
                if (json) {
                    json_t *o = json_pack("{s:b, s:o}", "ok", r.ok, "result", kv_json(&r.result));
                    if (r.error) json_object_set_new(o, "error", json_string(r.error));
                    char *txt = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
                    puts(txt ? txt : "{}");
                    free(txt);
                    json_decref(o);
                } else if (r.ok) {
                    for (size_t i = 0; i < r.result.n; i++) {
                        printf("%-22s ", r.result.items[i].key);
                        kv_print(stdout, &r.result.items[i]);
                        putchar('\n');
                    }
                    if (r.result.n == 0) puts("ok");
                }
                if (!r.ok) fprintf(stderr, "tbctl: %s: %s\n", q->verb, r.error ? r.error : "failed");
                rc = r.ok ? 0 : 1;
                tb_reply_free(&r);
            }
        }
        zmq_msg_close(&m);
    }
    msgpack_sbuffer_destroy(&sb);
    zmq_close(s);
    return rc;
}

/* Index (1-based, gnuplot's) of each wanted column in the CSV header, 0 when absent. */
static int csv_columns(const char *path, const char *const *names, int n, int *idx) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "tbctl: plot: %s: %s\n", path, strerror(errno));
        return -1;
    }
    char line[8192];
    if (!fgets(line, sizeof line, f)) {
        fprintf(stderr, "tbctl: plot: %s: empty file\n", path);
        fclose(f);
        return -1;
    }
    int rows = 0;
    char tmp[8192];
    while (fgets(tmp, sizeof tmp, f)) rows++;
    fclose(f);
    line[strcspn(line, "\r\n")] = 0;
    for (int i = 0; i < n; i++) idx[i] = 0;
    int col = 1;
    for (char *tok = line, *next; tok; tok = next, col++) {
        next = strchr(tok, ',');
        if (next) *next++ = 0;
        for (int i = 0; i < n; i++)
            if (!strcmp(tok, names[i])) idx[i] = col;
    }
    if (rows == 0) {
        fprintf(stderr, "tbctl: plot: %s: no data rows\n", path);
        return -1;
    }
    return 0;
}

/* Draws loss (and val_loss), accuracy (and val_accuracy), learning rate and tokens/s
 * against global_step, 4 panels, with gnuplot's pngcairo (or png) terminal. */
static int do_plot(const char *csv, const char *out) {
    static const char *const names[] = {"global_step", "loss", "accuracy", "learning_rate",
                                        "tokens_per_s", "val_loss", "val_accuracy"};
    int c[7];
    if (csv_columns(csv, names, 7, c) < 0) return 1;
    for (int i = 0; i < 5; i++)
        if (!c[i]) {
            fprintf(stderr, "tbctl: plot: %s: no column %s (not a tb-trainerd CSV?)\n", csv, names[i]);
            return 1;
        }
    if (strchr(csv, '\'') || strchr(out, '\'') || strchr(csv, '"') || strchr(out, '"')) {
        fprintf(stderr, "tbctl: plot: quotes in file names are not supported\n");
        return 64;
    }
    FILE *g = popen("gnuplot 2>&1", "w");
    if (!g) {
        fprintf(stderr, "tbctl: plot: cannot run gnuplot: %s\n", strerror(errno));
        return 1;
    }
    fprintf(g,
            "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) { set terminal pngcairo size 1200,900 } "
            "else { set terminal png size 1200,900 }\n"
            "set output '%s'\n"
            "set datafile separator ','\n"
            "set datafile missing ''\n"
            "set key top right\n"
            "set grid\n"
            "set xlabel 'step'\n"
            "set multiplot layout 2,2 title 'tb-trainerd: %s' noenhanced\n",
            out, csv);
    fprintf(g, "set title 'loss'\nplot '%s' every ::1 using %d:%d with lines title 'train'", csv,
            c[0], c[1]);
    if (c[5]) fprintf(g, ", '' every ::1 using %d:%d with linespoints title 'validation'", c[0], c[5]);
    fprintf(g, "\nset title 'accuracy'\nplot '%s' every ::1 using %d:%d with lines title 'train'",
            csv, c[0], c[2]);
    if (c[6])
        fprintf(g, ", '' every ::1 using %d:%d with linespoints title 'validation'", c[0], c[6]);
    fprintf(g, "\nset title 'learning rate'\nplot '%s' every ::1 using %d:%d with lines notitle\n",
            csv, c[0], c[3]);
    fprintf(g, "set title 'tokens/s'\nplot '%s' every ::1 using %d:%d with lines notitle\n", csv,
            c[0], c[4]);
    fprintf(g, "unset multiplot\nset output\n");
    int st = pclose(g);
    if (st == -1 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 127)
            fprintf(stderr, "tbctl: plot: gnuplot not found (Debian: apt-get install gnuplot-nox)\n");
        else
            fprintf(stderr, "tbctl: plot: gnuplot failed (status %d)\n", st);
        return 1;
    }
    return 0;
}

static char *abs_location(const char *loc) {
    if (strstr(loc, "://") || loc[0] == '/') return strdup(loc);
    char *r = realpath(loc, NULL);
    return r ? r : strdup(loc);
}

int main(int argc, char **argv) {
    const char *daemon = "prefetchd", *endpoint = NULL, *skey = NULL, *ckey = NULL;
    long timeout = 10000;
    int json = 0, i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--daemon") && more) daemon = argv[++i];
        else if (!strcmp(a, "--endpoint") && more) endpoint = argv[++i];
        else if (!strcmp(a, "--timeout") && more) timeout = strtol(argv[++i], NULL, 10);
        else if (!strcmp(a, "--server-key") && more) skey = argv[++i];
        else if (!strcmp(a, "--client-key") && more) ckey = argv[++i];
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            return 64;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 64;
    }
    signal(SIGINT, on_sig);
    signal(SIGTERM, on_sig);
    const char *verb = argv[i++];
    if (!strcmp(verb, "plot")) {
        const char *csv = NULL, *out = NULL;
        for (; i < argc; i++) {
            if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
            else if (!csv && argv[i][0] != '-') csv = argv[i];
            else {
                usage(stderr);
                return 64;
            }
        }
        if (!csv || !out) {
            usage(stderr);
            return 64;
        }
        return do_plot(csv, out);
    }
    char defctl[128], defpub[128];
    snprintf(defctl, sizeof defctl, "ipc:///run/tb/%s.ctl", daemon);
    snprintf(defpub, sizeof defpub, "ipc:///run/tb/%s.pub", daemon);
    void *ctx = zmq_ctx_new();
    int rc;
    if (!strcmp(verb, "tail")) {
        const char *topic = "";
        long count = 0;
        for (; i < argc; i++) {
            if (!strcmp(argv[i], "--json")) json = 1;
            else if (!strcmp(argv[i], "--topic") && i + 1 < argc) topic = argv[++i];
            else if (!strcmp(argv[i], "--count") && i + 1 < argc) count = strtol(argv[++i], NULL, 10);
            else {
                usage(stderr);
                zmq_ctx_term(ctx);
                return 64;
            }
        }
        rc = do_tail(ctx, endpoint ? endpoint : defpub, skey, ckey, json, topic, count);
        zmq_ctx_term(ctx);
        return rc;
    }
    tb_request q = {.id = (uint64_t)(tb_clock_wall_s() * 1000)};
    tb_err err = {""};
    int bad = 0;
    if (!strcmp(verb, "shards")) {
        const char *sub = i < argc ? argv[i++] : "";
        if (!strcmp(sub, "list") && i == argc) {
            snprintf(q.verb, sizeof q.verb, "shards.list");
        } else if ((!strcmp(sub, "set") || !strcmp(sub, "add") || !strcmp(sub, "remove")) &&
                   i + 1 == argc) {
            snprintf(q.verb, sizeof q.verb, "shards.%s", sub);
            char *loc = !strcmp(sub, "remove") && strstr(argv[i], "://") ? strdup(argv[i])
                                                                        : abs_location(argv[i]);
            bad = tb_kvmap_add_str(&q.args, !strcmp(sub, "set") ? "path" : "location", loc, &err);
            free(loc);
        } else {
            bad = 1;
        }
    } else if (!strcmp(verb, "reload")) {
        snprintf(q.verb, sizeof q.verb, "reload"); /* the reply comes after the reload: --wait */
        for (; i < argc; i++)
            if (strcmp(argv[i], "--wait") != 0) bad = 1;
    } else {
        snprintf(q.verb, sizeof q.verb, "%s", verb);
        int pos = 0;
        for (; i < argc && !bad; i++) {
            char *eq = strchr(argv[i], '=');
            if (eq) {
                char key[TB_PROTO_MAX_KEY + 1];
                snprintf(key, sizeof key, "%.*s", (int)(eq - argv[i]), argv[i]);
                bad = add_arg(&q.args, key, eq + 1, &err) < 0;
            } else {
                char key[16];
                snprintf(key, sizeof key, pos ? "arg%d" : "arg", pos);
                pos++;
                bad = add_arg(&q.args, key, argv[i], &err) < 0;
            }
        }
    }
    if (bad) {
        if (err.msg[0]) fprintf(stderr, "tbctl: %s\n", err.msg);
        usage(stderr);
        tb_request_free(&q);
        zmq_ctx_term(ctx);
        return 64;
    }
    rc = do_request(ctx, endpoint ? endpoint : defctl, skey, ckey, timeout, json, &q);
    tb_request_free(&q);
    zmq_ctx_term(ctx);
    return rc;
}
