#!/usr/bin/env python3
"""Independent NumPy model of kvpress's decode-time presses, for cross-checking thinkv-sim.

Written from the behaviour of NVIDIA/kvpress (DecodingPress, CompressionRatioDecodingPress and
the TOVA, Knorm, KeyDiff and PyramidKV presses) as docs/policies.md states it, not from
thinkv-sim's Swift code. It reads a thinkv-trace (h5py), replays every recorded layer with q and
k, and prints one JSON line per compression that dropped tokens, in the `thinkv-sim replay
--kept` format:

    {"policy": "...", "step": t, "position": p, "layer": n, "kv_head": g, "kept": [ascending]}

The decode loop: positions P..T-1 are appended one by one; after decode step t with
(t + 1) % interval == 0 each kv head holding more than the target is compressed (target =
--budget, or max(1, int((p + 1)(1 - R))) with --compression-ratio R). The press keeps
int(L(1 - r)) tokens, r found by DecodingPress's bisection, in topk order (descending score,
lower slot first among ties); PyramidKV keeps its layer budget instead. Scores are float64;
--score-dtype bfloat16|float16 rounds where the press's code holds the model dtype.

    python3 kvpress_reference.py TRACE --press tova|knorm|keydiff|pyramidkv
        (--budget N | --compression-ratio R) [--interval 512 --window 64 --kernel 5 --beta 20
        --score-dtype float32 --layers 0,3 --steps N]
"""
import argparse
import json
import sys

import h5py
import numpy as np
from trace_layers import qk_layers
from score_dtype import round_to


def cast(x):
    """x rounded to the score dtype (via float32) and widened to float64; identity for float32."""
    return round_to(x, DTYPE)


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def ratio_for(target, length):
    """DecodingPress._find_target_compression_ratio, as that code bisects."""
    if length <= target:
        return 0.0
    ratio = 1.0 - target / length
    low, high = 0.0, 1.0
    for _ in range(20):
        kept = int(length * (1 - ratio))
        if kept == target:
            break
        if kept > target:
            low, ratio = ratio, (ratio + high) / 2
        else:
            high, ratio = ratio, (low + ratio) / 2
    return ratio


def topk(scores, n):
    """Indices of the n best scores, descending, lower index first among ties."""
    return sorted(range(len(scores)), key=lambda j: (-scores[j], j))[:n]


def norms(x):
    return cast(np.sqrt((x * x).sum(axis=-1)))


def knorm_scores(K):
    return -norms(cast(K))


def keydiff_scores(K):
    k = cast(K)
    unit = cast(k / np.maximum(norms(k), 1e-12)[:, None])
    anchor = cast(unit.mean(axis=0))
    a = cast(anchor / max(float(norms(anchor)), 1e-8))
    left = cast(k / np.maximum(norms(k), 1e-8)[:, None])
    return -cast(cast(left * a[None, :]).sum(axis=1))


def tova_scores(query, keys_per_head, scale):
    """query [Hq, D]; keys_per_head[h] = the cache keys of h's kv head [L, D]."""
    Hq = query.shape[0]
    total = 0
    for h in range(Hq):
        logits = cast(keys_per_head[h]) @ cast(query[h])
        logits = cast(cast(logits) * scale) if DTYPE else logits * scale
        total = total + cast(softmax(logits))[:-1]
    scores = list(cast(total / Hq))
    scores.append(float(cast(max(scores) + 1)))
    return scores


def snapkv_scores(K, window_queries, scale, w, kernel):
    """kvpress SnapKVPress.score for one kv head: K [L, D], window_queries [w, group, D]."""
    L = K.shape[0]
    C = L - w
    k = cast(K)
    group = window_queries.shape[1]
    per_head = []
    for h in range(group):
        rows = []
        for r in range(w):
            visible = C + r + 1
            logits = k[:visible] @ cast(window_queries[r, h])
            logits = cast(cast(logits) * scale) if DTYPE else logits * scale
            rows.append(cast(softmax(logits))[:C])
        mean = cast(np.mean(rows, axis=0))
        half = kernel // 2
        padded = np.concatenate([np.zeros(half), mean, np.zeros(half)])
        pooled = cast(np.array([padded[j:j + kernel].sum() / kernel for j in range(C)]))
        per_head.append(pooled)
    return cast(np.mean(per_head, axis=0))


def pyramid_budget(L, ratio, w, beta, layer, layers):
    """PyramidKVPress.get_layer_budget."""
    capacity = w + L * (1 - ratio)
    low = (capacity - w) / beta
    high = (capacity - w) * 2 - low
    if high >= L - w:
        high = L - w
        low = (capacity - w) * 2 - high
    if not (L >= high >= low >= w):
        return round(L * (1 - ratio))
    steps = (high - low) / (layers - 1) if layers > 1 else 0
    return round(high - layer * steps)


def replay_layer(q, k, P, args, layer, layers, out):
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    scale = 1 / np.sqrt(D)
    slots = [list(range(P)) for _ in range(Hkv)]
    last = T if args.steps is None else min(T, P + args.steps)
    for p in range(P, last):
        for g in range(Hkv):
            slots[g].append(p)
        t = p - P
        if (t + 1) % args.interval != 0:
            continue
        target = args.budget if args.budget is not None else max(1, int((p + 1) * (1 - args.compression_ratio)))
        new = [list(s) for s in slots]
        if args.press == "tova":
            L = len(slots[0])
            if L > target:
                scores = tova_scores(q[p], [k[slots[h // group], h // group, :] for h in range(Hq)], scale)
                order = topk(scores, int(L * (1 - ratio_for(target, L))))
                new = [[s[i] for i in order] for s in slots]
        else:
            for g in range(Hkv):
                L = len(slots[g])
                if L <= target:
                    continue
                ratio = ratio_for(target, L)
                K = k[slots[g], g, :]
                if args.press == "knorm":
                    order = topk(knorm_scores(K), int(L * (1 - ratio)))
                elif args.press == "keydiff":
                    order = topk(keydiff_scores(K), int(L * (1 - ratio)))
                else:
                    w = args.window
                    n = pyramid_budget(L, ratio, w, args.beta, layer, layers)
                    if n <= w:
                        order = list(range(L - w, L - w + n))
                    else:
                        queries = q[p - w + 1:p + 1, g * group:(g + 1) * group, :]
                        scores = snapkv_scores(K, queries, scale, w, args.kernel)
                        order = list(range(L - w, L)) + topk(list(scores), n - w)
                new[g] = [slots[g][i] for i in order]
        for g in range(Hkv):
            if len(new[g]) < len(slots[g]):
                out.write(json.dumps({"policy": f"{args.press}-reference", "step": t, "position": p, "layer": layer,
                                      "kv_head": g, "kept": sorted(new[g])}) + "\n")
        slots = new


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace")
    parser.add_argument("--press", choices=["tova", "knorm", "keydiff", "pyramidkv"], required=True)
    parser.add_argument("--budget", type=int)
    parser.add_argument("--compression-ratio", type=float)
    parser.add_argument("--interval", type=int, default=512)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--kernel", type=int, default=5)
    parser.add_argument("--beta", type=int, default=20)
    parser.add_argument("--score-dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--layers", help="comma-separated layer indices (default: all with q and k)")
    parser.add_argument("--steps", type=int, help="replay only the first N decode steps")
    args = parser.parse_args()
    if (args.budget is None) == (args.compression_ratio is None):
        parser.error("give exactly one of --budget and --compression-ratio")
    global DTYPE
    DTYPE = None if args.score_dtype == "float32" else args.score_dtype
    with h5py.File(args.trace, "r") as f:
        P = int(f.attrs["prompt_len"])
        layers = int(f.attrs["num_layers"])
        for index, group in qk_layers(f, args.layers):
            replay_layer(group["q"][...].astype(np.float64), group["k"][...].astype(np.float64), P, args,
                         index, layers, sys.stdout)


DTYPE = None

if __name__ == "__main__":
    main()
