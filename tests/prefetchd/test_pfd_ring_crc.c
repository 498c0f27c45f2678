/* The ring: slots survive close/reopen; a slot whose bytes change is caught by its crc at
 * open, freed, and (in the daemon) rebuilt from the cursor before it so the consumer gets
 * the planned batch; acknowledged slots advance the base with their cursor saved; a
 * ring whose geometry changed is reinitialised. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "pfd_harness.h"
#include "ring.h"

static void fill(pfd_ring *r, uint64_t seq) {
    pfd_slot_hdr *h = pfd_ring_slot(r, seq);
    assert_int_equal(pfd_slot_state_get(h), PFD_SLOT_FREE);
    pfd_slot_state_set(h, PFD_SLOT_FILLING);
    uint8_t *p = pfd_ring_payload(r, seq);
    for (int i = 0; i < 1000; i++) p[i] = (uint8_t)(seq * 7 + (uint64_t)i);
    memset(p + 1000, (int)seq, 16); /* the "cursor" */
    pfd_ring_seal(r, seq, 1000, 16, 4);
}

static void test_ring_persists_detects_corruption_and_advances(void **state) {
    (void)state;
    char path[] = "/tmp/pfdt-ring-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    tb_err err;
    pfd_ring r;
    assert_int_equal(pfd_ring_open(&r, path, 8, 4096, 64, 42, &err), 0);
    assert_true(r.reset);
    for (uint64_t s = 0; s < 6; s++) fill(&r, s);
    /* acknowledge 0 and 1; 3 is acknowledged out of order */
    pfd_slot_state_set(pfd_ring_slot(&r, 0), PFD_SLOT_ACKED);
    pfd_slot_state_set(pfd_ring_slot(&r, 1), PFD_SLOT_ACKED);
    pfd_slot_state_set(pfd_ring_slot(&r, 2), PFD_SLOT_SENT);
    pfd_slot_state_set(pfd_ring_slot(&r, 3), PFD_SLOT_ACKED);
    assert_int_equal(pfd_ring_advance(&r), 2);
    assert_int_equal(pfd_ring_base(&r), 2);
    uint64_t len;
    const uint8_t *cur = pfd_ring_base_cursor(&r, &len);
    assert_non_null(cur);
    assert_int_equal(len, 16);
    assert_int_equal(cur[0], 1); /* cursor after batch 1 */
    /* a worker died while filling 6 */
    pfd_slot_state_set(pfd_ring_slot(&r, 6), PFD_SLOT_FILLING);
    pfd_ring_close(&r);

    /* flip one payload byte of batch 4, then reopen */
    assert_int_equal(pfd_ring_open(&r, path, 8, 4096, 64, 42, &err), 0);
    assert_false(r.reset);
    pfd_ring_payload(&r, 4)[500] ^= 0x40;
    uint64_t bad[4];
    int bad_acked[4];
    assert_int_equal(pfd_ring_recover(&r, bad, bad_acked, 4), 1);
    assert_int_equal(bad[0], 4);
    assert_int_equal(bad_acked[0], 0);
    assert_int_equal(pfd_slot_state_get(pfd_ring_slot(&r, 4)), PFD_SLOT_FREE);
    assert_int_equal(pfd_slot_state_get(pfd_ring_slot(&r, 6)), PFD_SLOT_FREE);
    assert_int_equal(pfd_slot_state_get(pfd_ring_slot(&r, 2)), PFD_SLOT_FILLED); /* resend */
    assert_int_equal(pfd_slot_state_get(pfd_ring_slot(&r, 3)), PFD_SLOT_ACKED);
    assert_true(pfd_ring_slot_valid(&r, 5));
    assert_int_equal(pfd_ring_base(&r), 2);
    cur = pfd_ring_base_cursor(&r, &len);
    assert_non_null(cur);
    assert_int_equal(cur[0], 1);
    /* reset keeps the new base and its cursor */
    uint8_t c2[16];
    memset(c2, 9, sizeof c2);
    assert_int_equal(pfd_ring_reset_to(&r, 100, c2, sizeof c2, &err), 0);
    cur = pfd_ring_base_cursor(&r, &len);
    assert_int_equal(pfd_ring_base(&r), 100);
    assert_int_equal(cur[0], 9);
    pfd_ring_close(&r);

    /* another geometry (e.g. a new batch size): the ring starts over */
    assert_int_equal(pfd_ring_open(&r, path, 8, 4096, 64, 43, &err), 0);
    assert_true(r.reset);
    assert_int_equal(pfd_ring_base(&r), 0);
    pfd_ring_close(&r);
    unlink(path);
}

static void test_daemon_rebuilds_corrupt_slot_consumer_gets_plan(void **state) {
    (void)state;
    pfdt t;
    if (pfdt_init(&t, "crc") < 0) skip();
    assert_int_equal(pfdt_start(&t, 10000), 0);
    pfdt_consumer c;
    assert_int_equal(pfdt_consumer_open(&t, &c, 0, 1), 0);
    assert_int_equal(pfdt_consumer_hello(&c, 0, 0), 0); /* no credit: the ring fills */
    for (int i = 0; i < 200 && pfdt_status_int(&t, "ring_ready") < 8; i++) usleep(50000);
    assert_int_equal(pfdt_status_int(&t, "ring_ready"), 8);
    pfdt_kill9(&t);
    pfdt_plan p;
    assert_int_equal(pfdt_plan_open(&t, &p), 0);
    pfd_ring r;
    tb_err err;
    assert_int_equal(pfd_ring_open(&r, p.cfg.ring_path, (uint64_t)p.cfg.ring_slots,
                                   pfd_payload_cap(&p.cfg), TB_STREAM_CURSOR_BYTES,
                                   pfd_geometry(&p.cfg), &err),
                     0);
    assert_false(r.reset);
    assert_true(pfd_ring_slot_valid(&r, 3));
    pfd_ring_payload(&r, 3)[200] ^= 0x01;
    assert_false(pfd_ring_slot_valid(&r, 3));
    pfd_ring_close(&r);
    assert_int_equal(pfdt_start(&t, 15000), 0);
    assert_int_equal(pfdt_consumer_hello(&c, 0, 4), 0);
    int dups = 0;
    assert_int_equal(pfdt_consume(&c, &p, 20, 10000, &dups), 20);
    assert_int_equal(dups, 0);
    assert_true(pfdt_status_int(&t, "corrupt_slots") >= 1);
    assert_true(pfdt_log_has(&t, "slot of batch 3 failed its crc"));
    pfdt_consumer_close(&c);
    pfdt_plan_close(&p);
    assert_int_equal(pfdt_stop(&t), 0);
    pfdt_cleanup(&t);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ring_persists_detects_corruption_and_advances),
        cmocka_unit_test(test_daemon_rebuilds_corrupt_slot_consumer_gets_plan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
