#!/usr/bin/env bash
# The README's main command: setup, build, the Spanish demo corpus and tokenizer (built
# once, cached under ./var), then the main job on the embedded default.
#
# Main job today: tb-train-local trains the tiny preset on the demo corpus on the CPU
# backend (the daemons tb-prefetchd + tb-trainerd take over once tb-trainerd lands;
# see README "Status"). Environment knobs: TB_STEPS (default 200), TB_SEQ (128),
# TB_BATCH (8), TB_VAR (./var).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
var=${TB_VAR:-$top/var}
mkdir -p "$var"

echo "== setup"; ./deploy/setup.sh
echo "== build"; ./deploy/build.sh
echo "== corpus"
if [ ! -f "$var/corpus/stats.json" ]; then
  ./deploy/corpus/build.sh "$var/corpus"
fi
[ -f "$var/corpus/stats.txt" ] && cat "$var/corpus/stats.txt"
echo "== tokenizer"
if [ ! -f "$var/tokenizer/spm.model" ]; then
  mkdir -p "$var/tokenizer"
  ./deploy/spm-train.sh --input "$var/corpus" --vocab 8000 --out "$var/tokenizer/spm"
fi

echo "== train (tb-train-local, tiny preset, CPU)"
if [ ! -x build/trainerd/tools/tb-train-local ]; then
  echo "quickstart: tb-train-local is not built in this tree; stopping after corpus and tokenizer." >&2
  exit 1
fi
mkdir -p "$var/run"
exec build/trainerd/tools/tb-train-local --preset tiny --data "$var/corpus" \
  --tokenizer "$var/tokenizer/spm.model" --steps "${TB_STEPS:-200}" \
  --seq-len "${TB_SEQ:-128}" --batch "${TB_BATCH:-8}" --save "$var/run/checkpoint"
