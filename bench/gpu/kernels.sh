#!/usr/bin/env bash
# Where a frankenstein bf16 training step spends its GPU time, kernel by kernel (issue 6):
# Nsight Systems' CUDA kernel summary of a few steps of tb-train-local (B 8 x T 512, V 8000),
# and tb-train-local's own --profile phase table. Run on the GPU machine after
# `bash bench/train_step/run.sh prepare` here, with .carry/train carried:
#
#   bash bench/gpu/kernels.sh
#
# Writes kernels.txt (nsys's cuda_gpu_kern_sum, or a line saying nsys is absent) and
# phases.txt to $OUT (or ./gpu-out).
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
nsys=$(command -v nsys || ls /usr/local/cuda/bin/nsys /opt/nvidia/nsight-systems/*/bin/nsys \
       /usr/local/cuda/nsight-systems-*/bin/nsys 2>/dev/null | head -1)
if [ -n "$nsys" ]; then
    "$nsys" profile -o "$out/fr" --force-overwrite true -t cuda --stats=false \
        "$c/tb-train-local" "${args[@]}" > "$out/nsys_run.log" 2>&1
    "$nsys" stats -r cuda_gpu_kern_sum -f csv -o "$out/k" "$out/fr.nsys-rep" > /dev/null 2>&1
    f=$(ls "$out"/k*cuda_gpu_kern_sum*.csv 2>/dev/null | head -1)
    if [ -n "$f" ]; then
        # Time(%), Total Time (ns), Instances, Avg, ..., Name: the top 45 kernels
        python3 - "$f" > "$out/kernels.txt" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
tot = sum(float(r["Total Time (ns)"]) for r in rows)
print(f"{'share':>6} {'total_ms':>9} {'calls':>7} {'avg_us':>8}  kernel (GPU total {tot/1e6:.1f} ms)")
for r in rows[:45]:
    t = float(r["Total Time (ns)"])
    print(f"{100*t/tot:6.2f} {t/1e6:9.2f} {int(r['Instances']):7d} {float(r['Avg (ns)'])/1e3:8.1f}  {r['Name'][:110]}")
EOF
    else
        echo "nsys stats gave no kernel table (see nsys_run.log)" > "$out/kernels.txt"
    fi
    rm -f "$out"/fr.sqlite "$out"/k*.csv
else
    echo "nsys: not found on this machine" > "$out/kernels.txt"
fi
"$c/tb-train-local" "${args[@]}" --profile > "$out/phases.txt" 2>&1
head -60 "$out/kernels.txt"
grep profile: "$out/phases.txt"
