#!/usr/bin/env python3
"""Writes h5py-small.h5: a thinkv-trace v1 file made by h5py, the way a third-party tool would.

It exercises what h5py does by default (int64 attributes for Python ints, variable-length UTF-8
strings), float16 and float32 tensors, one layer with q/k/v and one with recorded attention only.
The attention of layer 2 is computed with numpy from a q and k drawn for that layer and then
discarded (layer 2 stores attn only), so a reader can check it is a causal softmax row by row;
rerunning this script reproduces the file bit for bit. Run: python3 make_h5py_fixture.py [out.h5]
"""
import sys

import h5py
import numpy as np

T, P, HQ, HKV, D = 48, 16, 4, 2, 16
G = T - P
rng = np.random.default_rng(7)


def attention_rows(q, k):
    """[G, HQ, T] causal softmax(q.k / sqrt(D)) of the decode queries, float32."""
    rows = np.zeros((G, HQ, T), dtype=np.float32)
    group = HQ // HKV
    for g in range(G):
        p = P + g
        for h in range(HQ):
            logits = (k[: p + 1, h // group, :].astype(np.float32) @ q[p, h, :].astype(np.float32)) / np.sqrt(D)
            e = np.exp(logits - logits.max())
            rows[g, h, : p + 1] = e / e.sum()
    return rows


def main(path):
    with h5py.File(path, "w") as f:
        f.attrs["format"] = "thinkv-trace"
        f.attrs["version"] = 1                 # h5py stores Python ints as int64
        f.attrs["model"] = "h5py-fixture"
        f.attrs["num_layers"] = 4
        f.attrs["num_q_heads"] = HQ
        f.attrs["num_kv_heads"] = np.int32(HKV)
        f.attrs["head_dim"] = np.int32(D)
        f.attrs["prompt_len"] = np.int32(P)
        f.attrs["num_tokens"] = np.int32(T)
        f.attrs["source"] = "synthetic"
        f.attrs["generator"] = "make_h5py_fixture.py (h5py %s)" % h5py.__version__
        f.attrs["seed"] = np.int64(7)
        f.create_dataset("tokens/ids", data=np.arange(T, dtype=np.int32))
        f.create_dataset("tokens/text", data=["tok%d" % i for i in range(T)], dtype=h5py.string_dtype("utf-8"))
        labels = np.full(T, -1, dtype=np.int8)
        labels[P:] = np.array([0, 1, 2, 0] * (G // 4), dtype=np.int8)
        f.create_dataset("tokens/thought", data=labels)

        q = rng.standard_normal((T, HQ, D)).astype(np.float16)
        k = rng.standard_normal((T, HKV, D)).astype(np.float16)
        v = rng.standard_normal((T, HKV, D)).astype(np.float16)
        opts = dict(chunks=(16, None, None), compression="gzip", shuffle=True)
        f.create_dataset("layers/0/q", data=q, chunks=(16, HQ, D), compression="gzip", shuffle=True)
        f.create_dataset("layers/0/k", data=k, chunks=(16, HKV, D), compression="gzip", shuffle=True)
        f.create_dataset("layers/0/v", data=v, chunks=(16, HKV, D), compression="gzip", shuffle=True)

        q1 = rng.standard_normal((T, HQ, D)).astype(np.float32)
        k1 = rng.standard_normal((T, HKV, D)).astype(np.float32)
        attn = f.create_dataset("layers/2/attn", data=attention_rows(q1, k1), chunks=(8, HQ, T))
        attn.attrs["heads"] = "q"


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "h5py-small.h5")
