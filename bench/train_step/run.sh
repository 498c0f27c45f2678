#!/usr/bin/env bash
# Training-step benchmark on a GPU (issue 6): tokens/s, peak GPU memory and MFU of
# tb-train-local on the CUDA backend for frankenstein B 8 x T 512, mini B 32 x T 128 and
# ultra B 8 x T 512, in fp32 and bf16 GEMM precision (training.precision), with and without
# activation recompute (model.activation_recompute: true, or ode for the ODE layers only;
# ultra only with it). The bf16 runs use the tensor-core tiles (the default); the *_cc runs
# turn them off (TB_CUDA_TC=0: attention and retention on fp32 CUDA cores).
#
#   bench/train_step/run.sh prepare   # here: tb-train-local with the CUDA backend, the
#                                     # libraries the GPU machine lacks, two demo shards and
#                                     # the tokenizer, to .carry/train (bench/gpu/train_local.sh)
#   bench/train_step/run.sh device    # on the GPU machine, .carry/train carried
#
# MFU = model FLOPs per token (tb_model_train_flops_per_token in trainerd/model/model.h:
# 3 x the forward's projections, attention / retention 4·T·C per evaluation, every ODE
# evaluation, top-K experts, head) x steady tokens/s / 798 TFLOP/s (an H100 SXM's dense
# bf16 peak). Steady tokens/s: the median of the per-step figures after step 2 (the first
# steps include cuBLASLt's algorithm choice and the scratch sizing). Peak memory:
# nvidia-smi's memory.used sampled every 200 ms (the CUDA context included). The demo
# tokenizer has 8000 pieces, so every preset runs with vocab_size 8000 (the reference's
# frankenstein figures are with 50000: its head is 6x larger).
# TB_RUNS="name ..." picks runs; TB_GPU_DEADLINE (s) skips what is left after it.
# Writes steps.txt (the table) and the logs to $OUT (or ./gpu-out).
set -u -o pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
case "${1:-}" in
prepare)
    exec bash bench/gpu/train_local.sh prepare
    ;;
device)
    out=${OUT:-$root/gpu-out}
    mkdir -p "$out"
    c=.carry/train
    export LD_LIBRARY_PATH="$root/$c/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    deadline=${TB_GPU_DEADLINE:-0}
    only=${TB_RUNS:-}
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
    printf '%-22s %9s %12s %10s %8s %s\n' run tok_s steady_tok_s peak_MiB MFU_% "GFLOP/token" | tee "$out/steps.txt"
    run() { # name, steps, then tb-train-local arguments
        local name=$1 steps=$2; shift 2
        if [ -n "$only" ] && [[ " $only " != *" $name "* ]]; then return; fi
        local lim=600
        [ "$deadline" -gt 0 ] && lim=$((deadline - SECONDS))
        if [ "$lim" -le 5 ]; then echo "$name skipped (deadline)" | tee -a "$out/steps.txt"; return; fi
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/$name.mem" 2>/dev/null &
        local smi=$!
        rm -f "$out/$name.csv" # tb-train-local appends to an existing CSV
        timeout "$lim" "$c/tb-train-local" --data "$c/shard-00000.jsonl.gz" --data "$c/shard-00001.jsonl.gz" \
            --tokenizer "$c/es8k.model" --seed 1234 --backend cuda --steps "$steps" --peak-tflops 798 \
            --set model.vocab_size=8000 --csv "$out/$name.csv" "$@" > "$out/$name.log" 2>&1
        local rc=$?
        kill $smi 2>/dev/null; wait $smi 2>/dev/null
        local peak; peak=$(sort -n "$out/$name.mem" | tail -1)
        local med; med=$(awk -F, 'NR > 2 {print $6}' "$out/$name.csv" 2>/dev/null | sort -n |
                         awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]; else print 0}')
        local all; all=$(grep -o '([0-9]* tok/s)' "$out/$name.log" | tr -dc 0-9)
        local gf; gf=$(grep -o 'model FLOPs [0-9.e+-]* GFLOP' "$out/$name.log" | awk '{print $3}')
        local mfu; mfu=$(awk -v g="${gf:-0}" -v t="${med:-0}" 'BEGIN {printf "%.2f", 100 * g * 1e9 * t / 798e12}')
        [ "$rc" -eq 0 ] || mfu="rc=$rc"
        printf '%-22s %9s %12s %10s %8s %s\n' "$name" "${all:-?}" "${med:-?}" "${peak:-?}" "$mfu" "${gf:-?}" |
            tee -a "$out/steps.txt"
    }
    echo "# $gpu, $(date -u +%Y-%m-%dT%H:%M:%SZ)" >> "$out/steps.txt"
    run frankenstein_fp32 10 --preset frankenstein --seq-len 512 --batch 8 --set training.precision=fp32
    run frankenstein_bf16 10 --preset frankenstein --seq-len 512 --batch 8 --set training.precision=bf16
    # without the bf16 tensor-core tiles (attention, retention / decay on CUDA cores)
    TB_CUDA_TC=0 run frankenstein_bf16_cc 10 --preset frankenstein --seq-len 512 --batch 8 \
        --set training.precision=bf16
    # which products of the tensor-core attention are split (TB_CUDA_TC_SPLIT, a bench
    # switch: 3 the default, 1 the scores only, 0 none), and the attention dropout's share
    TB_CUDA_TC_SPLIT=1 run frankenstein_bf16_s1 10 --preset frankenstein --seq-len 512 --batch 8 \
        --set training.precision=bf16
    TB_CUDA_TC_SPLIT=0 run frankenstein_bf16_s0 10 --preset frankenstein --seq-len 512 --batch 8 \
        --set training.precision=bf16
    run frankenstein_bf16_nodrop 10 --preset frankenstein --seq-len 512 --batch 8 --set training.precision=bf16 \
        --set model.dropout=0
    # the reference's vocabulary: a 50,000-piece demo tokenizer (es50k.model, carried when
    # var/tokenizer has it: deploy/spm-train.sh --vocab 50000); head and logits 6x the
    # default runs' (the later --set and --tokenizer win)
    [ -f "$c/es50k.model" ] &&
        run frankenstein_bf16_v50k 10 --preset frankenstein --seq-len 512 --batch 8 --set training.precision=bf16 \
            --set model.vocab_size=50000 --tokenizer "$c/es50k.model"
    run mini_fp32 20 --preset mini --seq-len 128 --batch 32 --set training.precision=fp32
    run mini_bf16 20 --preset mini --seq-len 128 --batch 32 --set training.precision=bf16
    TB_CUDA_TC=0 run mini_bf16_cc 20 --preset mini --seq-len 128 --batch 32 --set training.precision=bf16
    run frankenstein_bf16_rc 10 --preset frankenstein --seq-len 512 --batch 8 --set training.precision=bf16 \
        --set model.activation_recompute=true
    run frankenstein_bf16_rcode 10 --preset frankenstein --seq-len 512 --batch 8 --set training.precision=bf16 \
        --set model.activation_recompute=ode
    run ultra_bf16_rc 6 --preset ultra --seq-len 512 --batch 8 --set training.precision=bf16 \
        --set model.activation_recompute=true
    TB_CUDA_TC=0 run ultra_bf16_rc_cc 6 --preset ultra --seq-len 512 --batch 8 --set training.precision=bf16 \
        --set model.activation_recompute=true
    cat "$out/steps.txt"
    ;;
*)
    echo "usage: $0 prepare|device" >&2
    exit 64
    ;;
esac
