#!/usr/bin/env python3
"""Independent NumPy model of R-KV's legacy decode loop, for cross-checking thinkv-sim.

Written from the pseudo-code in reference-policies.md 2.6 (not from thinkv-sim's Swift code),
with NumPy only, so that an agreement between the two is evidence about both. It reads a
thinkv-trace (h5py), replays every recorded layer that has q and k, and prints one JSON line per
compression event in the format of `thinkv-sim replay --kept`:

    {"policy": "...", "step": t, "position": p, "layer": n, "kv_head": g, "kept": [ascending]}

Only decode events that dropped something are printed (the prompt's compression is silent), as
thinkv-sim does. Scores are computed in float64 by default, as thinkv-sim computes them
(`--dtype float32` is there to show why: in float32 the order of near-tied kept tokens depends
on rounding, and since the order feeds later compressions, two float32 implementations drift
apart on long traces). Ties in the top-k go to the lower slot index, as CUDA's topk orders them.

`--score-dtype bfloat16|float16` models the authors' run in that dtype: the values their code
holds in the model dtype are rounded to it (nearest, ties to even; via float32, as a GPU
computes the operation in float32 and casts): q and k; the matmul's logits and their division by
sqrt(D); the group mean (`--gqa-pool mean`); the importance after the float32 softmax and the
mean over the window (`softmax(dtype=float32).mean(-2).to(dtype)`); in cal_similarity the key
norm, norm + 1e-8, the normalised keys, the cosine matrix, its column mean and its softmax; and
the mix, whose two products and difference run in float32 and are each cast. The softmax
itself is float32 (rounded to float32 after a float64 computation).

    python3 rkv_reference.py TRACE --budget 64 [--window 8 --kernel 7 --lambda 0.07
        --threshold 0.5 --divide 128 --gqa-pool max --slot-order score --dtype float64 --layers 0,3
        --divide-method step-length|newline --compression-content all|think --newline-ids L
        --think-end-ids L --score-dtype float32]

`--divide-method newline` compresses while processing a position whose token is newline-like
(its /tokens/text piece is one of "\n", ".\n", ")\n", "\n\n", ".\n\n", ")\n\n", or its id is in
--newline-ids); `--compression-content think` stops compressing from the first generated
`</think>` on (that token's own step included).

Compare with compare_kept.py.
"""
import argparse
import json
import sys

import h5py
import numpy as np
from score_dtype import round_to


def cast(x):
    """x rounded to the score dtype and widened to float64 (identity without --score-dtype)."""
    return round_to(x, SCORE_DTYPE)


def to_float32(x):
    return np.asarray(x).astype(np.float32).astype(np.float64) if SCORE_DTYPE else x


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def redundancy(keys):
    """cal_similarity as reference-policies.md 2.2.3 states it, over all L slots."""
    L = keys.shape[0]
    if SCORE_DTYPE:
        norm = cast(cast(np.sqrt((keys * keys).sum(axis=1, keepdims=True))) + 1e-8)
        unit = cast(keys / norm)
        sim = cast(unit @ unit.T)
    else:
        unit = keys / (np.linalg.norm(keys, axis=1, keepdims=True) + DTYPE(1e-8))
        sim = (unit @ unit.T).astype(DTYPE)
    np.fill_diagonal(sim, 0)
    for i in range(L):
        similar = np.flatnonzero(sim[i] > THRESHOLD)
        retained = similar[-1] if similar.size else 0  # largest slot index, else slot 0
        sim[i, retained] = 0
    if SCORE_DTYPE:
        return cast(softmax(cast(sim.sum(axis=0) / L)))
    return softmax(sim.sum(axis=0) / DTYPE(L))


def select(slots, keys, window_queries, args, scale):
    """One SELECT for one kv head: returns the new slot list (positions, physical order).

    keys: [T, D] of this kv head; window_queries: [rows, group, D]."""
    w = args.window
    L = len(slots)
    C = L - w
    K = cast(keys[slots])
    if SCORE_DTYPE:
        logits = cast(cast(np.einsum("rhd,jd->rhj", cast(window_queries), K)) * scale)
        logits = logits.max(axis=1) if args.gqa_pool == "max" else cast(logits.mean(axis=1))
        attention = cast(to_float32(softmax(logits[:, :C], axis=1)).mean(axis=0))
    else:
        logits = np.einsum("rhd,jd->rhj", window_queries, K).astype(DTYPE) * scale
        logits = logits.max(axis=1) if args.gqa_pool == "max" else logits.mean(axis=1)
        attention = softmax(logits[:, :C], axis=1).mean(axis=0)
    half = args.kernel // 2
    padded = np.concatenate([np.full(half, -np.inf, DTYPE), attention, np.full(half, -np.inf, DTYPE)])
    importance = np.array([padded[j:j + args.kernel].max() for j in range(C)], dtype=DTYPE)
    red = redundancy(K)[:C]
    if SCORE_DTYPE:
        f32 = np.float32
        weighted = cast(importance.astype(f32) * f32(args.mix_lambda))
        penalty = cast(red.astype(f32) * f32(1 - args.mix_lambda))
        score = cast(weighted.astype(f32) - penalty.astype(f32))
    else:
        score = DTYPE(args.mix_lambda) * importance - red * DTYPE(1 - args.mix_lambda)
    ranked = sorted(range(C), key=lambda j: (-score[j], j))[: args.budget - w]
    if args.slot_order == "position":
        ranked.sort(key=lambda j: slots[j])
    return [slots[j] for j in ranked] + slots[C:]


NEWLINE_PIECES = {"\n", ".\n", ")\n", "\n\n", ".\n\n", ")\n\n"}


def token_marks(f, ids_option, pieces):
    """A boolean per position: the token id is in the given list, or its decoded text in pieces."""
    ids = f["tokens/ids"][...]
    if ids_option:
        wanted = {int(x) for x in ids_option.split(",")}
        return [int(i) in wanted for i in ids]
    text = [t.decode() if isinstance(t, bytes) else t for t in f["tokens/text"][...]]
    return [t in pieces for t in text]


def replay_layer(q, k, P, args, layer, out):
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    scale = DTYPE(1 / np.sqrt(D))
    w = args.window
    slots = [list(range(P)) for _ in range(Hkv)]
    window = [q[p] for p in range(max(0, P - w), P)]  # each [Hq, D]

    def compress(g):
        queries = np.stack(window)[:, g * group:(g + 1) * group, :]
        return select(slots[g], k[:, g, :], queries, args, scale)

    if P >= args.budget:
        for g in range(Hkv):
            slots[g] = compress(g)
    last = T if args.steps is None else min(T, P + args.steps)
    for p in range(P, last):
        for g in range(Hkv):
            slots[g].append(p)
        window.append(q[p])
        window = window[-w:]
        armed = NEWLINE[p] if args.divide_method == "newline" else p % args.divide == 0
        if args.compression_content == "think" and any(THINK_END[P:p + 1]):
            armed = False  # no compression once </think> has been generated
        if not armed:
            continue
        for g in range(Hkv):
            if len(slots[g]) < args.budget:
                continue
            before = set(slots[g])
            slots[g] = compress(g)
            if len(slots[g]) < len(before):
                out.write(json.dumps({"policy": "rkv-reference", "step": p - P, "position": p, "layer": layer,
                                      "kv_head": g, "kept": sorted(slots[g])}) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace")
    parser.add_argument("--budget", type=int, required=True)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--kernel", type=int, default=7)
    parser.add_argument("--lambda", dest="mix_lambda", type=float, default=0.07)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--divide", type=int, default=128)
    parser.add_argument("--gqa-pool", choices=["max", "mean"], default="max")
    parser.add_argument("--slot-order", choices=["score", "position"], default="score")
    parser.add_argument("--layers", help="comma-separated layer indices (default: all with q and k)")
    parser.add_argument("--steps", type=int, help="replay only the first N decode steps")
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                        help="precision of the scores (thinkv-sim uses float64)")
    parser.add_argument("--divide-method", choices=["step-length", "newline"], default="step-length")
    parser.add_argument("--compression-content", choices=["all", "think"], default="all")
    parser.add_argument("--newline-ids", help="comma-separated token ids (default: by /tokens/text)")
    parser.add_argument("--think-end-ids", help="comma-separated token ids (default: text </think>)")
    parser.add_argument("--score-dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                        help="the authors' scoring dtype to model (float32: no rounding)")
    args = parser.parse_args()
    if args.budget <= args.window:
        parser.error("--budget must exceed --window")
    global THRESHOLD, DTYPE, SCORE_DTYPE
    DTYPE = np.float64 if args.dtype == "float64" else np.float32
    SCORE_DTYPE = None if args.score_dtype == "float32" else args.score_dtype
    if SCORE_DTYPE and args.dtype != "float64":
        parser.error("--score-dtype rounds float64 intermediates; leave --dtype at float64")
    THRESHOLD = DTYPE(args.threshold)

    global NEWLINE, THINK_END
    with h5py.File(args.trace, "r") as f:
        P = int(f.attrs["prompt_len"])
        if args.divide_method == "newline":
            NEWLINE = token_marks(f, args.newline_ids, NEWLINE_PIECES)
        if args.compression_content == "think":
            THINK_END = token_marks(f, args.think_end_ids, {"</think>"})
        names = sorted(f["layers"].keys(), key=int)
        if args.layers:
            names = [n for n in names if int(n) in {int(x) for x in args.layers.split(",")}]
        for name in names:
            group = f["layers"][name]
            if "q" not in group or "k" not in group:
                continue
            q = group["q"][...].astype(DTYPE)
            k = group["k"][...].astype(DTYPE)
            replay_layer(q, k, P, args, int(name), sys.stdout)


DTYPE = np.float64
SCORE_DTYPE = None
NEWLINE = None
THINK_END = None
THRESHOLD = DTYPE(0.5)

if __name__ == "__main__":
    main()
