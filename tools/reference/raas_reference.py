#!/usr/bin/env python3
"""Independent NumPy model of RaaS's paged LRU cache, for cross-checking thinkv-sim.

Written from the authors' code (DerekHJH/RaaS: quest/raas_utils/controller.py
InferenceController.prepare_metadata / update_timestamp, quest/raas_utils/__init__.py
decode_estimate / decode_topk, order of calls in quest/models/raas_llama_optimized.py), not from
thinkv-sim's Swift code. It reads a thinkv-trace (h5py), replays every layer with q and k, and
prints one JSON line per (decode step, kv head) whose cache lost a page, in the `thinkv-sim
replay --kept` format:

    {"policy": "raas-reference", "step": t, "position": p, "layer": n, "kv_head": g, "kept": [...]}

Model (docs/policies.md, RaaS): page j = positions [jS, (j+1)S); page budget n = budget // S.
After the prefill every prompt page has timestamp P. A decode position p with p % S == 0 opens
page p // S with timestamp p + 1; while more than n pages are held, the held page with the
smallest timestamp (the first among equals; never the new one, and with --prefill keep never a
page holding a prompt position) is evicted. After the step, each query head scores every page
before the current one (all opened pages, or only held ones with --refresh-among resident) with
Quest's bound sum_d max(q_d * kmax_d, q_d * kmin_d) and takes the top k = min(min(n, pages) - 1,
n // 2) (pages = p // S + 1; lower page first among ties); every held page chosen by any query
head of the group gets timestamp p + 1.

    python3 raas_reference.py TRACE --budget B [--page-size 16 --prefill lru|keep
        --refresh-among all|resident --layers 0,3 --steps N]
"""
import argparse
import json
import sys

import h5py
import numpy as np
from trace_layers import qk_layers

EVICTED = None


def replay_layer(q, k, P, args, layer, out):
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    group = Hq // Hkv
    S = args.page_size
    n = args.budget // S
    prompt_pages = -(-P // S)
    # stamp[g][j]: timestamp of page j of kv head g; EVICTED once gone; missing until opened.
    stamp = [{j: P for j in range(prompt_pages)} for _ in range(Hkv)]
    last = T if args.steps is None else min(T, P + args.steps)
    for p in range(P, last):
        t = p - P
        # Start of the step: a new page may push the oldest one out.
        if p % S == 0:
            new = p // S
            for g in range(Hkv):
                stamp[g][new] = p + 1
                lost = False
                while sum(1 for v in stamp[g].values() if v is not EVICTED) > n:
                    first = prompt_pages if args.prefill == "keep" else 0
                    live = [(stamp[g][j], j) for j in range(first, new) if stamp[g].get(j) is not EVICTED]
                    if not live:
                        break
                    victim = min(live)[1]
                    stamp[g][victim] = EVICTED
                    lost = True
                if lost:
                    kept = [x for x in range(p + 1) if stamp[g].get(x // S) is not EVICTED]
                    out.write(json.dumps({"policy": "raas-reference", "step": t, "position": p, "layer": layer,
                                          "kv_head": g, "kept": kept}) + "\n")
        # After the step's attention: the Quest estimate refreshes the best pages.
        complete = p // S
        top = min(min(n, complete + 1) - 1, n // 2)
        if top <= 0:
            continue
        for g in range(Hkv):
            pages = [j for j in range(complete)
                     if args.refresh_among == "all" or stamp[g].get(j) is not EVICTED]
            if not pages:
                continue
            kmax = np.array([k[j * S:(j + 1) * S, g, :].max(axis=0) for j in pages])
            kmin = np.array([k[j * S:(j + 1) * S, g, :].min(axis=0) for j in pages])
            chosen = set()
            for h in range(g * group, (g + 1) * group):
                qh = q[p, h]
                scores = np.maximum(kmax * qh, kmin * qh).sum(axis=1)
                order = sorted(range(len(pages)), key=lambda i: (-scores[i], i))[:min(top, len(pages))]
                chosen.update(pages[i] for i in order)
            for j in chosen:
                if stamp[g].get(j) is not EVICTED:
                    stamp[g][j] = max(stamp[g][j], p + 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace")
    parser.add_argument("--budget", type=int, required=True)
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--prefill", choices=["lru", "keep"], default="lru")
    parser.add_argument("--refresh-among", choices=["all", "resident"], default="all")
    parser.add_argument("--layers", help="comma-separated layer indices (default: all with q and k)")
    parser.add_argument("--steps", type=int, help="replay only the first N decode steps")
    args = parser.parse_args()
    if args.budget // args.page_size < 2:
        parser.error("the budget must hold at least two pages")
    with h5py.File(args.trace, "r") as f:
        P = int(f.attrs["prompt_len"])
        for index, group in qk_layers(f, args.layers):
            replay_layer(group["q"][...].astype(np.float64), group["k"][...].astype(np.float64), P, args,
                         index, sys.stdout)


if __name__ == "__main__":
    main()
