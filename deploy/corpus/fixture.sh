#!/usr/bin/env bash
# Builds tb's small test fixture in a few seconds, deterministically:
#   OUTDIR/fixture-00000.jsonl.gz   RedPajama-V2 shaped (raw_content, doc_id, meta)
#   OUTDIR/fixture-00000.jsonl.zst  the same documents with a `text` field
#   OUTDIR/spm.model, spm.vocab     tokenizer trained on it (deploy/spm-train.sh settings,
#                                   vocab FIXTURE_VOCAB, one thread: byte-identical model)
# Text: the first ~300 KB of rendered Spanish man pages of manpages-es (sorted by path,
# pages over 24 KB skipped), English paragraphs dropped (corpus.py).
# usage: deploy/corpus/fixture.sh [OUTDIR (default /work/main/var/fixture)]
# Skips the work when OUTDIR holds a stamp for the same scripts and package version.
set -euo pipefail
export LC_ALL=C
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/var/fixture}
FIXTURE_VOCAB=8000
if ! dpkg-query -W -f='${Status}' manpages-es 2>/dev/null | grep -q 'install ok installed'; then
  if [ "$(id -u)" -eq 0 ]; then
    "$repo/deploy/setup.sh" >&2
  else
    echo "fixture: package manpages-es missing: run deploy/setup.sh" >&2; exit 69
  fi
fi
mkdir -p "$out"
key=$( { cat "$here/fixture.sh" "$here/corpus.py" "$repo/deploy/spm-train.sh";
         dpkg-query -W -f='${Version}' manpages-es sentencepiece zstd; } | sha256sum | cut -c1-64)
if [ -f "$out/fixture.stamp" ] && [ "$(cat "$out/fixture.stamp")" = "$key" ] &&
   [ -f "$out/spm.model" ] && [ -f "$out/fixture-00000.jsonl.gz" ] &&
   [ -f "$out/fixture-00000.jsonl.zst" ]; then
  echo "fixture: up to date in $out"
  exit 0
fi
rm -f "$out/fixture.stamp"
python3 "$here/corpus.py" fixture "$out"
"$repo/deploy/spm-train.sh" --input "$out/fixture-00000.jsonl.gz" --vocab "$FIXTURE_VOCAB" \
  --threads 1 --out "$out/spm"
echo "$key" > "$out/fixture.stamp"
echo "fixture: done in $out"
