#!/usr/bin/env bash
# Proves deploy/corpus/fixture.sh is deterministic: two builds into fresh directories give
# byte-identical shards and tokenizer (and the directory name does not leak into them).
set -euo pipefail
src=$1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/tb-fixture-det.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
"$src/deploy/corpus/fixture.sh" "$tmp/a" > /dev/null 2>&1
"$src/deploy/corpus/fixture.sh" "$tmp/b-other-name" > /dev/null 2>&1
rc=0
for f in fixture-00000.jsonl.gz fixture-00000.jsonl.zst spm.model spm.vocab; do
  if cmp "$tmp/a/$f" "$tmp/b-other-name/$f"; then echo "same: $f"; else echo "DIFFERS: $f"; rc=1; fi
done
exit $rc
