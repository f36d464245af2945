"""Free-running greedy decoding with a policy in the loop, without a second implementation of it.

A deployed policy decides from its own cache: from the queries and keys the model computes
while it attends only what the policy kept. Teacher forcing replays decisions made on the full
cache's queries and keys. Here the decisions are brought to a fixed point instead:

1. start from the timeline thinkv-sim made on the recorded (full-cache, greedy) run;
2. run the model in one pass with that timeline, capturing every layer's q, k, v, and note the
   first step d whose greedy choice departs from the full cache's;
3. replay the captured q, k, v with thinkv-sim: the policy's decisions on what its own cache
   produced;
4. if they equal the timeline used in step 2 on every step up to d, the run up to d is
   self-consistent, hence exactly what greedy decoding with the policy in the loop produces (by
   causality, nothing at or before step d depends on later steps): d is the free-running
   divergence step. Otherwise repeat from 2 with the new timeline.

Each round fixes at least one more step; it stops at --free-running-rounds and then reports the
first step not yet verified, a lower bound of the divergence step. docs/end-to-end.md.
"""

import os

import h5py
import numpy as np

from . import forward
from .replay import replay_with_timeline


def write_captured_trace(source, path, captured):
    """A copy of `source` (attributes, tokens) whose layers hold the captured q, k, v."""
    with h5py.File(source, "r") as src, h5py.File(path, "w") as out:
        for key, value in src.attrs.items():
            out.attrs[key] = value
        src.copy(src["tokens"], out, "tokens")
        for layer, (q, k, v) in sorted(captured.items()):
            dtype = src[f"layers/{layer}/q"].dtype
            group = out.create_group(f"layers/{layer}")
            group.create_dataset("q", data=q.astype(dtype))
            group.create_dataset("k", data=k.astype(dtype))
            group.create_dataset("v", data=v.astype(dtype))
            for key, value in src[f"layers/{layer}"].attrs.items():
                group.attrs[key] = value


def first_difference(a, b):
    """The first decode step at which two policy timelines decide differently (None: never)."""
    if a.heads.keys() != b.heads.keys():
        raise ValueError("the two timelines cover different layers or heads")
    first = None
    for key, x in a.heads.items():
        y = b.heads[key]
        never = np.iinfo(np.int64).max
        dx = np.where(x.dropped_at < 0, never, x.dropped_at)
        dy = np.where(y.dropped_at < 0, never, y.dropped_at)
        differs = dx != dy
        candidates = [int(np.minimum(dx, dy)[differs].min())] if differs.any() else []
        gx = {(g["tensor"], g["step"], g["quantizer"], tuple(g["positions"]), g.get("channel_group")) for g in x.groups}
        gy = {(g["tensor"], g["step"], g["quantizer"], tuple(g["positions"]), g.get("channel_group")) for g in y.groups}
        candidates += [g[1] for g in gx ^ gy]
        if candidates:
            first = min(candidates) if first is None else min(first, min(candidates))
    return first


def first_departure(log_probs, greedy):
    """First step whose argmax is not `greedy` (the full cache's choice), or len when none."""
    differs = np.flatnonzero(log_probs.argmax(dim=-1).cpu().numpy() != greedy)
    return int(differs[0]) if len(differs) else len(greedy)


def free_running_divergence(model, trace, header, binary, policy, label, budget, first_timeline, greedy,
                            steps, extra, folder, rounds):
    """(divergence step, rounds run, exact, tokens) of greedy decoding with `policy` in the loop;
    when not exact, the step is a lower bound. `tokens`: the greedy choices of decode steps
    0 .. d (the token each step's row picks, d included when it is a step of the run) under the
    settled decisions; those before d are the full cache's. With exact False, those of the last round."""
    P, T = header["prompt_len"], header["num_tokens"]
    layers, heads = header["num_layers"], header["num_kv_heads"]
    timeline = first_timeline
    for round_number in range(1, rounds + 1):
        captured = {}
        plans = forward.layer_plans(timeline, layers, heads, T, P, steps)
        log_probs = forward.next_token_log_probs(model, header["ids"], plans, P, steps, capture=captured)
        departure = first_departure(log_probs, greedy)
        path = os.path.join(folder, f"{policy}-round{round_number}.h5")
        write_captured_trace(trace, path, captured)
        timelines, _ = replay_with_timeline(binary, path, policy, budget, os.path.join(folder, f"{policy}-round{round_number}.jsonl"),
                                            extra, steps)
        os.remove(path)
        own = timelines[label]
        differs = first_difference(own, timeline)
        tokens = log_probs.argmax(dim=-1).cpu().numpy()[:min(departure + 1, steps)].tolist()
        if differs is None or differs > min(departure, steps - 1):
            return departure, round_number, True, tokens
        verified = differs  # self-consistent, and greedy, on every step before this one
        timeline = own
    return verified, rounds, False, tokens
