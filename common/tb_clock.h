/* Clocks: monotonic for intervals and deadlines, wall for timestamps in records. */
#ifndef TB_CLOCK_H
#define TB_CLOCK_H
#include <stdint.h>

uint64_t tb_clock_mono_ns(void);   /* CLOCK_MONOTONIC */
uint64_t tb_clock_mono_us(void);
double tb_clock_mono_s(void);
double tb_clock_wall_s(void);      /* CLOCK_REALTIME, seconds since the epoch */
/* ISO 8601 UTC with milliseconds, e.g. 2026-11-22T19:52:06.123Z; buf >= 32 bytes. */
void tb_clock_wall_iso(char *buf, unsigned len);

#endif
