#!/usr/bin/env python3
"""PyTorch/NumPy peers of `thinkv-sim replay --policy full,h2o` on one layer: same kept sets, same metrics, timed.

Both peers do the work thinkv-sim's replay does for `full,h2o` on one layer of a trace: the
full-cache reference attention of every decode step (its log-sum-exp and output for every query
head) and H2O with the simulator's default rule (budget C, recent window C/2, group scores summed
over the query heads of a kv head, one eviction per step after the step's attention, among tied
scores the latest goes), with H2O's mean mass recall, attention KL and output error against the
reference (docs/metrics.md). They leave out what thinkv-sim also computes (top-k recall,
sparsity, memory accounting), which favours them.

- `strong` (the default): per chunk of 64 steps, the reference is one matmul per kv head of the
  chunk's steps × query heads against every visible key into a reused buffer, softmaxed in place
  and multiplied by the values; it runs in a second thread, one chunk ahead (PyTorch releases
  the GIL). H2O's per-step loop runs on NumPy arrays restricted to U = (positions kept at the
  chunk's start) ∪ (the chunk's positions), [kv heads, C + chunk] columns whatever the trace's
  length; after the loop one masked matmul over U gives every step's recall, KL and output.
- `simple`: the earlier peer: the reference as batched matmuls over all visible positions and
  H2O stepping through full-width rows with PyTorch operations.

The script checks its H2O against thinkv-sim's: the step at which each position leaves each kv
head's cache (`replay --cache-timeline`: the same kept sets at every step) and the mean mass
recall, KL and output error (`--json`, within --tolerance, relative). It prints one PASS or FAIL
line per peer and exits 1 on any FAIL. Times: the peer's compute (trace reading excluded, best of
--repeat), the peer's whole process (interpreter start, imports, reading, one replay) and
thinkv-sim's whole process for `replay TRACE --policy full,h2o --budget B`, interleaved; the
ratio is the peer's compute over thinkv-sim's whole process (above 1: thinkv-sim is faster).
PyTorch uses all cores (torch.set_num_threads(os.cpu_count())) unless --threads says otherwise.

    make bench-torch          # 8K and 32K bench traces (needs PyTorch, h5py and numpy in BENCH_PYTHON)
    .venv-bench/bin/python tools/bench_torch.py .build/bench/synthetic-T8192-P512-H14x2-D128.h5 \
        --budget 1024 --repeat 3 --peer strong,simple --thinkv .build/release/thinkv-sim
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

PEERS = ("strong", "simple")


def fail(message, code=2):
    print(f"bench_torch.py: {message}", file=sys.stderr)
    sys.exit(code)


def load_layer(path, layer):
    """The layer's queries, keys and values as float32 NumPy arrays [T, heads, D], with the
    trace's prompt length and softmax scale."""
    import h5py
    import numpy as np
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        fail(f"{path}: cannot open as HDF5 ({error})")
    with f:
        attrs = f.attrs
        try:
            P, T, D = int(attrs["prompt_len"]), int(attrs["num_tokens"]), int(attrs["head_dim"])
            group = f["layers"][str(layer)]
            q, k, v = (np.asarray(group[name], dtype=np.float32) for name in ("q", "k", "v"))
        except KeyError as error:
            fail(f"{path}: not a thinkv-trace with q, k and v in layer {layer} (missing {error})")
        scale = float(attrs["softmax_scale"]) if "softmax_scale" in attrs else 1.0 / D ** 0.5
    if abs(scale * D ** 0.5 - 1) > 1e-6:
        # thinkv-sim's H2O then rescores with 1/sqrt(D) while the metrics keep the trace's scale.
        fail(f"{path}: softmax_scale {scale} is not 1/sqrt(D); these peers only follow the default case")
    if q.shape[1] % k.shape[1]:
        fail(f"{path}: {q.shape[1]} query heads are not a multiple of {k.shape[1]} kv heads")
    return P, T, D, scale, q, k, v


def prompt_scores(torch, q, kh, P, scale):
    """H2O's prompt scores [Hkv, P]: column sums of each prompt query's causal softmax, summed over
    the query heads of the group."""
    Hkv, _, D = kh.shape
    g = q.shape[1] // Hkv
    qp = q[:P].permute(1, 0, 2).reshape(Hkv, g, P, D)
    logits = torch.einsum("hgid,hjd->hgij", qp, kh[:, :P]) * scale
    logits.masked_fill_(torch.triu(torch.ones(P, P, dtype=torch.bool), 1), float("-inf"))
    return torch.softmax(logits, dim=-1).sum(dim=2).sum(dim=1)


def replay_strong(torch, np, q, k, v, P, scale, chunk, budget, recent):
    """H2O and the full reference, the reference one chunk ahead in a second thread.

    Returns the step at which each position left each kv head's cache ([Hkv, T], -1: never), as
    `thinkv-sim replay --cache-timeline` writes it, and H2O's mean mass recall, KL and output
    error over steps and query heads."""
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    qs = q * scale
    kh = k.permute(1, 0, 2).contiguous()  # [Hkv, T, D]
    vh = v.permute(1, 0, 2).contiguous()
    buffer = torch.empty(chunk * g * T)  # one kv head's logits of a chunk, reused

    def chunk_queries(start, end):
        n = end - start  # rows: (step, head in group)
        return qs[start:end].view(n, Hkv, g, D).permute(1, 0, 2, 3).reshape(Hkv, n * g, D)

    def reference(start, end):
        """The full cache's log-sum-exp [Hkv, n·g] and output [Hkv, n·g, D] of the chunk's steps."""
        with torch.inference_mode():
            n = end - start
            qc = chunk_queries(start, end)
            future = torch.arange(n)[None, :] > torch.arange(n).repeat_interleave(g)[:, None]  # [n·g, n]
            lse, out = torch.empty(Hkv, n * g), torch.empty(Hkv, n * g, D)
            for h in range(Hkv):
                x = buffer[: n * g * end].view(n * g, end)
                torch.mm(qc[h], kh[h, :end].t(), out=x)
                x[:, start:].masked_fill_(future, float("-inf"))
                top = x.amax(dim=1)
                torch.softmax(x, dim=1, out=x)  # row by row, in place
                # The largest probability is exp(0) / Σ exp(x − top): the log-sum-exp without another exp pass.
                torch.sub(top, x.amax(dim=1).log(), out=lse[h])
                torch.mm(x, vh[h, :end], out=out[h])
            return lse, out

    if P > budget:
        fail("a prompt longer than the budget (H2O's one-shot cut) is not handled by these peers")
    kept = np.tile(np.arange(P), (Hkv, 1))  # [Hkv, K]: the positions each kv head holds, ascending
    kept_score = prompt_scores(torch, q, kh, P, scale).numpy()
    dropped = np.full((Hkv, T), -1, dtype=np.int64)
    sums = np.zeros(3)  # mass recall, KL, output error over (step, query head)
    heads = np.arange(Hkv)
    heads_t = torch.arange(Hkv)[:, None]
    starts = list(range(P, T, chunk))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(reference, P, min(T, P + chunk))
        for start in starts:
            end = min(T, start + chunk)
            n = end - start
            following = pool.submit(reference, end, min(T, end + chunk)) if end < T else None
            # U: the kept positions, then the chunk's (ascending). Step s attends the columns up to
            # K0 + s that have not been evicted before it.
            K0 = kept.shape[1]
            L = K0 + n
            positions = np.concatenate([kept, np.broadcast_to(np.arange(start, end), (Hkv, n))], axis=1)
            index = torch.from_numpy(positions)
            keys_u, values_u = kh[heads_t, index], vh[heads_t, index]  # [Hkv, L, D]
            logits = torch.bmm(chunk_queries(start, end), keys_u.transpose(1, 2)).view(Hkv, n, g, L)
            future = torch.from_numpy(np.arange(L)[None, :] > K0 + np.arange(n)[:, None])  # [n, L]
            visible = logits.masked_fill(future[None, :, None, :], float("-inf"))
            # Every step's exponentials at once, against the row's largest visible logit; an evicted
            # column is zeroed for the steps after its eviction.
            exps = visible.sub_(visible.amax(dim=-1, keepdim=True)).exp_().numpy()  # [Hkv, n, g, L]
            score = np.concatenate([kept_score, np.zeros((Hkv, n), dtype=np.float32)], axis=1)
            evicted_at = np.full((Hkv, L), n)  # the last step that attends each column (n: none evicts it)
            total = np.empty((Hkv, g, 1), dtype=np.float32)
            step_score = np.empty((Hkv, L), dtype=np.float32)
            whole = np.zeros(n, dtype=bool)  # steps that attend every visible position
            count = K0
            for s in range(n):
                count += 1
                whole[s] = count == start + s + 1
                a = exps[:, s]  # [Hkv, g, L]: this step's softmax over its attended columns
                np.sum(a, axis=2, keepdims=True, out=total)
                a /= total
                np.sum(a, axis=1, out=step_score)  # the group's heads in order
                score += step_score
                if count > budget:
                    # Candidates: every column up to position p − R (column K0 − R + s, as the last
                    # R kept positions are never evicted); the lowest score goes, among ties the latest.
                    last = K0 - recent + s
                    column = last - score[:, last::-1].argmin(axis=1)
                    score[heads, column] = np.inf
                    exps[heads, s + 1:, :, column] = 0
                    evicted_at[heads, column] = s
                    count -= 1
            head, column = np.nonzero(evicted_at < n)
            step = start + evicted_at[head, column]  # the position of the step that evicted it
            recorded = step + 1 < T
            dropped[head[recorded], positions[head, column][recorded]] = step[recorded] + 1 - P
            alive = evicted_at == n
            kept = positions[alive].reshape(Hkv, -1)
            kept_score = score[alive].reshape(Hkv, -1)

            # Every step's attention over what it attended, as one masked matmul over U.
            steps = np.arange(n)[None, :, None]
            attended = (np.arange(L)[None, None, :] <= K0 + steps) & (steps <= evicted_at[:, None, :])  # [Hkv, n, L]
            masked = logits.masked_fill(torch.from_numpy(~attended)[:, :, None, :], float("-inf"))
            kept_lse = torch.logsumexp(masked, dim=-1)  # [Hkv, n, g]
            probs = masked.sub_(kept_lse[..., None]).exp_()
            out = torch.bmm(probs.view(Hkv, n * g, L), values_u).view(Hkv, n, g, D)
            full_lse, full_out = pending.result()
            pending = following
            full_lse, full_out = full_lse.view(Hkv, n, g), full_out.view(Hkv, n, g, D)
            recall = torch.exp(kept_lse - full_lse).clamp_max(1)
            kl = ((full_lse - kept_lse) * probs.sum(dim=-1)).clamp_min(0)
            diff, norm = (out - full_out).norm(dim=-1), full_out.norm(dim=-1)
            error = torch.where(norm > 0, diff / norm, diff)
            # As thinkv-sim: a step that attends the whole visible cache is the reference itself.
            exact = torch.from_numpy(whole)[None, :, None]
            recall = torch.where(exact, 1.0, recall)
            kl = torch.where(exact, 0.0, kl)
            error = torch.where(exact, 0.0, error)
            sums += [float(x.double().sum()) for x in (recall, kl, error)]
    return dropped, sums / ((T - P) * Hq)


def replay_simple(torch, np, q, k, v, P, scale, chunk, budget, recent):
    """The earlier peer: the reference over all visible positions as batched matmuls and H2O
    stepping through each chunk beside it with PyTorch operations on full-width rows (gather of
    the kept logits, softmax, score, eviction). Returns what replay_strong returns."""
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    g = Hq // Hkv
    kh = k.permute(1, 0, 2).contiguous()  # [Hkv, T, D]
    vh = v.permute(1, 0, 2).contiguous()
    dropped = torch.full((Hkv, T), -1, dtype=torch.long)
    metrics = torch.zeros(3, dtype=torch.float64)  # sums of mass recall, KL and output error
    if P > budget:
        fail("a prompt longer than the budget (H2O's one-shot cut) is not handled by these peers")
    score = torch.zeros(Hkv, T)
    score[:, :P] = prompt_scores(torch, q, kh, P, scale)
    kept = torch.arange(P).repeat(Hkv, 1)  # [Hkv, n]: the positions each head holds
    heads = torch.arange(Hkv)
    slot = None
    for start in range(P, T, chunk):
        end = min(T, start + chunk)
        n = end - start
        qc = q[start:end].permute(1, 0, 2).reshape(Hkv, g * n, D)  # rows: (head in group, step)
        logits = torch.bmm(qc, kh[:, :end].transpose(1, 2)) * scale  # [Hkv, g·n, end]
        steps = torch.arange(start, end).repeat(g)
        logits.masked_fill_(torch.arange(end)[None, None, :] > steps[None, :, None], float("-inf"))
        full_lse = torch.logsumexp(logits, dim=-1).view(Hkv, g, n).permute(2, 0, 1)  # [n, Hkv, g]
        probs = torch.softmax(logits, dim=-1)
        full_out = torch.bmm(probs, vh[:, :end]).view(Hkv, g, n, D).permute(2, 0, 1, 3)
        logits4 = logits.view(Hkv, g, n, end)
        attended, weights, kept_lse, whole = [], [], [], []
        for s in range(n):
            p = start + s
            if kept.shape[1] <= budget:  # filling up: append
                kept = torch.cat([kept, torch.full((Hkv, 1), p, dtype=torch.long)], dim=1)
            else:  # steady state: the new position takes the evicted one's slot
                kept[heads, slot] = p
            x = logits4[:, :, s, :].gather(2, kept[:, None, :].expand(Hkv, g, kept.shape[1]))
            kept_lse.append(torch.logsumexp(x, dim=-1))
            a = torch.softmax(x, dim=-1)
            attended.append(kept.clone())
            weights.append(a)
            whole.append(kept.shape[1] == p + 1)
            step_score = a[:, 0]
            for h in range(1, g):
                step_score = step_score + a[:, h]
            score.scatter_add_(1, kept, step_score)
            if kept.shape[1] > budget:
                candidate = kept <= p - recent
                ranked = torch.where(candidate, score.gather(1, kept), torch.inf)
                lowest = ranked.min(dim=1, keepdim=True).values
                slot = torch.where(ranked == lowest, kept, -1).argmax(dim=1)
                if p + 1 < T:
                    dropped[heads, kept[heads, slot]] = p + 1 - P
        # The chunk's outputs: the weights scattered over all positions, one dense matmul.
        # (While the cache fills, steps attend different counts: pad with weight 0.)
        m = max(x.shape[1] for x in attended)
        index = torch.stack([torch.nn.functional.pad(x, (0, m - x.shape[1])) for x in attended])  # [n, Hkv, m]
        a = torch.stack([torch.nn.functional.pad(x, (0, m - x.shape[-1])) for x in weights])      # [n, Hkv, g, m]
        dense = torch.zeros(Hkv, n, g, end).scatter_add_(  # add: padding entries (weight 0) repeat index 0
            3, index.permute(1, 0, 2)[:, :, None, :].expand(-1, -1, g, -1), a.permute(1, 0, 2, 3))
        out = torch.bmm(dense.view(Hkv, n * g, end), vh[:, :end]).view(Hkv, n, g, D).permute(1, 0, 2, 3)
        kept_lse = torch.stack(kept_lse)  # [n, Hkv, g]
        recall = torch.exp(kept_lse - full_lse).clamp_max(1)
        kl = ((full_lse - kept_lse) * a.sum(dim=-1)).clamp_min(0)
        diff, norm = (out - full_out).norm(dim=-1), full_out.norm(dim=-1)
        error = torch.where(norm > 0, diff / norm, diff)
        exact = torch.tensor(whole)[:, None, None]
        for i, x in enumerate((torch.where(exact, 1.0, recall), torch.where(exact, 0.0, kl),
                               torch.where(exact, 0.0, error))):
            metrics[i] += x.double().sum()
    return dropped.numpy(), (metrics / ((T - P) * Hq)).numpy()


REPLAYS = {"strong": replay_strong, "simple": replay_simple}


def thinkv_reference(binary, trace, layer, budget):
    """thinkv-sim's H2O on the trace: its eviction steps per kv head ({kv head: list}) and its mean
    mass recall, KL and output error."""
    with tempfile.TemporaryDirectory() as folder:
        timeline = os.path.join(folder, "timeline.jsonl")
        run = subprocess.run([binary, "replay", trace, "--policy", "h2o", "--budget", str(budget),
                              "--layers", str(layer), "--json", "--cache-timeline", timeline, "--progress", "none"],
                             capture_output=True, text=True)
        if run.returncode != 0:
            fail(f"{binary} replay {trace} failed: {run.stderr.strip()}", 1)
        summary = json.loads(run.stdout)["runs"][0]["summary"]
        means = [summary[key]["mean"] for key in ("mass_recall", "attention_kl", "output_error")]
        dropped = {}
        with open(timeline) as f:
            for line in f:
                record = json.loads(line)
                if record["policy"].startswith("h2o") and record["layer"] == layer:
                    dropped[record["kv_head"]] = record["dropped_at"]
    return dropped, means


def check(np, name, dropped, means, sim_dropped, sim_means, tolerance):
    """One PASS/FAIL line: the same eviction step for every position of every kv head, and the
    means within `tolerance` (relative)."""
    heads = range(dropped.shape[0])
    if sorted(sim_dropped) != list(heads):
        print(f"check {name}: FAIL: thinkv-sim's timeline has kv heads {sorted(sim_dropped)}, the peer {len(heads)}")
        return False
    differ = sum(int((np.asarray(sim_dropped[h]) != dropped[h]).sum()) for h in heads)
    evictions = int((dropped >= 0).sum())
    relative = [abs(a - b) / max(abs(b), 1e-30) for a, b in zip(means, sim_means)]
    ok = differ == 0 and max(relative) <= tolerance
    kept = ("the same kept sets at every step" if differ == 0
            else f"{differ} positions evicted at other steps than thinkv-sim's")
    print(f"check {name}: {'PASS' if ok else 'FAIL'}: {kept} ({evictions} evictions); "
          f"mass recall {means[0]:.9f} / {sim_means[0]:.9f}, KL {means[1]:.9f} / {sim_means[1]:.9f}, "
          f"output error {means[2]:.9f} / {sim_means[2]:.9f} (peer / thinkv-sim; largest relative "
          f"difference {max(relative):.1e}, tolerance {tolerance:.0e})")
    return ok


def settle():
    # PyTorch's worker threads spin for a while after their last parallel region; let them settle
    # so that they do not take the next timed process's cores.
    time.sleep(1.0)


def timed_process(command):
    t0 = time.perf_counter()
    run = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if run.returncode != 0:
        fail(f"{' '.join(command)} failed: {run.stderr.strip()}", 1)
    return seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--budget", type=int, default=1024)
    ap.add_argument("--layer", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=64, help="decode steps per chunk (default: 64)")
    ap.add_argument("--peer", default="strong", help="strong, simple or both, comma-separated (default: strong)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: os.cpu_count())")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved timed runs of each side; the best counts")
    ap.add_argument("--thinkv", default=".build/release/thinkv-sim", help="thinkv-sim binary (default: %(default)s)")
    ap.add_argument("--tolerance", type=float, default=1e-6, help="relative tolerance of the mean metrics")
    ap.add_argument("--no-timing", action="store_true", help="run each peer once and check it, time nothing")
    ap.add_argument("--once", action="store_true", help=argparse.SUPPRESS)  # the timed whole-process child
    args = ap.parse_args()
    peers = args.peer.split(",")
    if any(p not in PEERS for p in peers):
        fail(f"--peer takes {', '.join(PEERS)} (comma-separated), got '{args.peer}'")
    if args.budget < 2 or args.chunk < 1 or args.repeat < 1:
        fail("--budget must be at least 2, --chunk and --repeat at least 1")
    if not args.once and not (os.path.isfile(args.thinkv) and os.access(args.thinkv, os.X_OK)):
        fail(f"{args.thinkv}: no thinkv-sim binary there (make build, or give --thinkv)")
    try:
        import numpy as np
        import torch
    except ImportError as error:
        fail(f"{error.name} is not installed (PyTorch, h5py and numpy are needed)")
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    recent = args.budget // 2
    P, T, D, scale, q, k, v = load_layer(args.trace, args.layer)
    q, k, v = (torch.from_numpy(x) for x in (q, k, v))

    def replay(name):
        with torch.inference_mode():
            t0 = time.perf_counter()
            dropped, means = REPLAYS[name](torch, np, q, k, v, P, scale, args.chunk, args.budget, recent)
            return time.perf_counter() - t0, dropped, means

    if args.once:
        for name in peers:
            replay(name)
        return

    print(f"{args.trace}: {T} tokens ({P} prompt), layer {args.layer}, {q.shape[1]} q-heads / {k.shape[1]} kv-heads, "
          f"head dim {D}; H2O budget {args.budget}, recent {recent}; torch {torch.__version__} with "
          f"{torch.get_num_threads()} threads (os.cpu_count() = {os.cpu_count()}), numpy {np.__version__}")
    sim_dropped, sim_means = thinkv_reference(args.thinkv, args.trace, args.layer, args.budget)
    compute = {name: [] for name in peers}
    results = {}
    sim_seconds = []
    sim_command = [args.thinkv, "replay", args.trace, "--policy", "full,h2o", "--budget", str(args.budget),
                   "--layers", str(args.layer), "--progress", "none"]
    for _ in range(1 if args.no_timing else args.repeat):
        for name in peers:
            seconds, dropped, means = replay(name)
            compute[name].append(seconds)
            results[name] = dropped, means
        if not args.no_timing:
            settle()
            sim_seconds.append(timed_process(sim_command))
    passed = True
    for name in peers:
        dropped, means = results[name]
        passed = check(np, name, dropped, means, sim_dropped, sim_means, args.tolerance) and passed
    if args.no_timing:
        sys.exit(0 if passed else 1)

    sim = min(sim_seconds)
    print(f"thinkv-sim replay --policy full,h2o --budget {args.budget}: whole process best of {args.repeat} "
          f"{sim:.2f} s ({', '.join(f'{x:.2f}' for x in sim_seconds)})")
    for name in peers:
        settle()
        child = [sys.executable, os.path.abspath(__file__), args.trace, "--budget", str(args.budget), "--layer",
                 str(args.layer), "--chunk", str(args.chunk), "--peer", name, "--threads", str(threads), "--once"]
        process = timed_process(child)
        best = min(compute[name])
        ratio = best / sim
        verdict = "thinkv-sim is faster" if ratio > 1 else "thinkv-sim is slower"
        runs = ", ".join(f"{x:.2f}" for x in compute[name])
        print(f"{name} peer: compute best of {args.repeat} {best:.2f} s ({runs}), "
              f"whole process {process:.2f} s; peer compute / thinkv-sim whole process = {ratio:.2f} ({verdict}), "
              f"whole process / whole process = {process / sim:.2f}")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
