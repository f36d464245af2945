"""Reading a thinkv-trace HDF5 file (docs/trace-format.md) into numpy arrays."""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional

import h5py
import numpy as np


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
    from the last recorded one), `tensors` which datasets of each layer."""
    with h5py.File(path, "r") as f:
        if _attribute(f.attrs.get("format")) != "thinkv-trace":
            raise ValueError(f"{path}: not a thinkv-trace file (root attribute 'format' is {f.attrs.get('format')!r})")
        attrs = {name: _attribute(value) for name, value in f.attrs.items()}
        tokens = f["tokens"]
        text = None
        if "text" in tokens:
            text = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in tokens["text"][()]]
        recorded = sorted(int(name) for name in f["layers"].keys()) if "layers" in f else []
        wanted = recorded if layers is None else [recorded[n] if n < 0 else n for n in layers]
        missing = [n for n in wanted if n not in recorded]
        if missing:
            raise ValueError(f"{path}: layers {missing} are not recorded (recorded: {recorded})")
        out = {}
        for n in wanted:
            group = f["layers"][str(n)]
            out[n] = {name: group[name][()] for name in tensors if name in group}
        return Trace(path=path, attrs=attrs, token_ids=tokens["ids"][()],
                     token_text=text, thought=tokens["thought"][()] if "thought" in tokens else None, layers=out)
