#!/usr/bin/env python3
"""Unigram entropy (nats) of a corpus under a SentencePiece model: the masked-LM loss a
model reaches by predicting token frequencies alone, with no use of context.

usage: bench/learning/unigram_entropy.py var/tokenizer/es8k.model var/corpus/*.jsonl.gz
Tokenizes with the `spm_encode` tool (Debian package sentencepiece), one document per line.
"""
import collections
import gzip
import json
import math
import subprocess
import sys


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    model, shards = sys.argv[1], sys.argv[2:]
    lines = []
    for path in shards:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line)
                text = doc.get("raw_content") or doc.get("text") or ""
                lines.append(text.replace("\n", " "))
    out = subprocess.run(["spm_encode", f"--model={model}", "--output_format=id"],
                         input="\n".join(lines), capture_output=True, text=True, check=True)
    ids = out.stdout.split()
    counts = collections.Counter(ids)
    n = len(ids)
    h = -sum(c / n * math.log(c / n) for c in counts.values())
    print(f"{len(lines)} documents, {n} tokens, {len(counts)} distinct ids, "
          f"unigram entropy {h:.4f} nats")


if __name__ == "__main__":
    main()
