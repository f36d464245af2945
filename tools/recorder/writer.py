"""Streaming positions into a thinkv-trace v1 HDF5 file (docs/trace-format.md)."""

import os

from .errors import RecorderError, first_line


class TraceWriter:
    """Streams positions into a thinkv-trace v1 file.

    Rows are buffered per dataset and written (the dataset resized along T) whenever a chunk's
    worth is pending, so memory holds at most one chunk per dataset plus one forward's capture of
    one layer. The file is written under `<path>.partial` and renamed by `close()`.
    """

    def __init__(self, path, layers, q_heads, kv_heads, head_dim, dtype, values, chunk, compression, attrs):
        import h5py
        import numpy as np
        self.np = np
        self.path = path
        self.partial = path + ".partial"
        self.dtype = np.float16 if dtype == "float16" else np.float32
        self.chunk = chunk
        self.layers = layers
        self.values = values
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise RecorderError(f"{path}: the folder {folder} does not exist")
        try:
            self.file = h5py.File(self.partial, "w")
        except OSError as e:
            raise RecorderError(f"{self.partial}: cannot create the file ({first_line(e)})")
        f = self.file
        for key, value in attrs.items():
            f.attrs[key] = value
        opts = {}
        if compression == "gzip":
            opts = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
        self.datasets = {}
        self.pending = {}
        self.length = {}

        def make(name, shape_tail, dtype, compressed=True):
            ds = f.create_dataset(name, shape=(0, *shape_tail), maxshape=(None, *shape_tail), dtype=dtype,
                                  chunks=(chunk, *shape_tail), **(opts if compressed else {}))
            self.datasets[name] = ds
            self.pending[name] = []
            self.length[name] = 0

        make("tokens/ids", (), np.int32)
        make("tokens/text", (), h5py.string_dtype("utf-8"), compressed=False)
        for layer in layers:
            make(f"layers/{layer}/q", (q_heads, head_dim), self.dtype)
            make(f"layers/{layer}/k", (kv_heads, head_dim), self.dtype)
            if values:
                make(f"layers/{layer}/v", (kv_heads, head_dim), self.dtype)

    def add_tokens(self, ids, texts):
        self._append("tokens/ids", self.np.asarray(ids, dtype=self.np.int32))
        # HDF5 variable-length strings end at a NUL byte: a NUL character is stored as U+2400 (␀).
        self._append("tokens/text", self.np.array([t.replace("\x00", "\u2400") for t in texts], dtype=object))

    def add_layer(self, layer, q, k, v):
        """q [S, Hq, D], k and v [S, Hkv, D]: torch tensors on any device."""
        import torch
        target = torch.float16 if self.dtype == self.np.float16 else torch.float32
        tensors = [("q", q), ("k", k)] + ([("v", v)] if self.values else [])
        for name, t in tensors:
            rows = t.detach().to(dtype=target).cpu().numpy()
            finite = self.np.isfinite(rows).reshape(len(rows), -1).all(axis=1)
            if not finite.all():
                dataset = f"layers/{layer}/{name}"
                bad = int(self.np.argmin(finite))
                position = self.length[dataset] + sum(len(r) for r in self.pending[dataset]) + bad
                source = t[bad].detach().float()
                if torch.isfinite(source).all():
                    raise RecorderError(f"layer {layer} {name}: values up to {source.abs().max().item():.4g} overflow "
                                        f"float16 at position {position}; record with --dtype float32")
                raise RecorderError(f"layer {layer} {name}: the model produced NaN or infinite values at position {position}")
            self._append(f"layers/{layer}/{name}", rows)

    def _append(self, name, rows):
        self.pending[name].append(rows)
        if sum(len(r) for r in self.pending[name]) >= self.chunk:
            self._flush(name)

    def _flush(self, name):
        if not self.pending[name]:
            return
        rows = self.np.concatenate(self.pending[name]) if len(self.pending[name]) > 1 else self.pending[name][0]
        self.pending[name] = []
        ds = self.datasets[name]
        start = self.length[name]
        ds.resize(start + len(rows), axis=0)
        ds[start:start + len(rows)] = rows
        self.length[name] = start + len(rows)

    def truncate_to_common_length(self):
        """Flush, then cut every dataset to the shortest one's length (after an interrupted forward)."""
        for name in self.datasets:
            self._flush(name)
        common = min(self.length.values())
        for name, ds in self.datasets.items():
            if self.length[name] > common:
                ds.resize(common, axis=0)
                self.length[name] = common
        return common

    def set_attrs(self, attrs):
        for key, value in attrs.items():
            self.file.attrs[key] = value

    def set_layer_attrs(self, layer, attrs):
        group = self.file[f"layers/{layer}"]
        for key, value in attrs.items():
            group.attrs[key] = value

    def close(self):
        """Flush, check every dataset has T rows, write num_tokens, rename into place. Returns T."""
        import numpy as np
        for name in self.datasets:
            self._flush(name)
        lengths = set(self.length.values())
        if len(lengths) != 1:
            raise RecorderError(f"{self.path}: internal error, datasets have different lengths {self.length}")
        total = lengths.pop()
        self.file.attrs["num_tokens"] = np.int32(total)
        self.file.close()
        os.replace(self.partial, self.path)
        return total

    def discard(self):
        try:
            self.file.close()
        except Exception:
            pass
        try:
            os.remove(self.partial)
        except OSError:
            pass
