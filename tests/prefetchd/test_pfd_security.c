/* Endpoint security: a tcp:// control endpoint runs CURVE with a ZAP handler that
 * accepts only the client keys found in the allowed-keys directory (an unknown key and a
 * plain client get no answer, and the refusal is logged and counted); an ipc:// socket is
 * mode 0660, so a peer running as another uid (nobody) cannot connect. */
#include <arpa/inet.h>
#include <grp.h>
#include <netinet/in.h>
#include <setjmp.h>
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

#include "tb_endpoint.h"
#include "pfd_harness.h"

static int free_port(void) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(s, (struct sockaddr *)&a, sizeof a);
    socklen_t l = sizeof a;
    getsockname(s, (struct sockaddr *)&a, &l);
    close(s);
    return ntohs(a.sin_port);
}

/* 1 when `status` got an ok reply within timeout_ms, 0 when not. */
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

static void test_curve_refuses_unknown_key_accepts_allowed(void **state) {
    (void)state;
    pfdt t;
    if (pfdt_init(&t, "curve") < 0) skip();
    char server[400], spub[420], good[400], bad[400], allowed[400], cmd[1200];
    snprintf(server, sizeof server, "%s/server.key", t.dir);
    snprintf(spub, sizeof spub, "%s.pub", server);
    snprintf(good, sizeof good, "%s/good.key", t.dir);
    snprintf(bad, sizeof bad, "%s/bad.key", t.dir);
    snprintf(allowed, sizeof allowed, "%s/allowed", t.dir);
    tb_err err;
    assert_int_equal(tb_curve_generate(server, &err), 0);
    assert_int_equal(tb_curve_generate(good, &err), 0);
    assert_int_equal(tb_curve_generate(bad, &err), 0);
    mkdir(allowed, 0755);
    snprintf(cmd, sizeof cmd, "cp '%s.pub' '%s/trainer0.pub'", good, allowed);
    assert_int_equal(system(cmd), 0);
    int port = free_port();
    char sets[1500], ep[64];
    snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", port);
    snprintf(sets, sizeof sets,
             "endpoints.control=%s\ncurve.secret_key_file=%s\ncurve.allowed_keys_dir=%s\n", ep,
             server, allowed);
    assert_int_equal(pfdt_write_config(&t, sets), 0);
    /* the harness' own control client speaks plain ZMQ: start without its readiness wait */
    t.pid = pfdt_spawn(&t, NULL);
    assert_true(t.pid > 0);
    int ok = 0;
    for (int i = 0; i < 40 && !ok; i++) ok = ask_status(t.zctx, ep, spub, good, 500) == 1;
    assert_true(ok); /* the allowed key is served */
    assert_int_equal(ask_status(t.zctx, ep, spub, bad, 1500), 0);  /* unknown key: refused */
    assert_int_equal(ask_status(t.zctx, ep, NULL, NULL, 1000), 0); /* no CURVE at all */
    assert_int_equal(ask_status(t.zctx, ep, spub, good, 2000), 1);
    assert_true(pfdt_log_has(&t, "ZAP: refused CURVE client"));
    /* adding the key file admits the client without a restart */
    snprintf(cmd, sizeof cmd, "cp '%s.pub' '%s/late.pub'", bad, allowed);
    assert_int_equal(system(cmd), 0);
    assert_int_equal(ask_status(t.zctx, ep, spub, bad, 2000), 1);
    /* a tcp endpoint without keys is a config error (78) */
    snprintf(sets, sizeof sets, "endpoints.control=%s\n", ep);
    assert_int_equal(pfdt_write_config(&t, sets), 0);
    pid_t b = pfdt_spawn(&t, NULL);
    int st;
    waitpid(b, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 78);
    assert_true(pfdt_log_has(&t, "needs curve.secret_key_file"));
    kill(t.pid, SIGTERM);
    waitpid(t.pid, &st, 0);
    t.pid = -1;
    pfdt_cleanup(&t);
}

static void test_ipc_socket_0660_refuses_other_uid(void **state) {
    (void)state;
    if (geteuid() != 0) {
        printf("skipped: not root, cannot run a client as another uid\n");
        skip();
    }
    pfdt t;
    if (pfdt_init(&t, "ipcperm") < 0) skip();
    assert_int_equal(pfdt_start(&t, 10000), 0);
    struct stat st;
    assert_int_equal(stat(t.ctl + 6, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0660);
    /* the directory is world-searchable: only the socket's own mode keeps nobody out */
    assert_int_equal(stat(t.dir, &st), 0);
    assert_int_equal(st.st_mode & 0005, 0005);
    for (int as_nobody = 1; as_nobody >= 0; as_nobody--) {
        pid_t pid = fork();
        if (pid == 0) {
            if (as_nobody && (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0))
                _exit(3);
            void *ctx = zmq_ctx_new();
            int r = ask_status(ctx, t.ctl, NULL, NULL, 1500);
            zmq_ctx_term(ctx);
            _exit(r == 1 ? 0 : 1);
        }
        int ws;
        assert_int_equal(waitpid(pid, &ws, 0), pid);
        assert_true(WIFEXITED(ws));
        /* nobody: no reply (exit 1); root: a reply (exit 0) */
        assert_int_equal(WEXITSTATUS(ws), as_nobody ? 1 : 0);
    }
    assert_int_equal(pfdt_stop(&t), 0);
    pfdt_cleanup(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_curve_refuses_unknown_key_accepts_allowed),
        cmocka_unit_test(test_ipc_socket_0660_refuses_other_uid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
