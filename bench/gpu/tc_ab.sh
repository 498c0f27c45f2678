#!/usr/bin/env bash
# One device call: the tensor-core attention's split products and the attention dropout,
# A/B in one run (issue 6). Here: bash bench/gpu/run.sh prepare && bash bench/train_step/run.sh prepare;
# on the GPU machine, .carry/cuda and .carry/train carried: bash bench/gpu/tc_ab.sh.
#   1. the model suite's tensor-core case and the dense_more tensor-core case (default split);
#   2. frankenstein bf16 steps: tensor-core attention with split 3 / 1 / 0, fp32-core
#      attention (TB_CUDA_TC=0), and without dropout;
#   3. the kernel table of the default tensor-core run.
set -u -o pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
export LD_LIBRARY_PATH="$root/.carry/cuda:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
for spec in "cuda_test_model_vs_cpu:*tensor_core*" "cuda_test_dense_more_vs_cpu:*tensor_cores*"; do
    t=${spec%%:*} f=${spec#*:}
    CT_FILTER="$f" timeout 120 ".carry/cuda/$t" > "$out/tc_$t.log" 2>&1
    echo "$t ($f) rc=$?" | tee -a "$out/summary.txt"
    grep -E "worst layer input|PASSED|FAILED" "$out/tc_$t.log" | cut -c1-220
done
OUT="$out" TB_GPU_DEADLINE=300 TB_RUNS="frankenstein_bf16 frankenstein_bf16_cc frankenstein_bf16_s1 frankenstein_bf16_s0 frankenstein_bf16_nodrop" \
    bash bench/train_step/run.sh device > "$out/train_step.txt" 2>&1
cat "$out/steps.txt"
OUT="$out" TB_KERNEL_STEPS=4 timeout 120 bash bench/gpu/kernels.sh > "$out/kernels_run.txt" 2>&1
head -n 16 "$out/kernels.txt" | cut -c1-130
