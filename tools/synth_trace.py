#!/usr/bin/env python3
"""Writes a synthetic routing trace (docs/TRACE_FORMAT.md) for timing `moex lrc`.

Routing with some locality, like a real model's: each layer has a skewed popularity over
its experts, each stretch of 64 tokens a "topic" that favours a few experts, and every
token draws its top-k distinct experts by Gumbel top-k over those logits.

  python3 tools/synth_trace.py --tokens 1000000 --layers 48 --experts 128 --top-k 8 \
      --seq 4096 -o /tmp/big.trace
"""
import argparse
import struct

import numpy as np


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=1000000)
    ap.add_argument("--layers", type=int, default=48)
    ap.add_argument("--experts", type=int, default=128)
    ap.add_argument("--top-k", type=int, default=8)
    ap.add_argument("--seq", type=int, default=4096, help="tokens per sequence")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("-o", "--output", required=True)
    a = ap.parse_args()
    if a.experts > 256:
        raise SystemExit("this generator writes one-byte ids: --experts <= 256")
    rng = np.random.default_rng(a.seed)
    n, L, E, k = a.tokens, a.layers, a.experts, a.top_k
    ids = np.empty((n, L, k), dtype=np.uint8)
    chunk = 65536
    for l in range(L):
        base = rng.normal(0, 1.0, E)
        topics = rng.normal(0, 1.5, (n // 64 + 1, E))
        for s in range(0, n, chunk):
            e = min(n, s + chunk)
            logits = base + topics[np.arange(s, e) // 64] + rng.gumbel(size=(e - s, E))
            ids[s:e, l, :] = np.argpartition(-logits, k, axis=1)[:, :k]
    with open(a.output, "wb") as f:
        name = b"synthetic"
        f.write(b"MOEXTRC\0" + struct.pack("<6I", 1, 0, E, k, L, len(name)) + name)
        for i, s in enumerate(range(0, n, a.seq)):
            e = min(n, s + a.seq)
            nm = str(i).encode()
            f.write(struct.pack("<I", len(nm)) + nm + struct.pack("<I", e - s))
            f.write(ids[s:e].tobytes())


if __name__ == "__main__":
    main()
