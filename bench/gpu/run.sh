#!/usr/bin/env bash
# CUDA backend checks on a GPU machine (issue 6).
#
#   bench/gpu/run.sh prepare   # here (no GPU needed): build the CUDA test binaries
#                              # (sm_80 + sm_90) and copy them, with libcmocka, to .carry/cuda/
#   bench/gpu/run.sh device    # on the GPU machine, with .carry/cuda carried: run every
#                              # CUDA test, then compute-sanitizer memcheck on them; logs to
#                              # $OUT (or ./gpu-out when OUT is unset)
#
# The device machines lack libzmq/libyaml/libmsgpack/liburing/libcmocka, which the
# top-level configure requires, so the binaries are built here and carried. On a
# machine with every library, the plain route is:
#   cmake -S . -B build-cuda -G Ninja -DCMAKE_CUDA_ARCHITECTURES=90 \
#         -DTB_COMPONENTS="common;trainerd;tests"
#   ninja -C build-cuda cuda_test_core_vs_cpu cuda_test_dense_vs_cpu cuda_test_seq_vs_cpu \
#         cuda_test_dense_more_vs_cpu cuda_test_seq_more_vs_cpu
#   ctest --test-dir build-cuda -L cuda --output-on-failure
set -u -o pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
tests="cuda_test_core_vs_cpu cuda_test_dense_vs_cpu cuda_test_seq_vs_cpu cuda_test_dense_more_vs_cpu cuda_test_seq_more_vs_cpu"

case "${1:-}" in
prepare)
    b=${BUILD_DIR:-build-cuda}
    cmake -S . -B "$b" -G Ninja -DTB_WERROR=ON -DTB_COMPONENTS="common;trainerd;tests" >/dev/null || exit 1
    ninja -C "$b" -j2 $tests || exit 1
    rm -rf .carry/cuda && mkdir -p .carry/cuda || exit 1
    for t in $tests; do cp "$b/tests/cuda/$t" .carry/cuda/ || exit 1; done
    cp -L "$(ldconfig -p | awk '/libcmocka.so.0 /{print $NF; exit}')" .carry/cuda/libcmocka.so.0 || exit 1
    ls -la .carry/cuda
    ;;
device)
    out=${OUT:-$root/gpu-out}
    mkdir -p "$out"
    export LD_LIBRARY_PATH="$root/.carry/cuda:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    {
        date -u +%Y-%m-%dT%H:%M:%SZ
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
        nvcc --version | tail -1
    } > "$out/env.txt" 2>&1
    cat "$out/env.txt"
    status=0
    for t in $tests; do
        echo "== $t"
        timeout 300 ".carry/cuda/$t" > "$out/$t.log" 2>&1
        rc=$?
        echo "$t rc=$rc" | tee -a "$out/summary.txt"
        tail -n 40 "$out/$t.log"
        [ $rc -eq 0 ] || status=1
    done
    for t in $tests; do
        echo "== memcheck $t"
        timeout 400 compute-sanitizer --tool memcheck --error-exitcode 9 \
            ".carry/cuda/$t" > "$out/memcheck_$t.log" 2>&1
        rc=$?
        echo "memcheck $t rc=$rc" | tee -a "$out/summary.txt"
        grep -E "ERROR SUMMARY|LEAK SUMMARY|Invalid|SKIP" "$out/memcheck_$t.log" | head -20
        [ $rc -eq 0 ] || status=1
    done
    cat "$out/summary.txt"
    exit $status
    ;;
*)
    echo "usage: $0 prepare|device" >&2
    exit 64
    ;;
esac
