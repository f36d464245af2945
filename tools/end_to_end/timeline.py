"""Reading `thinkv-sim replay --cache-timeline` files (docs/end-to-end.md describes the lines).

For one policy, every (layer, kv head) has `dropped_at` (per position, the first decode step whose
attention no longer sees it; -1 never) and the quantization groups with the step from which
attention sees them rounded. From these, `attention_plan` builds what the masked forward needs.
"""

import json

import numpy as np

NEVER = np.iinfo(np.int32).max


class HeadTimeline:
    def __init__(self, dropped_at, groups):
        self.dropped_at = np.asarray(dropped_at, dtype=np.int64)
        self.groups = groups  # dicts: tensor, step, quantizer, positions, channel_group (values)

    def quantized_from(self, tensor, num_tokens):
        """Per position, the first decode step that sees its `tensor` rounded (NEVER if none)."""
        first = np.full(num_tokens, NEVER, dtype=np.int64)
        for g in self.groups:
            if g["tensor"] != tensor:
                continue
            positions = np.asarray(g["positions"], dtype=np.int64)
            if (first[positions] != NEVER).any():
                raise ValueError(f"a position's {tensor} is quantized twice; the end-to-end forward holds one "
                                 "rounded copy per position")
            first[positions] = g["step"]
        return first


class PolicyTimeline:
    """All (layer, kv head) timelines of one policy label."""

    def __init__(self, policy):
        self.policy = policy
        self.heads = {}

    def layers(self):
        return sorted({layer for layer, _ in self.heads})


def read_timelines(path):
    """{policy label: PolicyTimeline} of a --cache-timeline file."""
    out = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                policy, layer, head = record["policy"], int(record["layer"]), int(record["kv_head"])
                timeline = HeadTimeline(record["dropped_at"], record["groups"])
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{number}: not a cache-timeline line ({e})")
            out.setdefault(policy, PolicyTimeline(policy)).heads[(layer, head)] = timeline
    return out


def attention_plan(timeline, num_tokens, prompt_len, steps, rows=None, rounding=True):
    """Boolean [rows, T] masks for one kv head over the sequence a teacher-forced forward runs
    (`rows`: a range of query positions, default all T).

    Row p is the query at position p. Prompt rows attend causally, at full precision (the
    prefill runs before any compression). Row P + t (decode step t < steps) attends the
    positions the policy's cache held at step t, with keys (values) rounded where `key_q`
    (`value_q`) is set. Rows past the replayed steps attend causally, exact. With
    `rounding=False` only `attend` is built (the other two are None).
    """
    T, P = num_tokens, prompt_len
    rows = np.arange(T)[:, None] if rows is None else np.arange(rows.start, rows.stop)[:, None]
    cols = np.arange(T)[None, :]
    causal = cols <= rows
    step = rows - P  # decode step of each row (negative for prompt rows)
    decode = (step >= 0) & (step < steps)
    dropped = timeline.dropped_at[None, :]
    held = (dropped < 0) | (dropped > step)
    attend = causal & (~decode | held)
    if not rounding:   # a versioned head (forward.HeadPlan) rounds by segments instead
        return attend, None, None
    key_from = timeline.quantized_from("key", T)[None, :]
    value_from = timeline.quantized_from("value", T)[None, :]
    key_q = attend & decode & (key_from <= step)
    value_q = attend & decode & (value_from <= step)
    return attend, key_q, value_q
