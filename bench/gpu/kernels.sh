#!/usr/bin/env bash
# Where a frankenstein bf16 training step spends its GPU time, kernel by kernel (issue 6):
# every kernel's summed time over a few steps of tb-train-local (B 8 x T 512, V 8000) from
# CUPTI (bench/gpu/ktrace.c), and tb-train-local's own --profile phase table. Run on the GPU machine after
# `bash bench/train_step/run.sh prepare` here, with .carry/train carried:
#
#   bash bench/gpu/kernels.sh
#
# Writes kernels.txt and phases.txt to $OUT (or ./gpu-out).
set -u -o pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
c=.carry/train
export LD_LIBRARY_PATH="$root/$c/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
steps=${TB_KERNEL_STEPS:-6}
args=(--data "$c/shard-00000.jsonl.gz" --tokenizer "$c/es8k.model" --seed 1234 --backend cuda
      --preset frankenstein --set model.vocab_size=8000 --set training.precision=bf16
      --seq-len 512 --batch 8 --steps 100 --stop-after "$steps")
# the kernel table: CUPTI's activity records through the driver's injection hook
# (bench/gpu/ktrace.c, built by prepare); Nsight Systems is not on the device machine
# the idle table covers the last three steps' time (TB_KTRACE_TAIL_MS, 3 x 220 ms by default)
LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$root/$c/tools" CUDA_INJECTION64_PATH="$root/$c/libtbktrace.so" \
    TB_KTRACE_TAIL_MS="${TB_KTRACE_TAIL_MS:-660}" TB_KTRACE_OUT="$out/kernels.txt" "$c/tb-train-local" "${args[@]}" > "$out/ktrace_run.log" 2>&1 ||
    echo "ktrace run failed (see ktrace_run.log)" >> "$out/kernels.txt"
# TB_TIMELINE=1: a second traced run that writes every record of the tail in order, with
# its lag behind the host call that launched it (timeline.txt; see ktrace.c)
if [ "${TB_TIMELINE:-0}" = 1 ]; then
    LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$root/$c/tools" CUDA_INJECTION64_PATH="$root/$c/libtbktrace.so" \
        TB_KTRACE_TAIL_MS="${TB_KTRACE_TAIL_MS:-660}" TB_KTRACE_OUT="$out/kernels_tl.txt" \
        TB_KTRACE_TIMELINE="$out/timeline.txt" "$c/tb-train-local" "${args[@]}" > "$out/ktrace_tl.log" 2>&1 ||
        echo "timeline run failed (see ktrace_tl.log)" >> "$out/kernels_tl.txt"
fi
"$c/tb-train-local" "${args[@]}" --profile > "$out/phases.txt" 2>&1
head -70 "$out/kernels.txt"
grep profile: "$out/phases.txt"
