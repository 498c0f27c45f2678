#!/usr/bin/env bash
# CUDA backend checks on a GPU machine (issue 6).
#
#   bench/gpu/run.sh prepare   # here (no GPU needed): build the CUDA test binaries
#                              # (sm_80 + sm_90) and copy them, with libcmocka and libyaml,
#                              # to .carry/cuda/
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
#         cuda_test_dense_more_vs_cpu cuda_test_seq_more_vs_cpu cuda_test_model_vs_cpu
#   ctest --test-dir build-cuda -L cuda --output-on-failure
set -u -o pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
# The whole-model comparison first (the newest check), then the op tests.
tests="cuda_test_model_vs_cpu cuda_test_core_vs_cpu cuda_test_dense_vs_cpu cuda_test_seq_vs_cpu cuda_test_dense_more_vs_cpu cuda_test_seq_more_vs_cpu"
# device: which binaries get compute-sanitizer memcheck (default all), and a wall-clock
# budget in seconds after which remaining steps are skipped (default none).
memcheck_tests=${MEMCHECK_TESTS:-$tests}
deadline=${TB_GPU_DEADLINE:-0}

case "${1:-}" in
prepare)
    b=${BUILD_DIR:-build-cuda}
    cmake -S . -B "$b" -G Ninja -DTB_WERROR=ON -DTB_COMPONENTS="common;trainerd;tests" >/dev/null || exit 1
    ninja -C "$b" -j2 $tests || exit 1
    rm -rf .carry/cuda && mkdir -p .carry/cuda || exit 1
    for t in $tests; do cp "$b/tests/cuda/$t" .carry/cuda/ || exit 1; done
    # Libraries the device machine lacks (cmocka; libyaml for the model test's presets):
    # every resolved dependency except glibc, the C++ runtime and CUDA's own.
    for t in $tests; do ldd "$b/tests/cuda/$t"; done | awk '$3 ~ /^\// {print $1, $3}' | sort -u |
        grep -Ev '^(libc|libm|libmvec|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcudart|libcublas|libcublasLt)\.so' |
        while read -r name path; do cp -L "$path" ".carry/cuda/$name" || exit 1; done || exit 1
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
        if [ "$deadline" -gt 0 ] && [ "$SECONDS" -ge "$deadline" ]; then
            echo "$t skipped (deadline)" | tee -a "$out/summary.txt"; status=1; continue
        fi
        echo "== $t"
        lim=300; [ "$deadline" -gt 0 ] && [ $((deadline - SECONDS)) -lt $lim ] && lim=$((deadline - SECONDS))
        timeout $lim ".carry/cuda/$t" > "$out/$t.log" 2>&1
        rc=$?
        echo "$t rc=$rc" | tee -a "$out/summary.txt"
        grep -E "^(tiny|mini): |FAIL" "$out/$t.log" | head -n 20
        tail -n 12 "$out/$t.log"
        [ $rc -eq 0 ] || status=1
    done
    for t in $memcheck_tests; do
        if [ "$deadline" -gt 0 ] && [ "$SECONDS" -ge "$deadline" ]; then
            echo "memcheck $t skipped (deadline)" | tee -a "$out/summary.txt"; status=1; continue
        fi
        echo "== memcheck $t"
        lim=400; [ "$deadline" -gt 0 ] && [ $((deadline - SECONDS)) -lt $lim ] && lim=$((deadline - SECONDS))
        timeout $lim compute-sanitizer --tool memcheck --error-exitcode 9 \
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
