"""Capturing the post-RoPE q, k, v that the attention function of each chosen layer receives.

The capture point is the attention function that transformers' attention modules call
(`eager_attention_forward` of the model's modeling file, or the `ALL_ATTENTION_FUNCTIONS` entry of
another implementation): it receives query [batch, q_heads, seq, D] and key/value
[batch, kv_heads, cached + seq, D]. See docs/recording.md.
"""

from .errors import RecorderError
from .hooks import AttentionHook


class AttentionCapture(AttentionHook):
    """Wraps the attention function(s) the model's attention modules call and hands the new
    positions' q, k, v of the chosen layers to `sink(layer, q, k, v)` as [seq, heads, D] tensors.

    Installed as a context manager; restores what it replaced on exit.
    """

    def __init__(self, model, layers, attn_impl, shape):
        super().__init__(model, layers, attn_impl)
        self.layers = set(layers)
        self.shape = shape  # (num_layers, q heads, kv heads, head dim) from the config
        self.sink = None
        self.expected_len = None
        self.calls = {}
        self.scaling = {}
        self.sinks = {}
        self.sliding_window = {}

    def wrap(self, original):
        capture = self

        def recording_attention(module, query, key, value, attention_mask, *args, **kwargs):
            layer = capture.by_module.get(id(module))
            if layer is not None and layer in capture.layers and capture.sink is not None:
                capture._record(layer, module, query, key, value, args, kwargs)
            return original(module, query, key, value, attention_mask, *args, **kwargs)

        recording_attention.__wrapped__ = original
        return recording_attention

    def begin_forward(self, seq_len):
        self.expected_len = seq_len
        self.calls = {layer: 0 for layer in self.layers}

    def end_forward(self, model_type):
        import transformers
        silent = sorted(layer for layer, n in self.calls.items() if n == 0)
        if silent:
            raise RecorderError(
                f"the attention of layer(s) {silent} was not captured: this transformers version "
                f"({transformers.__version__}) runs '{model_type}' attention through a path record_trace.py "
                f"does not hook (try --attn-implementation eager)")

    def _record(self, layer, module, query, key, value, args, kwargs):
        if self.calls.get(layer, 0):
            raise RecorderError(f"layer {layer}: attention ran twice in one forward; cannot tell which call to record")
        self.calls[layer] = 1
        if query.dim() != 4 or key.dim() != 4 or query.shape[0] != 1:
            raise RecorderError(f"layer {layer}: unexpected attention input shapes q {tuple(query.shape)}, "
                                f"k {tuple(key.shape)} (expected [1, heads, seq, D])")
        _, hq, hkv, d = self.shape
        if (query.shape[1], key.shape[1], value.shape[1], query.shape[3], key.shape[3]) != (hq, hkv, hkv, d, d):
            raise RecorderError(f"layer {layer}: attention inputs q {tuple(query.shape)}, k {tuple(key.shape)}, "
                                f"v {tuple(value.shape)} disagree with the config ({hq} q heads, {hkv} kv heads, "
                                f"head dim {d})")
        n = query.shape[2]
        if n != self.expected_len or key.shape[2] < n:
            raise RecorderError(f"layer {layer}: attention saw {n} queries and {key.shape[2]} keys in a forward "
                                f"over {self.expected_len} new positions")
        scaling = kwargs.get("scaling", args[0] if args else None)
        self.scaling[layer] = float(scaling) if scaling is not None else query.shape[-1] ** -0.5
        sinks = kwargs.get("s_aux")
        if sinks is None:
            sinks = getattr(module, "sinks", None)
        if sinks is not None:
            self.sinks[layer] = sinks.detach().float().cpu().numpy().reshape(-1)
        window = kwargs.get("sliding_window")
        if window is None:
            window = getattr(module, "sliding_window", None)
        if window is not None:
            self.sliding_window[layer] = int(window)
        # [1, H, S, D] -> [S, H, D]; keys/values end with the new positions (the cache is in front).
        q = query[0].transpose(0, 1)
        k = key[0, :, -n:, :].transpose(0, 1)
        v = value[0, :, -n:, :].transpose(0, 1)
        self.sink(layer, q, k, v)


# --------------------------------------------------------------------------------------------
