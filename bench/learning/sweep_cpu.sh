#!/usr/bin/env bash
# Issue 4's learning runs, explored on the GPU machine's CPUs: several tiny-preset
# configurations trained side by side on the CPU backend, a few cores each, with the held-out
# evaluation of docs/MODEL-NOTES.md (shard 7, 3,614 positions masked at 15%). The CPU backend
# gives the same numbers whatever the thread count and the machine (same binary, AVX2 + FMA
# on both), so a configuration's held-out curve here is the curve a 2-core run on the dev box
# draws for the same steps; only the clock differs. Configurations named g_* run one after
# the other on the GPU (CUDA backend, fp32) on the remaining cores: a different summation
# order, so compare them with each other, not with the CPU ones.
#
#   bench/learning/sweep_gpu.sh prepare   # here: the binary, libraries, shards, tokenizer
#   bench/learning/sweep_cpu.sh device    # there, with .carry/learn carried; TB_SWEEP picks
#                                         # the configurations by name; TB_SWEEP_MIN bounds
#                                         # each CPU run (minutes, default 9.2),
#                                         # TB_SWEEP_CORES the cores per CPU run (3)
# Writes sweep.txt (held-out loss per evaluation, per configuration) and the logs to $OUT.
set -u -o pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
c=.carry/learn
[ "${1:-}" = device ] || { echo "usage: $0 device (after sweep_gpu.sh prepare)" >&2; exit 64; }
out=${OUT:-$root/sweep-out}
mkdir -p "$out"
export LD_LIBRARY_PATH="$root/$c/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
mins=${TB_SWEEP_MIN:-9.2}
cores=${TB_SWEEP_CORES:-3}
only=${TB_SWEEP:-}
ncpu=$(nproc)
# run 6's command (docs/MODEL-NOTES.md), less what a configuration changes
common=(--preset tiny --tokenizer "$c/es8k.model" --seq-len 128 --seed 1234
        --set model.dropout=0 --set training.mlm_probability=0.4
        --set training.min_lr_ratio=0.02 --interleave 8 --eval-seed 1235
        --eval-data "$c/shard-00007.jsonl.gz" --eval-mask-prob 0.15 --eval-batches 24)
for s in 0 1 2 3 4 5 6; do common+=(--data "$c/shard-0000$s.jsonl.gz"); done
run6=(--batch 8 --accum 2 --steps 860 --eval-every 215 --lr-scale 8)
betas() { # beta1 beta2: every group
    local g
    for g in embeddings norms ode retnet mamba attention other; do
        printf -- '--set\ntraining.optimizer.parameters.adamw-betas_%s=[%s, %s]\n' "$g" "$1" "$2"
    done
}
mapfile -t b99 < <(betas 0.9 0.99)
next=0
pids=()
gpu=()
want() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]]; }
cpu() { # name, then arguments
    local name=$1; shift
    want "$name" || return 0
    local lo=$next hi=$((next + cores - 1))
    if [ "$hi" -ge "$ncpu" ]; then echo "$name: no cores left" | tee -a "$out/configs.txt"; return 0; fi
    next=$((hi + 1))
    echo "$name (cpu $lo-$hi): $*" >> "$out/configs.txt"
    TB_CPU_THREADS=$cores taskset -c "$lo-$hi" "$c/tb-train-local" "${common[@]}" --backend cpu --parallel \
        --minutes "$mins" "$@" > "$out/$name.log" 2>&1 &
    pids+=($!)
}
gpuq() { # name, then arguments: queued for the GPU
    want "$1" || return 0
    gpu+=("$(printf '%q ' "$@")")
}
cpu base "${run6[@]}"
cpu b99 "${run6[@]}" "${b99[@]}"
cpu lr12 --batch 8 --accum 2 --steps 860 --eval-every 215 --lr-scale 12
cpu clip0 "${run6[@]}" --set training.grad_clip_max_norm=0
gpuq g_base "${run6[@]}"
gpuq g_s2 "${run6[@]}" --seed 2
gpuq g_s3 "${run6[@]}" --seed 3
gpuq g_il64 "${run6[@]}" --interleave 64
gpuq g_b99 "${run6[@]}" "${b99[@]}"
gpuq g_m50 "${run6[@]}" --set training.mlm_probability=0.5
gpuq g_t64 --batch 16 --accum 2 --steps 860 --eval-every 215 --lr-scale 8 --seq-len 64
gpuq g_b16 --batch 16 --accum 2 --steps 430 --eval-every 215 --lr-scale 12
gpuq g_wu5 "${run6[@]}" --set training.scheduler_warmup_ratio=0.05
gpuq g_ms6 "${run6[@]}" --set training.mlm_mask_share=0.6
gpuq g_ms4 "${run6[@]}" --set training.mlm_mask_share=0.4
gpuq g_ms2 "${run6[@]}" --set training.mlm_mask_share=0.2
gpuq g_ms6s2 "${run6[@]}" --set training.mlm_mask_share=0.6 --seed 2
gpuq g_ms4s2 "${run6[@]}" --set training.mlm_mask_share=0.4 --seed 2
gpuq g_ms2s2 "${run6[@]}" --set training.mlm_mask_share=0.2 --seed 2
gpuq g_ms2s3 "${run6[@]}" --set training.mlm_mask_share=0.2 --seed 3
if [ "${#gpu[@]}" -gt 0 ]; then
    (
        end=$((SECONDS + ${TB_SWEEP_GPU_S:-540}))
        for g in "${gpu[@]}"; do
            eval "set -- $g"
            name=$1; shift
            left=$((end - SECONDS))
            [ "$left" -gt 30 ] || break
            echo "$name (gpu): $*" >> "$out/configs.txt"
            TB_CPU_THREADS=2 taskset -c "$next-$((ncpu - 1))" timeout "$left" "$c/tb-train-local" \
                "${common[@]}" --backend cuda "$@" > "$out/$name.log" 2>&1
        done
    ) &
    pids+=($!)
fi
for p in "${pids[@]+"${pids[@]}"}"; do wait "$p"; done
for f in "$out"/*.log; do
    n=$(basename "$f" .log)
    printf '%-7s %s | %s | %s\n' "$n" \
        "$(grep -o 'eval step [0-9]*: masked-LM loss [0-9.]*' "$f" | awk '{printf "%s=%s ", $3, $6}')" \
        "$(grep -o 'over [0-9]* positions' "$f" | head -1)" \
        "$(grep -o '[0-9]* steps, [0-9]* tokens in [0-9.]* s ([0-9]* tok/s)' "$f" | tail -1)"
done | tee "$out/sweep.txt"
lscpu | grep -i 'model name' >> "$out/sweep.txt"
# the device tool brings back at most 8 files: the logs travel as one archive
(cd "$out" && tar czf logs.tgz ./*.log configs.txt && rm -f ./*.log configs.txt)
