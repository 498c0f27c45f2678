#!/usr/bin/env python3
"""Unigram entropy (nats) of a corpus under a SentencePiece model: the masked-LM loss a
model reaches by predicting token frequencies alone, with no use of context.

usage: bench/learning/unigram_entropy.py var/tokenizer/es8k.model SHARD... [--heldout SHARD...]
Tokenizes with the `spm_encode` tool (Debian package sentencepiece), one document per line.
With --heldout: also the cross-entropy on the held-out shards of the unigram model fitted on
the others (add-1/2 smoothing over the tokenizer's vocabulary), the loss a context-free model
trained on them scores there.
"""
import collections
import gzip
import json
import math
import subprocess
import sys


def encode(model, shards):
    lines = []
    for path in shards:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                doc = json.loads(line)
                text = doc.get("raw_content") or doc.get("text") or ""
                lines.append(text.replace("\n", " "))
    out = subprocess.run(["spm_encode", f"--model={model}", "--output_format=id"],
                         input="\n".join(lines), capture_output=True, text=True, check=True)
    return len(lines), out.stdout.split()


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    model, rest = sys.argv[1], sys.argv[2:]
    heldout = []
    if "--heldout" in rest:
        k = rest.index("--heldout")
        rest, heldout = rest[:k], rest[k + 1:]
    ndocs, ids = encode(model, rest)
    counts = collections.Counter(ids)
    n = len(ids)
    h = -sum(c / n * math.log(c / n) for c in counts.values())
    print(f"{ndocs} documents, {n} tokens, {len(counts)} distinct ids, "
          f"unigram entropy {h:.4f} nats")
    if heldout:
        vocab = int(subprocess.run(["spm_export_vocab", f"--model={model}"], capture_output=True,
                                   text=True, check=True).stdout.count("\n"))
        hdocs, hids = encode(model, heldout)
        denom = n + 0.5 * vocab
        xent = -sum(math.log((counts.get(t, 0) + 0.5) / denom) for t in hids) / len(hids)
        print(f"held out: {hdocs} documents, {len(hids)} tokens, cross-entropy of the "
              f"training unigram model {xent:.4f} nats (vocabulary {vocab})")


if __name__ == "__main__":
    main()
