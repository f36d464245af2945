"""Closed-loop generation: the model generates while thinkv-sim's policy decides, at every decode
step and in every layer, what its cache holds (`thinkv-sim serve-policy`, serve.py).

Per decode step t (position p = P + t) and layer l, the model's attention module computes q, k, v
of p; they go to the policy's process, which runs the replay engine's hooks of step t on that
layer (append p, beforeAttention, attention over its own cache, afterAttention) and answers with
the positions p's query attends and the quantizations that take effect; the query then attends
exactly those, with keys and values rounded by the same quantizers (quantizers.py, bit for bit).
Layer l + 1 runs after layer l's answer, as in a deployment. The prompt is prefilled at full
precision; the policy's prefill hook sees it. docs/end-to-end.md ("Closed loop").
"""

import numpy as np
import torch
from recorder.hooks import AttentionHook

from . import quantizers
from .serve import PolicyServer


class ClosedLoopAttention(AttentionHook):
    """Replaces every layer's eager attention with attention over the policy's cache."""

    def __init__(self, model, server, shape, max_tokens, capture=None):
        layers, q_heads, kv_heads, head_dim = shape
        super().__init__(model, list(range(layers)), "eager", require_eager=True)
        for module in model.modules():
            if id(module) in self.by_module and (getattr(module, "sinks", None) is not None
                                                 or getattr(module, "sliding_window", None)):
                raise ValueError(f"layer {module.layer_idx} uses attention sinks or a sliding window; closed-loop "
                                 "generation supports plain causal attention only")
        self.server = server
        self.shape = shape
        T = max_tokens
        self.K = torch.zeros(layers, kv_heads, T, head_dim)
        self.V = torch.zeros(layers, kv_heads, T, head_dim)
        self.Kr = torch.zeros(layers, kv_heads, T, head_dim)   # rounded copies, where rounded
        self.Vr = torch.zeros(layers, kv_heads, T, head_dim)
        self.key_rounded = torch.zeros(layers, kv_heads, T, dtype=torch.bool)
        self.value_rounded = torch.zeros(layers, kv_heads, T, dtype=torch.bool)
        self.position = None   # the decoded position; None while the prompt is prefilled
        self.prompt_len = None
        # {layer: [(q, k, v) rows]} when given: every position's q, k, v ([S, H, D] numpy blocks).
        self.capture = capture
        self.calls = 0

    def _apply(self, layer, groups):
        """Rounds what the groups say, as the simulator rounds its stored tensors: from the
        current copy (exact, or rounded already: PM-KVQ re-quantizes at a lower width)."""
        for g in groups:
            h, positions = g["kv_head"], torch.tensor(g["positions"], dtype=torch.long)
            if g["tensor"] in ("key", "key_per_token"):
                keys = self._current(self.K, self.Kr, self.key_rounded, layer, h)
                quantizers.apply_group(keys, None, g)
                self.Kr[layer, h, positions] = torch.from_numpy(keys[g["positions"]])
                self.key_rounded[layer, h, positions] = True
            else:
                values = self._current(self.V, self.Vr, self.value_rounded, layer, h)
                quantizers.apply_group(None, values, g)
                self.Vr[layer, h, positions] = torch.from_numpy(values[g["positions"]])
                self.value_rounded[layer, h, positions] = True

    @staticmethod
    def _current(exact, rounded, mask, layer, h):
        """One head's stored rows ([T, D] float32 numpy copy): rounded where rounded before."""
        out = exact[layer, h].numpy().copy()
        was = mask[layer, h].numpy()
        if was.any():
            out[was] = rounded[layer, h].numpy()[was]
        return out

    def wrap(self, original):
        owner = self

        def attention(module, query, key, value, attention_mask, *args, **kwargs):
            layer = owner.by_module.get(id(module))
            if layer is None:
                return original(module, query, key, value, attention_mask, *args, **kwargs)
            owner.calls += 1
            scaling = kwargs.get("scaling", args[0] if args else None)
            if scaling is None:
                scaling = query.shape[-1] ** -0.5
            q, k, v = query[0].float(), key[0].float(), value[0].float()      # [H, S, D]
            Hq, Hkv, S = q.shape[0], k.shape[0], q.shape[1]
            group = Hq // Hkv
            rows = [t.transpose(0, 1).contiguous().numpy() for t in (q, k, v)]  # [S, H, D]
            if owner.capture is not None:
                owner.capture.setdefault(layer, []).append(rows)
            if owner.position is None:
                # The prompt, causally and exact; the policy's prefill hook sees it.
                owner.K[layer, :, :S] = k
                owner.V[layer, :, :S] = v
                owner.server.prefill(layer, *rows)
                out = torch.empty(Hq, S, q.shape[2])
                causal = torch.ones(S, S, dtype=torch.bool).tril()
                for h in range(Hkv):
                    logits = torch.matmul(q[h * group:(h + 1) * group], k[h].transpose(0, 1)) * scaling
                    logits = logits.masked_fill(~causal, float("-inf"))
                    weights = torch.softmax(logits, dim=-1, dtype=torch.float32)
                    out[h * group:(h + 1) * group] = torch.matmul(weights, v[h])
                return out.unsqueeze(0).transpose(1, 2).contiguous().to(query.dtype), None
            p = owner.position
            owner.K[layer, :, p] = k[:, 0]
            owner.V[layer, :, p] = v[:, 0]
            attended, groups = owner.server.step(layer, p - owner.prompt_len, rows[0][0], rows[1][0], rows[2][0])
            owner._apply(layer, groups)
            out = torch.empty(Hq, 1, q.shape[2])
            for h in range(Hkv):
                index = torch.from_numpy(attended[h])
                keys = owner.K[layer, h, index]
                rounded = owner.key_rounded[layer, h, index]
                if rounded.any():
                    keys = torch.where(rounded[:, None], owner.Kr[layer, h, index], keys)
                values = owner.V[layer, h, index]
                rounded = owner.value_rounded[layer, h, index]
                if rounded.any():
                    values = torch.where(rounded[:, None], owner.Vr[layer, h, index], values)
                logits = torch.matmul(q[h * group:(h + 1) * group, 0], keys.transpose(0, 1)) * scaling   # [g, n]
                weights = torch.softmax(logits, dim=-1, dtype=torch.float32)
                out[h * group:(h + 1) * group, 0] = torch.matmul(weights, values)
            return out.unsqueeze(0).transpose(1, 2).contiguous().to(query.dtype), None

        return attention


def model_shape(model):
    from recorder import model as models
    return tuple(models.config_shape(model.config))


def generate(model, binary, policy, policy_args, prompt_ids, max_new_tokens, choose, stops=(), capture=None,
             keep_log_probs=True, done=None):
    """One closed-loop generation. `choose(logits, ids so far) -> token` (greedy or a seeded
    sampler); stops at a token of `stops` or after `max_new_tokens` tokens.

    Returns a dict: tokens (generated ids), stop ("eos" or "limit"), log_probs (float32 [n - 1, V]:
    the policy's next-token log-probabilities of decode steps 0 .. n-2, rows P .. P + n - 2; the
    first token comes from the exact prefill), summary (serve-policy's: KV memory, attention
    metrics). With `done(tokens) -> bool`, the generation also stops (stop "answer") once it
    says so."""
    shape = model_shape(model)
    P = len(prompt_ids)
    T = P + max_new_tokens
    scale = None
    server = PolicyServer(binary, policy, policy_args, shape, P, T, scale)
    hook = ClosedLoopAttention(model, server, shape, T, capture=capture)
    hook.prompt_len = P
    head = model.get_output_embeddings()
    tokens, log_probs, stop = [], [], "limit"
    try:
        with torch.no_grad(), hook:
            hidden = model.base_model(input_ids=torch.tensor([list(prompt_ids)], dtype=torch.long),
                                      use_cache=False).last_hidden_state
            if hook.calls != shape[0]:
                raise RuntimeError(f"the closed-loop attention ran in {hook.calls} of {shape[0]} layers; load the "
                                   "model with attn_implementation='eager'")
            logits = head(hidden[0, -1])
            while True:
                token = int(choose(logits, list(prompt_ids) + tokens))
                tokens.append(token)
                if token in stops:
                    stop = "eos"
                    break
                if done is not None and done(tokens):
                    stop = "answer"
                    break
                if len(tokens) >= max_new_tokens:
                    break
                p = P + len(tokens) - 1
                hook.position = p
                hidden = model.base_model(input_ids=torch.tensor([[token]], dtype=torch.long),
                                          position_ids=torch.tensor([[p]], dtype=torch.long),
                                          use_cache=False).last_hidden_state
                logits = head(hidden[0, -1])
                if keep_log_probs:
                    log_probs.append(torch.log_softmax(logits.double(), dim=-1).float())
        summary = server.end()
    finally:
        server.close()
    return {"tokens": tokens, "stop": stop, "summary": summary,
            "log_probs": torch.stack(log_probs) if log_probs else torch.zeros(0)}


def greedy(logits, _ids):
    return int(torch.argmax(logits))


def full_cache_log_probs(model, ids, first, count):
    """The full cache's next-token log-probabilities (float64) of rows first .. first + count - 1
    given `ids`: one teacher-forced pass with the model's own attention."""
    if count <= 0:
        return torch.zeros(0, dtype=torch.float64)
    with torch.no_grad():
        hidden = model.base_model(input_ids=torch.tensor([list(ids)], dtype=torch.long), use_cache=False).last_hidden_state
        logits = model.get_output_embeddings()(hidden[0, first:first + count])
    return torch.log_softmax(logits.double(), dim=-1)


def ends_in_cycle(tokens, max_period=64, min_repeats=3, min_span=12):
    """Whether the sequence ends in at least `min_repeats` copies (and `min_span` tokens) of one
    cycle of at most `max_period` tokens."""
    n = len(tokens)
    for period in range(1, max_period + 1):
        repeats = max(min_repeats, -(-min_span // period))
        span = repeats * period
        if span > n:
            break
        tail = tokens[n - span:]
        if all(tail[i] == tail[i % period] for i in range(span)):
            return True
    return False


def first_divergence(a, b):
    """Index of the first token where two generations differ (None if one is a prefix of the other)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None


def captured_arrays(capture):
    """{layer: (q [T, Hq, D], k, v [T, Hkv, D])} from the per-forward blocks a generation captured."""
    return {layer: tuple(np.concatenate([block[i] for block in blocks]) for i in range(3))
            for layer, blocks in capture.items()}
