#!/usr/bin/env python3
"""A PyTorch CPU replay of the work `thinkv-sim replay --policy full,h2o` does, for comparison.

Optional peer benchmark (not used by the tests or CI): it times, on the same trace and with the
same threads, the full-cache reference attention as chunked batched matmuls (QK, softmax, AV, for
every query head and decode step, 64 steps per chunk) plus H2O with the simulator's default rule
(budget C, recent window C/2, group scores summed over the query heads of a kv head, one eviction
per step after the step's attention, ties to the lower position). It prints its compute seconds
(trace reading excluded) and, with --thinkv BINARY, runs the simulator on the same trace and
prints the ratios. The H2O part here is a plain per-step Python loop, so the ratio against the
reference alone (chunked bmm, the strong part of a PyTorch replay) is the fairer one.

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch h5py numpy
    .venv-bench/bin/python tools/bench_torch.py .build/bench/synthetic-8192.h5 --budget 1024 \
        --thinkv .build/release/thinkv-sim
"""
import argparse
import subprocess
import sys
import time


def load_layer(path, layer):
    import h5py
    import numpy as np
    with h5py.File(path, "r") as f:
        attrs = f.attrs
        P = int(attrs["prompt_len"])
        T = int(attrs["num_tokens"])
        D = int(attrs["head_dim"])
        scale = float(attrs["softmax_scale"]) if "softmax_scale" in attrs else 1.0 / D ** 0.5
        group = f["layers"][str(layer)]
        q = np.asarray(group["q"], dtype=np.float32)
        k = np.asarray(group["k"], dtype=np.float32)
        v = np.asarray(group["v"], dtype=np.float32)
    return P, T, D, scale, q, k, v


def reference(torch, q, k, v, P, scale, chunk):
    """Full-cache attention of every decode query: [G, Hq, D] outputs, chunked bmm."""
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    kh = k.permute(1, 0, 2).contiguous()  # [Hkv, T, D]
    vh = v.permute(1, 0, 2).contiguous()
    outputs = []
    for start in range(P, T, chunk):
        end = min(T, start + chunk)
        qc = q[start:end].permute(1, 0, 2).reshape(Hkv, g * (end - start), D)  # rows: (head in group, step)
        logits = torch.bmm(qc, kh[:, :end].transpose(1, 2)) * scale  # [Hkv, g·n, end]
        steps = torch.arange(start, end).repeat(g)
        mask = torch.arange(end)[None, :] > steps[:, None]
        logits.masked_fill_(mask[None], float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        outputs.append(torch.bmm(probs, vh[:, :end]))
    return outputs


def h2o(torch, q, k, v, P, scale, budget, recent):
    """H2O over the decode steps; returns the kept positions of every kv head at the end."""
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    kh = k.permute(1, 0, 2).contiguous()
    vh = v.permute(1, 0, 2).contiguous()
    score = torch.zeros(Hkv, T)
    # Prompt: column sums of each prompt query's causal softmax, then evict down to the budget.
    qp = q[:P].permute(1, 0, 2).reshape(Hkv, g, P, D)
    logits = torch.einsum("hgid,hjd->hgij", qp, kh[:, :P]) * scale
    logits.masked_fill_(torch.triu(torch.ones(P, P, dtype=torch.bool), 1), float("-inf"))
    score[:, :P] = torch.softmax(logits, dim=-1).sum(dim=(1, 2))
    kept = [list(range(P)) for _ in range(Hkv)]
    for h in range(Hkv):
        kept[h] = evict_to(torch, kept[h], score[h], budget, recent)
    for p in range(P, T):
        for h in range(Hkv):
            kept[h].append(p)
            idx = torch.tensor(kept[h])
            ql = q[p, h * g:(h + 1) * g]  # [g, D]
            probs = torch.softmax(ql @ kh[h, idx].T * scale, dim=-1)  # attention over the cache
            _ = probs @ vh[h, idx]
            score[h, idx] += probs.sum(dim=0)
            kept[h] = evict_to(torch, kept[h], score[h], budget, recent)
    return kept


def evict_to(torch, kept, score, budget, recent):
    while len(kept) > budget:
        candidates = kept[:len(kept) - recent]
        s = score[torch.tensor(candidates)]
        # lowest score goes; among ties the lower position stays (the later one is evicted)
        low = float(s.min())
        victim = max(c for c, x in zip(candidates, s.tolist()) if x == low)
        kept.remove(victim)
    return kept


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--reference-only", action="store_true", help="skip the (slow, per-step Python) H2O loop")
    ap.add_argument("--thinkv", help="thinkv-sim binary: time `replay --policy full,h2o` on the same trace")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("bench_torch.py: PyTorch is not installed (see the module docstring)")
    if args.threads:
        torch.set_num_threads(args.threads)
    P, T, D, scale, q, k, v = load_layer(args.trace, args.layer)
    q, k, v = (torch.from_numpy(x) for x in (q, k, v))
    start = time.perf_counter()
    with torch.inference_mode():
        reference(torch, q, k, v, P, scale, args.chunk)
        ref_seconds = time.perf_counter() - start
        if not args.reference_only:
            h2o(torch, q, k, v, P, scale, args.budget, args.budget // 2)
    seconds = time.perf_counter() - start
    flops = 4 * D * q.shape[1] * sum(p + 1 for p in range(P, T))
    h2o_part = "" if args.reference_only else f", full+h2o {seconds:.2f} s"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: reference {ref_seconds:.2f} s "
          f"({flops / ref_seconds / 1e9:.1f} GFLOP/s){h2o_part}")
    if args.thinkv:
        t0 = time.perf_counter()
        subprocess.run([args.thinkv, "replay", args.trace, "--policy", "full,h2o", "--budget", str(args.budget),
                        "--layers", str(args.layer)], check=True, stdout=subprocess.DEVNULL)
        sim = time.perf_counter() - t0
        both = "" if args.reference_only else f"torch full+h2o / thinkv-sim = {seconds / sim:.2f}, "
        print(f"thinkv-sim full,h2o {sim:.2f} s (whole process); {both}torch reference alone / thinkv-sim = {ref_seconds / sim:.2f}")


if __name__ == "__main__":
    main()
