#!/usr/bin/env bash
# tb-train-local on the CUDA backend (issue 6): the model trained end to end on a GPU.
#
#   bench/gpu/train_local.sh prepare   # here: build tb-train-local (with the CUDA backend)
#                                      # and copy it, the libraries the device machine
#                                      # lacks, one demo shard and the tokenizer to .carry/train
#   bench/gpu/train_local.sh device    # on the GPU machine with .carry carried:
#       1. tiny, 30 steps, same seed on --backend cuda and --backend cpu: loss per step side
#          by side (fp32 both; dropout masks are the same draws)
#       2. mini B 32 x T 128 (12 steps) and frankenstein B 8 x T 512 (8 steps) on cuda:
#          tok/s over the run and its steady state (median per-step tok/s after step 2), and
#          the GPU memory in use (nvidia-smi sampled every 200 ms; the backend is fp32 with
#          device memory and an asynchronous stream, not the bf16 path issue 6 asks for)
#   Writes a table and the logs to $OUT (or ./gpu-out). TB_GPU_DEADLINE (s) skips what is left;
#   TB_RUNS="name ..." runs only those (tiny_cuda tiny_cpu mini_cuda frankenstein_cuda).
set -u -o pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
deadline=${TB_GPU_DEADLINE:-0}
case "${1:-}" in
prepare)
    b=${BUILD_DIR:-build}
    ninja -C "$b" trainerd/tools/tb-train-local || exit 1
    rm -rf .carry/train && mkdir -p .carry/train/lib || exit 1
    cp "$b/trainerd/tools/tb-train-local" .carry/train/ || exit 1
    ldd "$b/trainerd/tools/tb-train-local" | awk '$3 ~ /^\// {print $1, $3}' |
        grep -Ev '^(libc|libm|libmvec|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcudart|libcublas|libcublasLt)\.so' |
        while read -r name path; do cp -L "$path" ".carry/train/lib/$name" || exit 1; done || exit 1
    cp var/corpus/shard-00000.jsonl.gz var/corpus/shard-00001.jsonl.gz .carry/train/ || exit 1
    cp var/tokenizer/es8k.model .carry/train/ || exit 1
    # the 50,000-piece tokenizer of bench/train_step's frankenstein_bf16_v50k, when built
    [ ! -f var/tokenizer/es50k.model ] || cp var/tokenizer/es50k.model .carry/train/ || exit 1
    # the per-kernel time table of bench/gpu/kernels.sh (CUPTI; its library goes to tools/,
    # used only where the device's CUDA has none)
    cuda=${CUDA_HOME:-/usr/local/cuda}
    mkdir -p .carry/train/tools || exit 1
    gcc -std=c11 -Wall -Wextra -Werror -O2 -fPIC -shared -I"$cuda/include" bench/gpu/ktrace.c \
        -o .carry/train/libtbktrace.so -L"$cuda/lib" -L"$cuda/lib64" -lcupti || exit 1
    cp -L "$(ls "$cuda"/lib*/libcupti.so.* "$cuda"/extras/CUPTI/lib64/libcupti.so.* 2>/dev/null | head -1)" \
        .carry/train/tools/ || exit 1
    du -sh .carry/train
    ;;
device)
    out=${OUT:-$root/gpu-out}
    mkdir -p "$out"
    c=.carry/train
    export LD_LIBRARY_PATH="$root/$c/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/env.txt"
    left() { [ "$deadline" -le 0 ] && echo 600 || echo $((deadline - SECONDS)); }
    only=${TB_RUNS:-}  # e.g. "mini_cuda frankenstein_cuda": only those runs
    run() { # name, then tb-train-local arguments
        local name=$1; shift
        if [ -n "$only" ] && [[ " $only " != *" $name "* ]]; then return; fi
        local lim; lim=$(left)
        if [ "$lim" -le 5 ]; then echo "$name skipped (deadline)" | tee -a "$out/summary.txt"; return; fi
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$out/$name.mem" 2>/dev/null &
        local smi=$!
        timeout "$lim" "$c/tb-train-local" --data "$c/shard-00000.jsonl.gz" --data "$c/shard-00001.jsonl.gz" \
            --tokenizer "$c/es8k.model" --seed 1234 --csv "$out/$name.csv" "$@" > "$out/$name.log" 2>&1
        local rc=$?
        kill $smi 2>/dev/null; wait $smi 2>/dev/null
        local peak; peak=$(sort -n "$out/$name.mem" | tail -1)
        # steady state: the median of the per-step tok/s (CSV column 6) after the first 2 steps
        local med; med=$(awk -F, 'NR > 2 {print $6}' "$out/$name.csv" 2>/dev/null | sort -n |
                         awk '{v[NR] = $1} END {if (NR) print v[int((NR + 1) / 2)]; else print "?"}')
        echo "$name rc=$rc peak_mem_MiB=${peak:-?} steady_tok_s=$med $(tail -n 1 "$out/$name.log")" |
            tee -a "$out/summary.txt"
    }
    run tiny_cuda --preset tiny --backend cuda --steps 30 --seq-len 128 --batch 4 --lr-scale 10
    TB_CPU_THREADS=8 run tiny_cpu --preset tiny --backend cpu --steps 30 --seq-len 128 --batch 4 --lr-scale 10
    if [ -f "$out/tiny_cuda.csv" ] && [ -f "$out/tiny_cpu.csv" ]; then
        paste -d, "$out/tiny_cuda.csv" "$out/tiny_cpu.csv" |
            awk -F, '{d=$2-$9; if (d<0) d=-d; r=d/($9>0?$9:1); if (r>m) m=r;
                      printf "step %s loss cuda %.6f cpu %.6f rel diff %.2e\n", $1, $2, $9, r}
                     END {printf "max relative loss difference over %d steps: %.2e\n", NR, m}' |
            tee "$out/tiny_compare.txt" | tail -n 4
    fi
    # the demo tokenizer has 8000 pieces: mini and frankenstein run with vocab_size 8000
    run mini_cuda --preset mini --backend cuda --steps 12 --seq-len 128 --batch 32 --set model.vocab_size=8000
    run frankenstein_cuda --preset frankenstein --backend cuda --steps 8 --seq-len 512 --batch 8 --set model.vocab_size=8000
    cat "$out/summary.txt"
    ;;
*)
    echo "usage: $0 prepare|device" >&2
    exit 64
    ;;
esac
