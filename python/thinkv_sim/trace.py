"""Reading a thinkv-trace HDF5 file (docs/trace-format.md) into numpy arrays."""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Optional

import h5py
import numpy as np

from .errors import TraceError, UsageError


@dataclasses.dataclass
class Trace:
    """A trace's root attributes, tokens and recorded layers.

    `layers[n]` maps "q", "k", "v", "attn" (those recorded) to arrays of the file's shapes:
    q [T, Hq, D], k and v [T, Hkv, D], attn [G, H, T]. Token text is decoded to str.
    """

    path: str
    attrs: Dict[str, object]
    token_ids: np.ndarray
    token_text: Optional[list]
    thought: Optional[np.ndarray]
    layers: Dict[int, Dict[str, np.ndarray]]

    @property
    def prompt_len(self) -> int:
        return int(self.attrs["prompt_len"])

    @property
    def num_tokens(self) -> int:
        return int(self.attrs["num_tokens"])


def _attribute(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_trace(path: str, layers=None, tensors=("q", "k", "v", "attn")) -> Trace:
    """Loads a trace; `layers` limits which recorded layers are read (negative indices count
    from the last recorded one), `tensors` which datasets of each layer.

    A file that is missing, not HDF5 or not a thinkv trace, or a layer that is not recorded,
    raises TraceError (also a ValueError) with a one-line message naming the file.

    >>> import thinkv_sim as tk
    >>> trace = tk.read_trace("traces/sample-synthetic.h5", layers=[-1], tensors=("k",))
    >>> trace.layers[3]["k"].shape == (trace.num_tokens, trace.attrs["num_kv_heads"], trace.attrs["head_dim"])
    True
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TraceError(f"{path}: no such file", 1, path=path)
    if os.path.isdir(path):
        raise TraceError(f"{path}: is a directory, not a trace file", 1, path=path)
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        reason = str(error).splitlines()[0][:200]
        raise TraceError(f"{path}: not a readable HDF5 file ({reason})", 1, path=path) from None
    with f:
        if _attribute(f.attrs.get("format")) != "thinkv-trace":
            found = f.attrs.get("format")
            raise _error(path, f"{path}: not a thinkv-trace file (root attribute 'format' is {found!r})")
        attrs = {name: _attribute(value) for name, value in f.attrs.items()}
        if not isinstance(f.get("tokens"), h5py.Group) or not isinstance(f["tokens"].get("ids"), h5py.Dataset):
            raise _error(path, f"{path}: missing /tokens/ids (a required dataset)")
        tokens = f["tokens"]
        text = None
        if "text" in tokens:
            text = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in tokens["text"][()]]
        group = f.get("layers")
        names = list(group.keys()) if isinstance(group, h5py.Group) else []
        bad = [name for name in names if not name.isdigit()]
        if bad:
            raise _error(path, f"{path}: /layers/{bad[0]}: layer group names must be decimal layer indices")
        recorded = sorted(int(name) for name in names)
        wanted = recorded if layers is None else [_layer_index(path, n, recorded) for n in layers]
        missing = [n for n in wanted if n not in recorded]
        if missing:
            raise _error(path, f"{path}: layers {missing} are not recorded (recorded: {recorded})")
        out = {}
        for n in wanted:
            layer = f["layers"][str(n)]
            out[n] = {name: layer[name][()] for name in tensors if name in layer}
        return Trace(path=path, attrs=attrs, token_ids=tokens["ids"][()],
                     token_text=text, thought=tokens["thought"][()] if "thought" in tokens else None, layers=out)


def _layer_index(path: str, n, recorded: list) -> int:
    """A requested layer: its index, or, negative, counted from the last recorded layer."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise UsageError(f"{path}: layer {n!r} is not an integer index", 2, path=path)
    n = int(n)
    if n >= 0:
        return n
    if -n > len(recorded):
        raise UsageError(f"{path}: layer {n} counts back past the first recorded layer "
                         f"({len(recorded)} recorded: {recorded})",
                         2, path=path)
    return recorded[n]


def _error(path: str, message: str) -> TraceError:
    return TraceError(message, 1, path=path)
