#!/usr/bin/env bash
# tb-trainerd's daemon tests (tests/trainerd_daemon/test_daemon.c) with the CUDA backend
# (issue 6): 50 steps with every CSV column (gpu_memory_gb / gpu_cached_gb real, > 0),
# kill -9 at random points and resume bit for bit, forced NaN retries and give-up, loss
# spike rollback, malformed batches, feed gaps, sd_notify, control socket, reload.
#
#   bench/gpu/daemon.sh prepare   # here: tb-trainerd (built with the CUDA backend), the
#                                 # fake feed and the test binary, with every shared library
#                                 # the GPU machine lacks (libzmq and its dependencies,
#                                 # msgpack, yaml, uring, cmocka), to .carry/daemon
#   bench/gpu/daemon.sh device    # there, .carry/daemon carried: TD_TEST_BACKEND=cuda
#
# The test binary looks for tb-trainerd and the fake feed under the build folder it was
# configured with (TB_BINARY_DIR, compiled in); device links that path to the carried copy
# when nothing is there. On a GPU machine with every library installed the plain route is
#   TD_TEST_BACKEND=cuda ctest --test-dir build -R trainerd_daemon_test_process
set -u -o pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
c=.carry/daemon
case "${1:-}" in
prepare)
    b=${BUILD_DIR:-build}
    bins="trainerd/daemon/tb-trainerd tests/trainerd_daemon/td_fakefeed tests/trainerd_daemon/trainerd_daemon_test_process"
    ninja -C "$b" tb-trainerd td_fakefeed trainerd_daemon_test_process || exit 1
    bdir=$(cd "$b" && pwd)
    rm -rf "$c" && mkdir -p "$c/lib" || exit 1
    echo "$bdir" > "$c/binary_dir"
    for x in $bins; do
        mkdir -p "$c/build/$(dirname "$x")" && cp "$b/$x" "$c/build/$x" || exit 1
    done
    for x in $bins; do ldd "$b/$x"; done | awk '$3 ~ /^\// {print $1, $3}' | sort -u |
        grep -Ev '^(libc|libm|libmvec|libdl|libpthread|librt|libresolv|libstdc\+\+|libgcc_s|libcudart|libcublas|libcublasLt)\.so' |
        while read -r name path; do cp -L "$path" "$c/lib/$name" || exit 1; done || exit 1
    du -sh "$c"
    ;;
device)
    out=${OUT:-$root/gpu-out}
    mkdir -p "$out"
    bdir=$(cat "$c/binary_dir")
    if [ ! -e "$bdir" ]; then
        mkdir -p "$(dirname "$bdir")" && ln -s "$root/$c/build" "$bdir" || exit 1
    fi
    export LD_LIBRARY_PATH="$root/$c/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/env.txt"
    rm -rf /tmp/tdd.*
    TD_KEEP=1 TD_TEST_BACKEND=${TD_TEST_BACKEND:-cuda} timeout "${TB_DAEMON_TIMEOUT:-500}" \
        "$bdir/tests/trainerd_daemon/trainerd_daemon_test_process" > "$out/daemon_test.log" 2>&1
    rc=$?
    # which backend each daemon start reported, and the first test's CSV (memory columns)
    grep -ho 'model: .*backend [a-z]* (GEMMs [a-z0-9]*)' /tmp/tdd.*/trainerd.log | sort | uniq -c | tee "$out/backends.txt"
    first=$(ls -d /tmp/tdd.*.0 2>/dev/null | head -1)
    [ -n "$first" ] && cut -d, -f3-4,10-14 "$first/log/trainerd.csv" | head -6 | tee "$out/csv_head.txt"
    grep -E '^\[ *(OK|FAILED|PASSED|ERROR|  LINE) *\]|backend|resumes|records received' "$out/daemon_test.log" | head -40
    echo "trainerd_daemon_test_process (TD_TEST_BACKEND=${TD_TEST_BACKEND:-cuda}) rc=$rc"
    exit $rc
    ;;
*)
    echo "usage: $0 prepare|device" >&2
    exit 64
    ;;
esac
