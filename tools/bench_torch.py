#!/usr/bin/env python3
"""A PyTorch CPU replay of the work `thinkv-sim replay --policy full,h2o` does, for comparison.

Optional peer benchmark (not used by the tests or CI): it times, on the same trace and with the
same threads, the full-cache reference attention as chunked batched matmuls (QK, softmax, AV, for
every query head and decode step, 64 steps per chunk) plus H2O with the simulator's default rule
(budget C, recent window C/2, group scores summed over the query heads of a kv head, one eviction
per step after the step's attention, among tied scores the latest goes). It prints its compute seconds
(trace reading excluded) and, with --thinkv BINARY, runs the simulator on the same trace and
prints the ratios and whether both H2Os kept the same positions at every step. The H2O here is
vectorised over the kv heads and steps as the policy does (one eviction per step), and measures
the policy's mass recall, KL and output error against the reference as the simulator does.

    python3 -m venv .venv-bench
    .venv-bench/bin/pip install --index-url https://download.pytorch.org/whl/cpu torch h5py numpy
    .venv-bench/bin/python tools/bench_torch.py .build/bench/synthetic-T8192-P512-H14x2-D128.h5 \
        --budget 1024 --threads 2 --repeat 5 --thinkv .build/release/thinkv-sim
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


def replay(torch, q, k, v, P, scale, chunk, budget=None, recent=None):
    """Full-cache attention of every decode query as chunked batched matmuls (q·k with the causal
    mask, softmax, Σ a·v), and, with a budget, H2O stepping through each chunk beside it.

    H2O is vectorised over the kv heads, one step at a time as the policy works: it attends
    its kept positions (their logits gathered from the chunk's, softmax), adds the step's
    probabilities summed over the group's query heads (in head order) to the scores, and evicts
    the lowest-scored candidate outside the recent window (among ties the latest, as slots are
    in position order). After each chunk it mixes the kept values and measures mass recall, KL
    and output error against the reference for all the chunk's steps at once. Returns the
    step at which each position left each head's cache ([Hkv, T], -1: never), as
    `thinkv-sim replay --cache-timeline` writes it, and H2O's mass recall, KL and output error,
    each the mean over steps and query heads (zeros without a budget)."""
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    kh = k.permute(1, 0, 2).contiguous()  # [Hkv, T, D]
    vh = v.permute(1, 0, 2).contiguous()
    dropped = torch.full((Hkv, T), -1, dtype=torch.long)
    metrics = torch.zeros(3)  # H2O: step-weighted sums of mass recall, KL and output error
    if budget is not None:
        score = torch.zeros(Hkv, T)
        # Prompt: column sums of each prompt query's causal softmax, summed over the group.
        qp = q[:P].permute(1, 0, 2).reshape(Hkv, g, P, D)
        logits = torch.einsum("hgid,hjd->hgij", qp, kh[:, :P]) * scale
        logits.masked_fill_(torch.triu(torch.ones(P, P, dtype=torch.bool), 1), float("-inf"))
        score[:, :P] = torch.softmax(logits, dim=-1).sum(dim=2).sum(dim=1)
        if P > budget:
            raise SystemExit("bench_torch.py: a prompt longer than the budget is not handled here")
        kept = torch.arange(P).repeat(Hkv, 1)  # [Hkv, n]: the positions each head holds
        heads = torch.arange(Hkv)
        slot = None
    for start in range(P, T, chunk):
        end = min(T, start + chunk)
        n = end - start
        qc = q[start:end].permute(1, 0, 2).reshape(Hkv, g * n, D)  # rows: (head in group, step)
        logits = torch.bmm(qc, kh[:, :end].transpose(1, 2)) * scale  # [Hkv, g·n, end]
        steps = torch.arange(start, end).repeat(g)
        mask = torch.arange(end)[None, :] > steps[:, None]
        logits.masked_fill_(mask[None], float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        outputs = torch.bmm(probs, vh[:, :end])  # [Hkv, g·n, D]
        if budget is None:
            continue
        logits4, probs4, out4 = logits.view(Hkv, g, n, end), probs.view(Hkv, g, n, end), outputs.view(Hkv, g, n, D)
        attended, weights = [], []
        for s in range(n):
            p = start + s
            if kept.shape[1] <= budget:  # filling up: append
                kept = torch.cat([kept, torch.full((Hkv, 1), p, dtype=torch.long)], dim=1)
            else:  # steady state: the new position takes the evicted one's slot
                kept[heads, slot] = p
            a = torch.softmax(logits4[:, :, s, :].gather(2, kept[:, None, :].expand(Hkv, g, kept.shape[1])), dim=-1)
            attended.append(kept.clone())
            weights.append(a)
            step_score = a[:, 0]
            for h in range(1, g):
                step_score = step_score + a[:, h]
            score.scatter_add_(1, kept, step_score)
            if kept.shape[1] > budget:
                # Candidates: outside the recent window; the lowest score goes, among ties the latest.
                candidate = kept <= p - recent
                ranked = torch.where(candidate, score.gather(1, kept), torch.inf)
                lowest = ranked.min(dim=1, keepdim=True).values
                slot = torch.where(ranked == lowest, kept, -1).argmax(dim=1)
                if p + 1 < T:
                    dropped[heads, kept[heads, slot]] = p + 1 - P
        # The policy's attention metrics for the chunk's steps, batched: mass recall, KL, output error.
        # (While the cache fills, steps attend different counts: pad with weight 0.)
        m = max(x.shape[1] for x in attended)
        index = torch.stack([torch.nn.functional.pad(x, (0, m - x.shape[1])) for x in attended])      # [n, Hkv, m]
        valid = torch.stack([torch.arange(m) < x.shape[1] for x in attended])[:, None, None, :]
        a = torch.stack([torch.nn.functional.pad(x, (0, m - x.shape[-1])) for x in weights])          # [n, Hkv, g, m]
        ref = probs4.permute(2, 0, 1, 3).gather(3, index[:, :, None, :].expand(-1, -1, g, -1)) * valid
        mass = ref.sum(dim=-1)
        kl = (a * (a.clamp_min(1e-30).log() - ref.clamp_min(1e-30).log())).sum(dim=-1)  # KL(policy || full)
        # Σ a·v over the kept values as one dense matmul: the weights scattered over all positions.
        dense = torch.zeros(Hkv, n, g, end).scatter_add_(  # add: padding entries (weight 0) repeat index 0
            3, index.permute(1, 0, 2)[:, :, None, :].expand(-1, -1, g, -1), a.permute(1, 0, 2, 3))
        out = torch.bmm(dense.view(Hkv, n * g, end), vh[:, :end]).view(Hkv, n, g, D).permute(1, 0, 2, 3)
        full = out4.permute(2, 0, 1, 3)
        error = (out - full).norm(dim=-1) / full.norm(dim=-1)
        metrics += n * torch.stack([mass.mean(), kl.mean(), error.mean()])
    return dropped, metrics / (T - P)


def compare_kept(torch, binary, trace, layer, budget, dropped):
    """Positions whose eviction step differs between this H2O and thinkv-sim's (0: the same
    kept set at every step), from `replay --cache-timeline`."""
    import json
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/timeline.jsonl"
        subprocess.run([binary, "replay", trace, "--policy", "h2o", "--budget", str(budget), "--layers", str(layer),
                        "--cache-timeline", path, "--progress", "none"], check=True, stdout=subprocess.DEVNULL)
        differ = 0
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                differ += int((torch.tensor(record["dropped_at"]) != dropped[record["kv_head"]]).sum())
    return differ


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs of each side; medians are compared")
    ap.add_argument("--thinkv", help="thinkv-sim binary: time `replay --policy full,h2o` on the same trace and "
                    "compare its kept sets with this H2O's")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        sys.exit("bench_torch.py: PyTorch is not installed (see the module docstring)")
    if args.threads:
        torch.set_num_threads(args.threads)
    P, T, D, scale, q, k, v = load_layer(args.trace, args.layer)
    q, k, v = (torch.from_numpy(x) for x in (q, k, v))
    flops = 4 * D * q.shape[1] * sum(p + 1 for p in range(P, T))
    reference_s, full_h2o_s, sim_s = [], [], []
    dropped = None
    for _ in range(args.repeat):
        with torch.inference_mode():
            t0 = time.perf_counter()
            replay(torch, q, k, v, P, scale, args.chunk)
            reference_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            dropped, h2o_metrics = replay(torch, q, k, v, P, scale, args.chunk, args.budget, args.budget // 2)
            full_h2o_s.append(time.perf_counter() - t0)
        if args.thinkv:
            # PyTorch's worker threads spin for a while after their last parallel region; let them
            # settle so that they do not take the simulator's cores.
            time.sleep(1.0)
            t0 = time.perf_counter()
            subprocess.run([args.thinkv, "replay", args.trace, "--policy", "full,h2o", "--budget", str(args.budget),
                            "--layers", str(args.layer), "--progress", "none"], check=True, stdout=subprocess.DEVNULL)
            sim_s.append(time.perf_counter() - t0)
    ref, both = median(reference_s), median(full_h2o_s)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, medians of {args.repeat}: reference "
          f"{ref:.2f} s ({flops / ref / 1e9:.1f} GFLOP/s), full+h2o {both:.2f} s (trace reading excluded); "
          f"H2O mass recall {h2o_metrics[0]:.4f}, KL {h2o_metrics[1]:.4f}, output error {h2o_metrics[2]:.4f}")
    if args.thinkv:
        sim = median(sim_s)
        differ = compare_kept(torch, args.thinkv, args.trace, args.layer, args.budget, dropped)
        same = "the same kept sets at every step" if differ == 0 else f"{differ} positions evicted at other steps"
        print(f"thinkv-sim full,h2o {sim:.2f} s (whole process, reading included): torch full+h2o / thinkv-sim = "
              f"{both / sim:.2f}, torch reference alone / thinkv-sim = {ref / sim:.2f}; H2O: {same}")


if __name__ == "__main__":
    main()
