#!/usr/bin/env python3
"""Writes a random thinkv-trace for cross-checking policies against NumPy models.

Keys are drawn around a few shared directions (plus noise), so many pairs of keys have a
cosine similarity above 0.5 and R-KV's redundancy term matters; queries are Gaussian. Tensors
are stored as float16 (as recorded traces are), which both readers widen to float32 exactly.
The seed fixes the file.

    python3 make_random_trace.py OUT.h5 [--tokens 700 --prompt 50 --q-heads 4 --kv-heads 2
        --head-dim 32 --layers 2 --seed 1]
"""
import argparse

import h5py
import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out")
    parser.add_argument("--tokens", type=int, default=700)
    parser.add_argument("--prompt", type=int, default=50)
    parser.add_argument("--q-heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--clusters", type=int, default=6, help="shared key directions")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    T, P, HQ, HKV, D = args.tokens, args.prompt, args.q_heads, args.kv_heads, args.head_dim
    rng = np.random.default_rng(args.seed)
    with h5py.File(args.out, "w") as f:
        f.attrs["format"] = "thinkv-trace"
        f.attrs["version"] = np.int32(1)
        f.attrs["model"] = "random-clustered"
        f.attrs["num_layers"] = np.int32(args.layers)
        f.attrs["num_q_heads"] = np.int32(HQ)
        f.attrs["num_kv_heads"] = np.int32(HKV)
        f.attrs["head_dim"] = np.int32(D)
        f.attrs["prompt_len"] = np.int32(P)
        f.attrs["num_tokens"] = np.int32(T)
        f.attrs["source"] = "synthetic"
        f.attrs["generator"] = "tools/reference/make_random_trace.py"
        f.attrs["seed"] = np.int64(args.seed)
        f.create_dataset("tokens/ids", data=np.arange(T, dtype=np.int32))
        for layer in range(args.layers):
            centres = rng.standard_normal((HKV, args.clusters, D))
            which = rng.integers(0, args.clusters, size=(T, HKV))
            strength = rng.uniform(0.0, 2.0, size=(T, HKV, 1))
            k = centres[np.arange(HKV)[None, :], which] * strength + rng.standard_normal((T, HKV, D))
            q = rng.standard_normal((T, HQ, D)) * 1.5
            f.create_dataset("layers/%d/q" % layer, data=q.astype(np.float16), chunks=(64, HQ, D))
            f.create_dataset("layers/%d/k" % layer, data=k.astype(np.float16), chunks=(64, HKV, D))


if __name__ == "__main__":
    main()
