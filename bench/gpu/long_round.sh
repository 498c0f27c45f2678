#!/usr/bin/env bash
# One device call for what the bf16 default must still show after a change of kernels
# (issue 6): tb-trainerd's daemon tests on the GPU (bench/gpu/daemon.sh), 1,000 bf16 steps
# of frankenstein on the demo shards (loss finite throughout), and the recompute runs' peak
# memory (bench/train_step/run.sh: frankenstein with the ODE layers recomputed, ultra).
#
#   bash bench/gpu/daemon.sh prepare && bash bench/train_step/run.sh prepare   # here
#   bash bench/gpu/long_round.sh      # there, .carry/daemon and .carry/train carried
# Writes summary.txt, long.csv / long.log and the other runs' logs under $OUT.
set -u -o pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
start=$SECONDS

OUT="$out" TB_DAEMON_TIMEOUT=150 bash bench/gpu/daemon.sh device > "$out/daemon.txt" 2>&1
echo "daemon tests rc=$?" | tee -a "$out/summary.txt"
tail -n 3 "$out/daemon.txt"

c=.carry/train
( export LD_LIBRARY_PATH="$root/$c/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
  timeout 380 "$c/tb-train-local" --preset frankenstein --backend cuda --set model.vocab_size=8000 \
      --set training.precision=bf16 --data "$c/shard-00000.jsonl.gz" --data "$c/shard-00001.jsonl.gz" \
      --tokenizer "$c/es8k.model" --seq-len 512 --batch 8 --steps 1000 --seed 1234 --peak-tflops 798 \
      --csv "$out/long.csv" > "$out/long.log" 2>&1
  echo "frankenstein bf16 1000 steps rc=$?" | tee -a "$out/summary.txt" )
tail -n 4 "$out/long.log"
# long.csv: step, loss, ... (no header); a loss that is not a plain number is nan or inf
awk -F, '$2 !~ /^-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$/ {bad++} END {print NR " steps, non-finite losses: " bad + 0}' \
    "$out/long.csv" | tee -a "$out/summary.txt"

left=$((590 - (SECONDS - start)))
if [ "$left" -gt 40 ]; then
    OUT="$out" TB_GPU_DEADLINE=$((left - 10)) TB_RUNS="frankenstein_bf16_rcode ultra_bf16_rc frankenstein_bf16_rc" \
        bash bench/train_step/run.sh device > "$out/train_step.txt" 2>&1
    cat "$out/steps.txt"
fi
cat "$out/summary.txt"
