"""The teacher-forced forward with a policy's cache: one pass over the recorded tokens in which
every layer's attention sees, per kv head and query row, only what the policy held at that step.

One pass is exact, not an approximation of step-by-step decoding: position p's keys and values
are computed once, in p's own row, from rows that attended the cache as it was at p's step; a
later row never changes them. Rounded keys and values come from the same quantizers the
simulator runs (quantizers.py), applied to the keys and values this forward computes.
"""

import numpy as np
import torch
from recorder.hooks import AttentionHook  # tools/, which holds this package, holds the recorder too

from . import quantizers
from .timeline import attention_plan


class HeadPlan:
    """What one kv head of one layer attends: boolean masks, built for a block of query rows when
    its layer runs (memory holds one block's), and the groups to round.

    A head whose positions are rounded more than once, or whose keys are rounded per token
    (PM-KVQ re-quantizes at lower widths and groups keys per token), is `versioned`: its keys and
    values change along the sequence, so the forward runs its rows in segments between the
    steps at which groups take effect, each segment attending the copies as they are then."""

    def __init__(self, timeline, num_tokens, prompt_len, steps):
        self.shape = (timeline, num_tokens, prompt_len, steps)
        unknown = {g["tensor"] for g in timeline.groups} - {"key", "value", "key_per_token"}
        if unknown:
            raise ValueError(f"{timeline.policy if hasattr(timeline, 'policy') else 'timeline'}: groups of tensor "
                             f"{sorted(unknown)} are not supported by the end-to-end forward")
        self.versioned = _is_versioned(timeline.groups)
        # In the order the simulator made them (a stable sort keeps a step's own order).
        self.events = sorted(timeline.groups, key=lambda g: g["step"]) if self.versioned else []
        self.key_groups = [g for g in timeline.groups if g["tensor"] == "key"]
        self.value_groups = [g for g in timeline.groups if g["tensor"] == "value"]

    def masks(self, rows):
        """(attend, key rounded, value rounded) of query rows `rows` as torch booleans [rows, T];
        the last two None when no entry is set (always None for a versioned head)."""
        attend, key_q, value_q = attention_plan(*self.shape, rows=rows, rounding=not self.versioned)
        if self.versioned:
            return torch.from_numpy(attend), None, None
        return (torch.from_numpy(attend), torch.from_numpy(key_q) if key_q.any() else None,
                torch.from_numpy(value_q) if value_q.any() else None)


def _is_versioned(groups):
    seen = {"key": set(), "value": set()}
    for g in groups:
        if g["tensor"] == "key_per_token":
            return True
        positions = set(g["positions"])
        if positions & seen[g["tensor"]]:
            return True
        seen[g["tensor"]] |= positions
    return False


def layer_plans(policy_timeline, num_layers, num_kv_heads, num_tokens, prompt_len, steps):
    """{layer: [HeadPlan per kv head]} for every layer of the model (all must be in the timeline)."""
    missing = [layer for layer in range(num_layers)
               if any((layer, h) not in policy_timeline.heads for h in range(num_kv_heads))]
    if missing:
        raise ValueError(f"{policy_timeline.policy}: the cache timeline lacks layer(s) {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}; record and replay every layer")
    return {layer: [HeadPlan(policy_timeline.heads[(layer, h)], num_tokens, prompt_len, steps)
                    for h in range(num_kv_heads)] for layer in range(num_layers)}


def rounded_keys(keys, groups):
    """keys [T, D]: each group rounds one channel over its positions (keys per channel)."""
    exact = keys.detach().float().cpu().numpy()
    out = exact.copy()
    for g in groups:
        positions = np.asarray(g["positions"], dtype=np.int64)
        out[positions, :] = quantizers.round_trip(exact[positions, :].T, g["quantizer"]).T
    return torch.from_numpy(out).to(keys.dtype)


def rounded_values(values, groups):
    """values [T, D]: each position's channels in runs of `channel_group` (values per token)."""
    exact = values.detach().float().cpu().numpy()
    out = exact.copy()
    D = exact.shape[1]
    for g in groups:
        positions = np.asarray(g["positions"], dtype=np.int64)
        width = int(g["channel_group"])
        for start in range(0, D, width):
            out[positions, start:start + width] = quantizers.round_trip(exact[positions, start:start + width], g["quantizer"])
    return torch.from_numpy(out).to(values.dtype)


ROW_BLOCK = 512  # query rows per block: [group, 512, T] logits at a time, not [group, T, T]


def planned_attention(query, key, value, plans, scaling, row_block=ROW_BLOCK):
    """query [1, Hq, T, D], key/value [1, Hkv, T, D] -> output [1, T, Hq, D] under `plans`.
    Rows are independent (each has its own mask), so blocks of rows give the same results (to the
    rounding of differently shaped matrix products)."""
    if query.shape[0] != 1:
        raise ValueError("the end-to-end forward runs one sequence at a time")
    Hq, Hkv, T = query.shape[1], key.shape[1], query.shape[2]
    group = Hq // Hkv
    out = torch.empty(Hq, T, query.shape[3], dtype=query.dtype)
    for h, plan in enumerate(plans):
        k, v = key[0, h], value[0, h]                     # [T, D]
        if plan.versioned:
            out[h * group:(h + 1) * group] = _versioned_attention(query[0, h * group:(h + 1) * group], k, v, plan,
                                                                  scaling, row_block)
            continue
        kq = rounded_keys(k, plan.key_groups) if plan.key_groups else None
        vq = rounded_values(v, plan.value_groups) if plan.value_groups else None
        for start in range(0, T, row_block):
            rows = range(start, min(T, start + row_block))
            end = rows.stop  # causal: no row of the block sees past its last one
            attend, key_q, value_q = plan.masks(rows)
            q = query[0, h * group:(h + 1) * group, start:end]          # [g, rows, D]
            logits = torch.matmul(q, k[:end].transpose(0, 1)) * scaling
            if key_q is not None:
                logits = torch.where(key_q[:, :end], torch.matmul(q, kq[:end].transpose(0, 1)) * scaling, logits)
            logits = logits.masked_fill(~attend[:, :end], float("-inf"))
            weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
            if value_q is not None:
                rounded = value_q[:, :end].to(weights.dtype)
                block = torch.matmul(weights * (1 - rounded), v[:end]) + torch.matmul(weights * rounded, vq[:end])
            else:
                block = torch.matmul(weights, v[:end])
            out[h * group:(h + 1) * group, start:end] = block
    return out.unsqueeze(0).transpose(1, 2).contiguous()


def _versioned_attention(q, k, v, plan, scaling, row_block):
    """One versioned head: q [g, T, D], k and v [T, D] -> [g, T, D]. Rows run in segments that
    start where groups take effect (row P + step); before a segment, its step's groups round the
    current copies, so every row attends the keys and values as the cache held them then."""
    _, T, P, steps = plan.shape
    keys = k.detach().float().cpu().numpy().copy()
    values = v.detach().float().cpu().numpy().copy()
    starts = sorted({P + g["step"] for g in plan.events if P + g["step"] < T})
    bounds = sorted(set(list(range(0, T, row_block)) + starts + [min(T, P + steps), T]))
    out = torch.empty(q.shape[0], T, q.shape[2], dtype=q.dtype)
    pending = list(plan.events)
    for start, stop in zip(bounds[:-1], bounds[1:]):
        while pending and P + pending[0]["step"] <= start:
            quantizers.apply_group(keys, values, pending.pop(0))
        if start == P + steps:   # rows past the replayed steps attend causally, exact
            keys = k.detach().float().cpu().numpy().copy()
            values = v.detach().float().cpu().numpy().copy()
            pending = []
        attend, _, _ = plan.masks(range(start, stop))
        kt = torch.from_numpy(keys[:stop]).to(q.dtype)
        vt = torch.from_numpy(values[:stop]).to(q.dtype)
        logits = torch.matmul(q[:, start:stop], kt.transpose(0, 1)) * scaling
        logits = logits.masked_fill(~attend[:, :stop], float("-inf"))
        weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(q.dtype)
        out[:, start:stop] = torch.matmul(weights, vt)
    return out


class PolicyAttention(AttentionHook):
    """Replaces the eager attention function of the model's attention modules, for the layers in
    `plans`, with `planned_attention` (a context manager; restores the original on exit)."""

    def __init__(self, model, plans, capture=None):
        super().__init__(model, plans, "eager", require_eager=True)
        for module in model.modules():
            if id(module) in self.by_module and (getattr(module, "sinks", None) is not None
                                                 or getattr(module, "sliding_window", None)):
                raise ValueError(f"layer {module.layer_idx} uses attention sinks or a sliding window; the "
                                 "end-to-end forward supports plain causal attention only")
        self.plans = plans
        # {layer: (q [T, Hq, D], k, v [T, Hkv, D])} of every planned layer, when a dict is given.
        self.capture = capture
        self.calls = 0

    def wrap(self, original):
        owner = self

        def attention(module, query, key, value, attention_mask, *args, **kwargs):
            layer = owner.by_module.get(id(module))
            if layer is None or layer not in owner.plans:
                return original(module, query, key, value, attention_mask, *args, **kwargs)
            owner.calls += 1
            scaling = kwargs.get("scaling", args[0] if args else None)
            if scaling is None:
                scaling = query.shape[-1] ** -0.5
            if owner.capture is not None:
                owner.capture[layer] = tuple(t[0].transpose(0, 1).detach().float().cpu().numpy() for t in (query, key, value))
            return planned_attention(query, key, value, owner.plans[layer], scaling), None

        return attention


def next_token_log_probs(model, ids, plans, first, count, capture=None):
    """log p(next token) in float64 at positions first ..< first + count, one teacher-forced pass
    (with `capture` a dict: also every layer's q, k, v as the policy's model computes them)."""
    input_ids = torch.tensor([list(ids)], dtype=torch.long)
    with torch.no_grad(), PolicyAttention(model, plans, capture) as hook:
        hidden = model.base_model(input_ids=input_ids, use_cache=False).last_hidden_state
        if hook.calls != len(plans):
            raise RuntimeError(f"the planned attention ran in {hook.calls} of {len(plans)} layers; load the model "
                               "with attn_implementation='eager'")
        logits = model.get_output_embeddings()(hidden[0, first:first + count])
    return torch.log_softmax(logits.double(), dim=-1)
