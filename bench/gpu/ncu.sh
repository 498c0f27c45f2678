#!/usr/bin/env bash
# Nsight Compute on a few kernels of a frankenstein bf16 training step (issue 6): speed of
# light, occupancy, warp stall reasons, memory and pipe use of one launch of each kernel
# named in TB_NCU_KERNELS (space-separated regexes; a run of the trainer each). Run on the
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
kern=${TB_NCU_KERNELS:-"k_fat_bwd_kv k_fat_prep k_fat_fwd k_dyt_bwd_vec k_titan_proj_tiled k_bl_bf16_operands"}
: > "$out/ncu.txt"
for k in $kern; do
    # one launch of kernel k after the first few (the first step's), a run of its own
    "$ncu" --kernel-name "regex:$k" --launch-skip "${TB_NCU_SKIP:-4}" --launch-count 1 \
        --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
        --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis --section LaunchStats \
        "$c/tb-train-local" --data "$c/shard-00000.jsonl.gz" --tokenizer "$c/es8k.model" --seed 1234 \
        --backend cuda --preset frankenstein --set model.vocab_size=8000 --set training.precision=bf16 \
        --seq-len 512 --batch 8 --steps 100 --stop-after 2 > "$out/ncu_$k.txt" 2>&1
    echo "== $k rc=$?" >> "$out/ncu.txt"
    grep -E "Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Issue Slots Busy|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|No Eligible|Issued Warp|Eligible Warps|Active Warps Per|Block Limit|Executed Ipc A|L1/TEX Hit|L2 Hit|Mem Busy|Max Bandwidth|Mem Pipes Busy" \
        "$out/ncu_$k.txt" >> "$out/ncu.txt"
    grep -iE "stall|warp cycles per issued" "$out/ncu_$k.txt" | head -12 >> "$out/ncu.txt"
done
cat "$out/ncu.txt"
