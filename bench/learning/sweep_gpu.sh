#!/usr/bin/env bash
# Issue 4's learning runs, explored on a GPU: several tiny-preset configurations trained at
# once (one process each, CUDA backend, fp32) with the held-out evaluation of the CPU runs in
# docs/MODEL-NOTES.md (shard 7, 3,614 positions masked at 15%). The CUDA backend computes the
# same model in fp32 (issue 6 checks every op against the CPU), so a configuration's held-out
# curve here says which configurations are worth a timed 20-minute run on 2 CPU cores; the
# figures that count for the issue are the CPU runs, not these.
#
#   bench/learning/sweep_gpu.sh prepare   # here: tb-train-local (CUDA build), the libraries
#                                         # the GPU machine lacks, shards 0-7 and the
#                                         # tokenizer to .carry/learn
#   bench/learning/sweep_gpu.sh device    # there, with .carry/learn carried; TB_SWEEP picks
#                                         # the configurations by name (default: all)
# Writes sweep.txt (held-out loss per evaluation, per configuration) and the logs to $OUT.
set -u -o pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
c=.carry/learn
case "${1:-}" in
prepare)
    b=${BUILD_DIR:-build}
    ninja -C "$b" trainerd/tools/tb-train-local || exit 1
    rm -rf "$c" && mkdir -p "$c/lib" || exit 1
    cp "$b/trainerd/tools/tb-train-local" "$c/" || exit 1
    ldd "$b/trainerd/tools/tb-train-local" | awk '$3 ~ /^\// {print $1, $3}' |
        grep -Ev '^(libc|libm|libmvec|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcudart|libcublas|libcublasLt)\.so' |
        while read -r name path; do cp -L "$path" "$c/lib/$name" || exit 1; done || exit 1
    cp var/corpus/shard-0000[0-7].jsonl.gz var/tokenizer/es8k.model "$c/" || exit 1
    du -sh "$c"
    ;;
device)
    out=${OUT:-$root/sweep-out}
    mkdir -p "$out"
    export LD_LIBRARY_PATH="$root/$c/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    lim=${TB_SWEEP_LIMIT:-540}
    only=${TB_SWEEP:-}
    # the command of run 2 (docs/MODEL-NOTES.md) less the batch, steps and learning rate
    common=(--preset tiny --backend cuda --tokenizer "$c/es8k.model" --seq-len 128 --seed 1234
            --set model.dropout=0 --set training.mlm_probability=0.4
            --set training.min_lr_ratio=0.02 --interleave 8
            --eval-data "$c/shard-00007.jsonl.gz" --eval-mask-prob 0.15)
    for s in 0 1 2 3 4 5 6; do common+=(--data "$c/shard-0000$s.jsonl.gz"); done
    b4=(--batch 4 --accum 2 --eval-batches 48)
    b2=(--batch 2 --accum 2 --eval-batches 96)
    b8=(--batch 8 --accum 2 --eval-batches 24)
    pids=()
    # TB_SWEEP_SEQ=1: one run after the other (processes sharing one GPU slow each other
    # down far more than they gain); lim then bounds each run.
    seq=${TB_SWEEP_SEQ:-0}
    start() { # name, then arguments
        local name=$1; shift
        if [ -n "$only" ] && [[ " $only " != *" $name "* ]]; then return; fi
        echo "$name: $*" >> "$out/configs.txt"
        if [ "$seq" = 1 ]; then
            timeout "$lim" "$c/tb-train-local" "${common[@]}" "$@" > "$out/$name.log" 2>&1
            return
        fi
        timeout "$lim" "$c/tb-train-local" "${common[@]}" "$@" > "$out/$name.log" 2>&1 &
        pids+=($!)
    }
    start base  "${b4[@]}" --steps 1300 --lr-scale 5 --eval-every 325
    start lr10  "${b4[@]}" --steps 1300 --lr-scale 10 --eval-every 325
    start emb20 "${b4[@]}" --steps 1300 --lr-scale 5 --eval-every 325 \
        --set training.optimizer.parameters.adamw-lr_embeddings=4e-4 \
        --set training.optimizer.parameters.adamw-lr_other=4e-4
    start m25   "${b4[@]}" --steps 1300 --lr-scale 5 --eval-every 325 --set training.mlm_probability=0.25
    start b2    "${b2[@]}" --steps 2600 --lr-scale 5 --eval-every 650
    start b2lr3 "${b2[@]}" --steps 2600 --lr-scale 3.5 --eval-every 650
    start b2lr8 "${b2[@]}" --steps 2600 --lr-scale 8 --eval-every 650
    start wu3   "${b4[@]}" --steps 1300 --lr-scale 5 --eval-every 325 --set training.scheduler_warmup_ratio=0.03
    start b8    "${b8[@]}" --steps 650 --lr-scale 5 --eval-every 325
    start b8lr8 "${b8[@]}" --steps 650 --lr-scale 8 --eval-every 325
    for p in "${pids[@]+"${pids[@]}"}"; do wait "$p"; done
    for f in "$out"/*.log; do
        n=$(basename "$f" .log)
        printf '%-6s %s | %s\n' "$n" \
            "$(grep -o 'eval step [0-9]*: masked-LM loss [0-9.]*' "$f" | awk '{printf "%s=%s ", $3, $6}')" \
            "$(grep -o 'over [0-9]* positions' "$f" | head -1)"
    done | tee "$out/sweep.txt"
    ;;
*)
    echo "usage: $0 prepare|device" >&2
    exit 64
    ;;
esac
