"""Replacing the attention function that transformers' attention modules call, and restoring it.

Attention modules (those with a `layer_idx` and a `q_proj`) look their attention function up
when the forward runs: `eager_attention_forward` of their modeling file, or the
`ALL_ATTENTION_FUNCTIONS` entry of another implementation. An `AttentionHook` swaps what
`wrap(original)` returns in for those, as a context manager; the recorder captures q, k, v
through it (capture.py) and tools/end_to_end attends a policy's cache through it.
"""

import sys

from .errors import RecorderError


def attention_layers(model):
    """{id(module): layer index} of the model's attention modules."""
    return {id(m): m.layer_idx for m in model.modules()
            if getattr(m, "layer_idx", None) is not None and type(m).__name__.endswith("Attention") and hasattr(m, "q_proj")}


class AttentionHook:
    """Subclasses define `wrap(original) -> replacement`; `by_module` maps modules to layers."""

    def __init__(self, model, layers, attn_impl="eager", require_eager=False):
        self.by_module = attention_layers(model)
        missing = set(layers) - set(self.by_module.values())
        if missing:
            raise RecorderError(f"found no attention module for layer(s) {sorted(missing)} in {type(model).__name__}")
        self.attn_impl = attn_impl
        self.require_eager = require_eager
        self.attention_modules = {type(m).__module__ for m in model.modules() if id(m) in self.by_module}
        self._restore = []

    def wrap(self, original):
        raise NotImplementedError

    def __enter__(self):
        # The default ("eager") path: a module-level function looked up when the forward runs.
        for name in self.attention_modules:
            mod = sys.modules[name]
            fn = getattr(mod, "eager_attention_forward", None)
            if fn is None and self.require_eager:
                self.__exit__()
                raise RecorderError(f"{name} has no eager_attention_forward to replace")
            if fn is not None:
                setattr(mod, "eager_attention_forward", self.wrap(fn))
                self._restore.append(lambda mod=mod, fn=fn: setattr(mod, "eager_attention_forward", fn))
        if self.attn_impl != "eager":
            from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
            fn = ALL_ATTENTION_FUNCTIONS[self.attn_impl]
            ALL_ATTENTION_FUNCTIONS[self.attn_impl] = self.wrap(fn)
            self._restore.append(lambda: ALL_ATTENTION_FUNCTIONS.__setitem__(self.attn_impl, fn))
        return self

    def __exit__(self, *exc):
        for undo in reversed(self._restore):
            undo()
        self._restore.clear()
        return False
