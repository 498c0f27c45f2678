#!/usr/bin/env bash
# Builds the proto/ libFuzzer targets with clang (-fsanitize=fuzzer,address,undefined) in
# build-fuzz and runs each for SECONDS. Exits non-zero on any crash, leak, timeout or
# out-of-memory (inputs may not make the process exceed 2 GB RSS or ask malloc for more than
# 2 GB at once). Prints executions per target.
#   tests/fuzz/run.sh 20                    # what deploy/test.sh runs
#   TB_FUZZ_JOBS=2 tests/fuzz/run.sh 600    # the long run of docs/PERF.md, two at a time
# Optional: TB_FUZZ_TARGETS="fuzz_batch fuzz_hello" to run a subset; TB_FUZZ_BUILD=dir.
set -euo pipefail
secs=${1:?usage: tests/fuzz/run.sh SECONDS_PER_TARGET}
top=$(cd "$(dirname "$0")/../.." && pwd)
bld=${TB_FUZZ_BUILD:-$top/build-fuzz}
jobs=${TB_FUZZ_JOBS:-1}
targets=${TB_FUZZ_TARGETS:-"fuzz_hello fuzz_credit fuzz_ack fuzz_batch fuzz_metrics fuzz_request fuzz_reply"}

CC=clang cmake -S "$top/tests/fuzz" -B "$bld" -G Ninja -DCMAKE_C_COMPILER=clang >/dev/null
ninja -C "$bld" -j2 >"$bld/build.log" 2>&1 || { cat "$bld/build.log"; exit 1; }

# Fresh corpus each run: the generated seeds (valid messages, edge values, hostile shapes).
rm -rf "$bld/corpus" "$bld/logs" "$bld/artifacts"
mkdir -p "$bld/logs" "$bld/artifacts"
"$bld/fuzz_gen_seeds" "$bld/corpus"

run_one() {
    local t=$1 start end rc=0
    start=$(date +%s)
    "$bld/$t" -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
        -max_len=16384 -print_final_stats=1 -artifact_prefix="$bld/artifacts/$t-" \
        "$bld/corpus/$t" >"$bld/logs/$t.log" 2>&1 || rc=$?
    end=$(date +%s)
    echo "$rc $((end - start))" >"$bld/logs/$t.status"
}

running=0
for t in $targets; do
    run_one "$t" &
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then
        wait -n || true
        running=$((running - 1))
    fi
done
wait || true

fail=0
printf '%-14s %12s %8s %10s  %s\n' target executions seconds exec/s result
for t in $targets; do
    read -r rc took <"$bld/logs/$t.status"
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$bld/logs/$t.log" | tail -n 1)
    execs=${execs:-0}
    if [ "$rc" -eq 0 ]; then result=ok; else result="FAILED (rc $rc, see $bld/logs/$t.log)"; fail=1; fi
    printf '%-14s %12s %8s %10s  %s\n' "$t" "$execs" "$took" "$((execs / (took > 0 ? took : 1)))" "$result"
done
if [ "$fail" -ne 0 ]; then
    for t in $targets; do
        read -r rc took <"$bld/logs/$t.status"
        [ "$rc" -eq 0 ] || { echo "=== $t"; tail -n 60 "$bld/logs/$t.log"; }
    done
    exit 1
fi
