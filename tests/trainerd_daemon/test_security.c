/* tb-trainerd's tcp control socket (common/tb_endpoint, the code prefetchd uses): CURVE
 * with a ZAP handler that serves only the client keys in daemon.curve_allowed_dir; an
 * unknown key and a plain client get no answer; a tcp endpoint without keys exits 78. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>
#include <cmocka.h>
#include "checkpoint.h"
#include "tb_clock.h"
#include "tb_endpoint.h"
#include "tb_proto_ctl.h"

#define TD_BIN TB_BINARY_DIR "/trainerd/daemon/tb-trainerd"

static int free_port(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&a, sizeof a)) {}
    socklen_t l = sizeof a;
    getsockname(s, (struct sockaddr *)&a, &l);
    close(s);
    return ntohs(a.sin_port);
}

/* 1: an ok reply to `status` within timeout_ms; 0: none. */
static int ask_status(void *ctx, const char *ep, const char *server_pub, const char *client_keys,
                      int timeout_ms) {
    void *s = zmq_socket(ctx, ZMQ_REQ);
    int linger = 0;
    zmq_setsockopt(s, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &timeout_ms, sizeof timeout_ms);
    tb_err err = {""};
    if (client_keys && tb_endpoint_client_curve(s, ep, server_pub, client_keys, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        zmq_close(s);
        return -1;
    }
    zmq_connect(s, ep);
    tb_request q = {.id = 1};
    snprintf(q.verb, sizeof q.verb, "status");
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    tb_proto_encode_request(&pk, &q, &err);
    int ok = 0;
    if (zmq_send(s, sb.data, sb.size, ZMQ_DONTWAIT) >= 0) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, s, 0) >= 0) {
            tb_reply r;
            if (tb_proto_decode_reply(zmq_msg_data(&m), zmq_msg_size(&m), &r, &err) == 0) {
                ok = r.ok;
                tb_reply_free(&r);
            }
        }
        zmq_msg_close(&m);
    }
    msgpack_sbuffer_destroy(&sb);
    zmq_close(s);
    return ok;
}

static pid_t start_td(const char *dir, const char *ctl, const char *key, const char *allowed) {
    static char b[8][400];
    snprintf(b[0], sizeof b[0], "daemon.feed_endpoint=ipc://%s/feed.sock", dir);
    snprintf(b[1], sizeof b[1], "daemon.control_endpoint=%s", ctl);
    snprintf(b[2], sizeof b[2], "daemon.metrics_endpoint=ipc://%s/pub.sock", dir);
    snprintf(b[3], sizeof b[3], "daemon.checkpoint_dir=%s/ckpt", dir);
    snprintf(b[4], sizeof b[4], "daemon.csv_path=%s/td.csv", dir);
    snprintf(b[5], sizeof b[5], "daemon.curve_secret_key_file=%s", key);
    snprintf(b[6], sizeof b[6], "daemon.curve_allowed_dir=%s", allowed);
    char *argv[40];
    int n = 0;
    argv[n++] = TD_BIN;
    for (int i = 0; i < 7; i++) {
        argv[n++] = "--set";
        argv[n++] = b[i];
    }
    const char *m[] = {"model.vocab_size=512", "model.hidden_size=32", "model.num_heads=2",
                       "model.retention_heads=2", "model.factorized_embedding_dim=16",
                       "model.ffn_hidden_size=64", "training.max_length=16",
                       "daemon.preset=tiny", "training.batch_size=2", NULL};
    for (int i = 0; m[i]; i++) {
        argv[n++] = "--set";
        argv[n++] = (char *)m[i];
    }
    argv[n] = NULL;
    pid_t p = fork();
    if (p == 0) {
        char log[512];
        snprintf(log, sizeof log, "%s/trainerd.log", dir);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    return p;
}

static int log_has(const char *dir, const char *s) {
    char p[512], cmd[1200];
    snprintf(p, sizeof p, "%s/trainerd.log", dir);
    snprintf(cmd, sizeof cmd, "grep -q -F '%s' '%s'", s, p);
    return system(cmd) == 0;
}

static void test_tcp_control_curve_refuses_unknown_key_and_plain_client(void **state) {
    (void)state;
    char dir[256];
    snprintf(dir, sizeof dir, "/tmp/tds.%d", (int)getpid());
    td_rmtree(dir);
    mkdir(dir, 0750);
    char server[400], spub[420], good[400], bad[400], allowed[400], cmd[1200], ep[64];
    snprintf(server, sizeof server, "%s/server.key", dir);
    snprintf(spub, sizeof spub, "%s.pub", server);
    snprintf(good, sizeof good, "%s/good.key", dir);
    snprintf(bad, sizeof bad, "%s/bad.key", dir);
    snprintf(allowed, sizeof allowed, "%s/allowed", dir);
    tb_err err;
    assert_int_equal(tb_curve_generate(server, &err), 0);
    assert_int_equal(tb_curve_generate(good, &err), 0);
    assert_int_equal(tb_curve_generate(bad, &err), 0);
    mkdir(allowed, 0755);
    snprintf(cmd, sizeof cmd, "cp '%s.pub' '%s/tbctl.pub'", good, allowed);
    assert_int_equal(system(cmd), 0);
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", free_port());
    pid_t td = start_td(dir, ep, server, allowed);
    void *ctx = zmq_ctx_new();
    int ok = 0;
    for (int i = 0; i < 60 && !ok; i++) ok = ask_status(ctx, ep, spub, good, 500) == 1;
    assert_true(ok);                                              /* allowed key: served */
    assert_int_equal(ask_status(ctx, ep, spub, bad, 1500), 0);    /* unknown key: refused */
    assert_int_equal(ask_status(ctx, ep, NULL, NULL, 1000), 0);   /* plain client: refused */
    assert_int_equal(ask_status(ctx, ep, spub, good, 2000), 1);   /* still serving */
    assert_true(log_has(dir, "ZAP: refused CURVE client"));
    zmq_ctx_term(ctx);
    kill(td, SIGTERM);
    int st;
    waitpid(td, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    /* tcp without keys: configuration error, exit 78 */
    td = start_td(dir, ep, "", "");
    waitpid(td, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 78);
    assert_true(log_has(dir, "need daemon.curve_secret_key_file"));
    if (!getenv("TD_KEEP")) td_rmtree(dir);
}

int main(void) {
    const struct CMUnitTest t[] = {
        cmocka_unit_test(test_tcp_control_curve_refuses_unknown_key_and_plain_client),
    };
    return cmocka_run_group_tests(t, NULL, NULL);
}
