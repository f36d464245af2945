#!/usr/bin/env python3
"""Measures what a labelled trace's attention gives each thought type (docs/synthetic-traces.md).

For every recorded layer, from the stored q and k (softmax(scale q.k) per query head, averaged
over heads, in float64):

- old-token attention: for each decode step p and each generated token j at least --age
  positions older, the weight a[p, j] times (p + 1), i.e. relative to a uniform row (1 = the
  average position's share). Averaged per (step, token) pair by the type of token j; the
  ratios T/R and E/R say how much attention an old transition / execution token draws against
  an old reasoning token.
- sparsity (the contract's: share of visible positions below 1 % of the averaged row's
  maximum) of each type's steps in the first and the last third of the decode steps.

    python3 tools/measure_synthetic.py TRACE.h5 [--age 128] [--json]

Needs /tokens/thought (labels). Uses h5py and numpy (tools/requirements.txt).
"""
import argparse
import json

import h5py
import numpy as np

TYPES = "RET"


def measure(path, age):
    with h5py.File(path, "r") as f:
        T = int(f.attrs["num_tokens"])
        P = int(f.attrs["prompt_len"])
        Hq, Hkv, D = int(f.attrs["num_q_heads"]), int(f.attrs["num_kv_heads"]), int(f.attrs["head_dim"])
        scale = float(f.attrs["softmax_scale"]) if "softmax_scale" in f.attrs else 1 / np.sqrt(D)
        if "thought" not in f["tokens"]:
            raise SystemExit(f"{path}: no /tokens/thought labels")
        labels = f["tokens/thought"][()].astype(int)
        layers = sorted(int(name) for name in f["layers"])
        out = {"trace": path, "age": age, "layers": {}}
        group = Hq // Hkv
        steps = np.arange(P, T)
        thirds = np.array_split(steps, 3)
        for layer in layers:
            q = f[f"layers/{layer}/q"][()].astype(np.float64)
            k = f[f"layers/{layer}/k"][()].astype(np.float64)
            sums = np.zeros(3)
            counts = np.zeros(3)
            sparsity = np.zeros(T)
            for p in steps:
                logits = np.einsum("hd,hjd->hj", q[p], np.repeat(k[: p + 1].transpose(1, 0, 2), group, axis=0)) * scale
                logits -= logits.max(axis=1, keepdims=True)
                weights = np.exp(logits)
                weights /= weights.sum(axis=1, keepdims=True)
                row = weights.mean(axis=0)
                sparsity[p] = float(np.mean(row < 0.01 * row.max()))
                old = np.arange(P, p - age + 1)
                if old.size:
                    relative = row[old] * (p + 1)
                    kinds = labels[old]
                    for t in range(3):
                        chosen = kinds == t
                        sums[t] += relative[chosen].sum()
                        counts[t] += chosen.sum()
            old_attention = {TYPES[t]: (sums[t] / counts[t] if counts[t] else float("nan")) for t in range(3)}
            by_third = {}
            for name, part in (("early", thirds[0]), ("late", thirds[-1])):
                by_third[name] = {}
                for t in range(3):
                    chosen = part[labels[part] == t]
                    by_third[name][TYPES[t]] = float(sparsity[chosen].mean()) if chosen.size else float("nan")
            out["layers"][layer] = {
                "old_token_attention": old_attention,
                "ratio_T_to_R": old_attention["T"] / old_attention["R"],
                "ratio_E_to_R": old_attention["E"] / old_attention["R"],
                "sparsity": by_third,
                "first_third_positions": [int(thirds[0][0]), int(thirds[0][-1])],
                "last_third_positions": [int(thirds[-1][0]), int(thirds[-1][-1])],
            }
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace")
    parser.add_argument("--age", type=int, default=128, help="a token is old at this many positions back")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.trace, args.age)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"{args.trace}: old tokens (>= {args.age} back), attention per token relative to a uniform row; "
          "sparsity of each type's steps, first third -> last third")
    print("layer  old R   old E   old T   T/R   E/R    sparsity R          E            T")
    for layer, m in result["layers"].items():
        a, s = m["old_token_attention"], m["sparsity"]
        cells = "  ".join(f"{s['early'][t]:.3f}->{s['late'][t]:.3f}" for t in TYPES)
        print(f"{layer:5d} {a['R']:6.3f} {a['E']:6.3f} {a['T']:6.3f} {m['ratio_T_to_R']:5.2f} {m['ratio_E_to_R']:5.2f}   {cells}")


if __name__ == "__main__":
    main()
