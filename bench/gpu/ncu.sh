#!/usr/bin/env bash
# Nsight Compute on a few kernels of a frankenstein bf16 training step (issue 6): speed of
# light, occupancy, warp stall reasons and pipe use of the kernels whose names match
# TB_NCU_KERNELS (a regex; default the tensor-core attention and the Mamba scan). Run on the
# GPU machine after `bash bench/train_step/run.sh prepare` here, with .carry/train carried:
#
#   bash bench/gpu/ncu.sh
#
# Writes ncu.txt to $OUT (or ./gpu-out); says so and stops when ncu is not installed.
set -u -o pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
c=.carry/train
export LD_LIBRARY_PATH="$root/$c/lib:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
if [ -z "$ncu" ]; then
    echo "ncu not found" | tee "$out/ncu.txt"
    exit 0
fi
kern=${TB_NCU_KERNELS:-"k_fat_bwd_kv|k_fat_fwd|k_fat_dq|k_fat_prep|k_scan_bwd|k_scan_fwd"}
# one launch of each matching kernel, after the first step's (-launch-skip counts matches)
"$ncu" --kernel-name "regex:$kern" --launch-skip "${TB_NCU_SKIP:-40}" --launch-count "${TB_NCU_COUNT:-8}" \
    --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
    --section ComputeWorkloadAnalysis --section LaunchStats \
    "$c/tb-train-local" --data "$c/shard-00000.jsonl.gz" --tokenizer "$c/es8k.model" --seed 1234 --backend cuda \
    --preset frankenstein --set model.vocab_size=8000 --set training.precision=bf16 \
    --seq-len 512 --batch 8 --steps 100 --stop-after 2 > "$out/ncu.txt" 2>&1
echo "ncu rc=$?" >> "$out/ncu.txt"
grep -E "^  [a-z_A-Z].*\(|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Stall|Issue Slots Busy|Compute \(SM\) Throughput|Memory Throughput|No Eligible|Block Limit" "$out/ncu.txt" | head -150
