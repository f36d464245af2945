#!/usr/bin/env python3
"""Independent NumPy model of LazyEviction's lagged eviction, for cross-checking thinkv-sim.

Written from the authors' code (Halo-949/LazyEviction, as vendored in WeianMao/triattention at
e7a0eb1: model/kv_utils.py Window_LAZYKVCluster.update_kv_in_decoding, model/temp_cacheobs.py
TempCache.record_recurrence, model/qwen_model.py, evaluation.py), not from thinkv-sim's Swift code.
It reads a thinkv-trace (h5py), replays every layer with q and k, and prints one JSON line per
(decode step, kv head) whose cache lost tokens, in the `thinkv-sim replay --kept` format:

    {"policy": "lazyeviction-reference", "step": t, "position": p, "layer": n, "kv_head": g, "kept": [...]}

Model (docs/policies.md, lazyeviction): decode step t has c = t + 1. The new position joins the
cache at the end with last = c - 1, mri = 0 (every token has last = mri = 0 at c = 1). The current
query's softmax over the cache (scale 1/sqrt(D)) marks slot j important for kv head g when any
query head of g gives it >= alpha; then last[j] = c and mri[j] = max(mri[j], c - old last). If
the cache holds L > budget tokens and c % W == 0, the first L - W slots are ranked by
2/(1 + exp(1 + (c - last)/(mri + 1e-5))) + (0 if mri == 0 else 2/(1 + exp(mri - 1))), the top
budget - W kept in descending order (lower slot first among ties), followed by the last W slots;
that is the new slot order. --score-dtype float16 rounds where the code's fp16 tensors do.

    python3 lazyeviction_reference.py TRACE --budget B [--window 128 --alpha 0.0001
        --score-dtype float32|float16|bfloat16 --layers 0,3 --steps N]
"""
import argparse
import json
import math
import sys

import h5py
import numpy as np
from trace_layers import qk_layers
from score_dtype import round_to

DTYPE = None


def r(x):
    """x rounded to the score dtype; a float."""
    return float(round_to(x, DTYPE)) if DTYPE else float(x)


def exp(x):
    """e^x, infinite past the float64 range (as the GPU's exp gives inf)."""
    return math.inf if x > 709 else math.exp(x)


def importance(c, last, mri):
    s = 0.0 if mri == 0 else r(2 / r(1 + r(exp(r(mri - 1)))))
    ratio = r(r(c - last) / r(mri + 1e-5))
    return r(r(2 / r(1 + r(exp(r(1 + ratio))))) + s)


def replay_layer(q, k, P, args, layer, out):
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    scale = 1 / math.sqrt(D)
    threshold = r(args.alpha)
    slots = [list(range(P)) for _ in range(Hkv)]
    last = [dict.fromkeys(range(P), 0.0) for _ in range(Hkv)]
    mri = [dict.fromkeys(range(P), 0.0) for _ in range(Hkv)]
    stop = T if args.steps is None else min(T, P + args.steps)
    for p in range(P, stop):
        t = p - P
        c = t + 1
        for g in range(Hkv):
            slots[g].append(p)
            last[g][p] = r(c - 1)
            mri[g][p] = 0.0
            keys = round_to(k[slots[g], g, :], DTYPE) if DTYPE else k[slots[g], g, :]
            important = np.zeros(len(slots[g]), dtype=bool)
            for h in range(g * group, (g + 1) * group):
                qh = round_to(q[p, h], DTYPE) if DTYPE else q[p, h]
                logits = keys @ qh
                logits = round_to(round_to(logits, DTYPE) * scale, DTYPE) if DTYPE else logits * scale
                e = np.exp(logits - logits.max())
                probs = e / e.sum()
                if DTYPE:
                    probs = round_to(probs, DTYPE)
                important |= probs >= threshold
            for j in np.nonzero(important)[0]:
                pos = slots[g][j]
                old = last[g][pos]
                last[g][pos] = r(c)
                mri[g][pos] = max(mri[g][pos], r(last[g][pos] - old))
            L = len(slots[g])
            if L <= args.budget or c % args.window != 0:
                continue
            scores = [importance(c, last[g][pos], mri[g][pos]) for pos in slots[g][:L - args.window]]
            order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:args.budget - args.window]
            slots[g] = [slots[g][i] for i in order] + slots[g][L - args.window:]
            out.write(json.dumps({"policy": "lazyeviction-reference", "step": t, "position": p, "layer": layer,
                                  "kv_head": g, "kept": sorted(slots[g])}) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace")
    parser.add_argument("--budget", type=int, required=True)
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--alpha", type=float, default=0.0001)
    parser.add_argument("--score-dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--layers", help="comma-separated layer indices (default: all with q and k)")
    parser.add_argument("--steps", type=int, help="replay only the first N decode steps")
    args = parser.parse_args()
    if args.budget < args.window:
        parser.error("--budget must be at least --window")
    global DTYPE
    DTYPE = None if args.score_dtype == "float32" else args.score_dtype
    with h5py.File(args.trace, "r") as f:
        P = int(f.attrs["prompt_len"])
        for index, group in qk_layers(f, args.layers):
            replay_layer(group["q"][...].astype(np.float64), group["k"][...].astype(np.float64), P, args, index,
                         sys.stdout)


if __name__ == "__main__":
    main()
