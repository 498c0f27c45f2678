/* Hostile peers: random bytes, truncated msgpack, wrong message types, out-of-range
 * ACKs, CREDIT before HELLO and a HELLO with a foreign cursor on the feed, and garbage on
 * the control socket, are each answered or ignored with a log line and a counter; the
 * daemon keeps serving the planned stream to a well-behaved consumer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include <cmocka.h>

#include "pfd_harness.h"
#include "tb_rng.h"

static void test_garbage_on_feed_and_control_is_ignored_stream_goes_on(void **state) {
    (void)state;
    pfdt t;
    if (pfdt_init(&t, "badmsg") < 0) skip();
    assert_int_equal(pfdt_start(&t, 10000), 0);
    void *evil = zmq_socket(t.zctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(evil, ZMQ_LINGER, &linger, sizeof linger);
    assert_int_equal(zmq_connect(evil, t.feed), 0);
    tb_rng r;
    tb_rng_init(&r, 3, TB_RNG_TEST, 0, 0, 0);
    uint8_t buf[4096];
    for (int i = 0; i < 200; i++) {
        size_t n = 1 + tb_rng_below(&r, sizeof buf);
        for (size_t k = 0; k < n; k++) buf[k] = (uint8_t)tb_rng_u32(&r);
        if (i % 3 == 0) buf[0] = 0x80 | (uint8_t)tb_rng_below(&r, 16); /* a fixmap header */
        zmq_send(evil, buf, n, 0);
    }
    /* valid messages in the wrong place */
    msgpack_sbuffer sb;
    msgpack_packer pk;
    tb_err err;
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    tb_proto_encode_credit(&pk, 1000, &err); /* CREDIT before HELLO */
    zmq_send(evil, sb.data, sb.size, 0);
    msgpack_sbuffer_clear(&sb);
    tb_proto_encode_ack(&pk, 123456789, &err); /* ACK of a batch that does not exist */
    zmq_send(evil, sb.data, sb.size, 0);
    msgpack_sbuffer_clear(&sb);
    tb_request q = {.id = 1};
    snprintf(q.verb, sizeof q.verb, "status");
    tb_proto_encode_request(&pk, &q, &err); /* a control message on the feed */
    zmq_send(evil, sb.data, sb.size, 0);
    msgpack_sbuffer_clear(&sb);
    uint8_t foreign[10] = {1, 2, 3};
    tb_hello h = {.rank = 0, .world = 1, .has_cursor = true,
                  .cursor = {.shuffle = foreign, .shuffle_len = sizeof foreign}};
    tb_proto_encode_hello(&pk, &h, &err); /* a cursor prefetchd did not make */
    zmq_send(evil, sb.data, sb.size, 0);
    msgpack_sbuffer_destroy(&sb);
    /* garbage on the control socket gets an error reply */
    void *ctl = zmq_socket(t.zctx, ZMQ_REQ);
    zmq_setsockopt(ctl, ZMQ_LINGER, &linger, sizeof linger);
    int to = 3000;
    zmq_setsockopt(ctl, ZMQ_RCVTIMEO, &to, sizeof to);
    zmq_connect(ctl, t.ctl);
    zmq_send(ctl, "\x81\xa1v\x01garbage", 11, 0);
    zmq_msg_t m;
    zmq_msg_init(&m);
    assert_true(zmq_msg_recv(&m, ctl, 0) >= 0);
    tb_reply rep;
    assert_int_equal(tb_proto_decode_reply(zmq_msg_data(&m), zmq_msg_size(&m), &rep, &err), 0);
    assert_false(rep.ok);
    assert_non_null(rep.error);
    tb_reply_free(&rep);
    zmq_msg_close(&m);
    zmq_close(ctl);
    usleep(500000); /* let everything queued on the evil socket arrive before closing it */
    zmq_close(evil);

    /* a well-behaved consumer still gets the planned stream */
    pfdt_plan p;
    assert_int_equal(pfdt_plan_open(&t, &p), 0);
    pfdt_consumer c;
    assert_int_equal(pfdt_consumer_open(&t, &c, 0, 1), 0);
    assert_int_equal(pfdt_consumer_hello(&c, 0, 4), 0);
    int dups = 0;
    assert_int_equal(pfdt_consume(&c, &p, 20, 10000, &dups), 20);
    assert_int_equal(dups, 0);
    int64_t bad = pfdt_status_int(&t, "bad_messages");
    printf("bad_messages = %lld\n", (long long)bad);
    assert_true(bad >= 150);
    assert_true(pfdt_log_has(&t, "HELLO cursor is not a tb-prefetchd cursor"));
    pfdt_consumer_close(&c);
    pfdt_plan_close(&p);
    assert_int_equal(pfdt_stop(&t), 0);
    pfdt_cleanup(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_garbage_on_feed_and_control_is_ignored_stream_goes_on),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
