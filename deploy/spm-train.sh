#!/usr/bin/env bash
# Trains tb's SentencePiece tokenizer with the reference's settings (DESIGN.md, Data):
# BPE, character_coverage 0.9995, nmt_nfkc, byte_fallback, split_digits,
# <pad>=0 <unk>=1 <s>=2 </s>=3 [CLS]=4 [SEP]=5 [MASK]=6 [PAD]=7 (control symbols).
#
# usage: deploy/spm-train.sh --input DIR_OR_FILE... --out PREFIX [--vocab N (50000)]
#          [--threads N (nproc)] [--sample N (0 = every line)] [--seed N (1234)]
#
# --input takes shard files (.jsonl.gz with raw_content, .jsonl.zst/.jsonl with text)
# or directories (every *.jsonl.gz in them, else every *.jsonl.zst); may repeat.
# The documents' non-empty lines become the trainer's sentences, in a temporary file.
# --sample N loads N sentences drawn with shuffle_input_sentence under the fixed seed.
# Writes PREFIX.model and PREFIX.vocab. The trainer runs in a temporary directory on
# relative names so the model bytes do not depend on where the files live; with
# --threads 1 the same input gives a byte-identical model.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
vocab=50000
threads=$(nproc)
sample=0
seed=1234
out=""
inputs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --input) shift; while [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; do inputs+=("$1"); shift; done; continue ;;
    --vocab) vocab=$2; shift ;;
    --out) out=$2; shift ;;
    --threads) threads=$2; shift ;;
    --sample) sample=$2; shift ;;
    --seed) seed=$2; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "spm-train: unknown argument '$1'" >&2; exit 64 ;;
  esac
  shift
done
if [ -z "$out" ] || [ ${#inputs[@]} -eq 0 ]; then
  echo "spm-train: need --input and --out (see --help)" >&2; exit 64
fi
files=()
for i in "${inputs[@]}"; do
  if [ -d "$i" ]; then
    mapfile -t f < <(find "$i" -maxdepth 1 -name '*.jsonl.gz' | sort)
    [ ${#f[@]} -gt 0 ] || mapfile -t f < <(find "$i" -maxdepth 1 -name '*.jsonl.zst' | sort)
    [ ${#f[@]} -gt 0 ] || { echo "spm-train: no *.jsonl.gz or *.jsonl.zst in '$i'" >&2; exit 66; }
    files+=("${f[@]}")
  elif [ -f "$i" ]; then
    files+=("$(cd "$(dirname "$i")" && pwd)/$(basename "$i")")
  else
    echo "spm-train: input '$i' not found" >&2; exit 66
  fi
done
mkdir -p "$(dirname "$out")"
outdir=$(cd "$(dirname "$out")" 2>/dev/null && pwd) || { echo "spm-train: no directory for '$out'" >&2; exit 66; }
outbase=$(basename "$out")
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tb-spm-train.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
python3 "$here/corpus/corpus.py" extract-text "$tmp/input.txt" "${files[@]}"
t0=$(date +%s.%N)
(cd "$tmp" && spm_train --input=input.txt --model_prefix=model --model_type=bpe \
  --vocab_size="$vocab" --character_coverage=0.9995 --normalization_rule_name=nmt_nfkc \
  --byte_fallback=true --split_digits=true \
  --pad_id=0 --unk_id=1 --bos_id=2 --eos_id=3 --control_symbols='[CLS],[SEP],[MASK],[PAD]' \
  --input_sentence_size="$sample" --shuffle_input_sentence=true --random_seed="$seed" \
  --num_threads="$threads" --minloglevel=1) > "$tmp/train.log" 2>&1 || {
  tail -20 "$tmp/train.log" >&2; echo "spm-train: spm_train failed" >&2; exit 70; }
t1=$(date +%s.%N)
mv "$tmp/model.model" "$outdir/$outbase.model"
mv "$tmp/model.vocab" "$outdir/$outbase.vocab"
printf 'spm-train: %s.model vocab %s, %s sentences, %.1f s training on %s threads\n' \
  "$out" "$vocab" "$(wc -l < "$tmp/input.txt")" "$(echo "$t1 - $t0" | bc)" "$threads" >&2
