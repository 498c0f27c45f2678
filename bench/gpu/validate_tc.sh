#!/usr/bin/env bash
# One device call that checks and measures the CUDA backend's bf16 path (issue 6): the
# bf16 tensor-core tiles (on by default; TB_CUDA_TC=0 turns them off: fused attention,
# retention / decay), the packed Mamba scan, the warp-per-row MoE scatter backward,
# BitLinear quantiser and LN0 backward, and zero fills by memset.
#
#   bash bench/gpu/run.sh prepare && bash bench/train_step/run.sh prepare   # here
#   bash bench/gpu/validate_tc.sh        # on the GPU machine, .carry/cuda and .carry/train carried
#
# In order, each bounded so the whole stays under the 600 s of one call:
#   1. the six CUDA test suites (every op vs the CPU; the new bf16 tensor-core cases in
#      dense_more, seq and model);
#   2. compute-sanitizer memcheck on the tensor-core tests alone (CT_FILTER);
#   3. tb-train-local steps (TB_VALIDATE_RUNS, bench/train_step/run.sh names): by default
#      frankenstein and mini bf16 with and without (_cc) the tensor-core tiles;
#   4. the per-kernel table of frankenstein bf16 (bench/gpu/kernels.sh).
# Writes everything under $OUT (or ./gpu-out); summary.txt, steps.txt and kernels.txt
# hold the figures.
set -u -o pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
start=$SECONDS
left() { echo $((${TB_VALIDATE_BUDGET:-570} - (SECONDS - start))); }

# 1. tests (the suites' own 300 s cap each; the whole step at most 240 s)
OUT="$out" TB_GPU_DEADLINE=240 MEMCHECK_TESTS=" " bash bench/gpu/run.sh device \
    > "$out/tests.txt" 2>&1
tail -n 8 "$out/tests.txt"

# 2. memcheck of the tensor-core cases
export LD_LIBRARY_PATH="$root/.carry/cuda:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
for spec in "cuda_test_dense_more_vs_cpu:*tensor_cores*" "cuda_test_seq_vs_cpu:*tensor_core*"; do
    t=${spec%%:*} f=${spec#*:}
    lim=$(left); [ "$lim" -gt 90 ] && lim=90
    if [ "$lim" -le 10 ]; then echo "memcheck $t skipped (budget)" | tee -a "$out/summary.txt"; continue; fi
    CT_FILTER="$f" timeout "$lim" compute-sanitizer --tool memcheck --error-exitcode 9 ".carry/cuda/$t" \
        > "$out/memcheck_tc_$t.log" 2>&1
    echo "memcheck (tensor-core cases) $t rc=$?" | tee -a "$out/summary.txt"
    grep -E "ERROR SUMMARY|PASSED|FAILED" "$out/memcheck_tc_$t.log" | head -5
done

# 3. step speed with and without the tiles
lim=$(left)
if [ "$lim" -gt 60 ]; then
    OUT="$out" TB_GPU_DEADLINE=$((lim - 50)) \
        TB_RUNS="${TB_VALIDATE_RUNS:-frankenstein_bf16 frankenstein_bf16_cc mini_bf16 mini_bf16_cc}" bash bench/train_step/run.sh device \
        > "$out/train_step.txt" 2>&1
    cat "$out/steps.txt"
fi

# 4. the kernel table with the tiles
if [ "$(left)" -gt 25 ]; then
    OUT="$out" TB_KERNEL_STEPS=4 timeout "$(left)" bash bench/gpu/kernels.sh > "$out/kernels_run.txt" 2>&1
    head -n 25 "$out/kernels.txt"
fi
cat "$out/summary.txt"
