#!/usr/bin/env python3
"""Independent NumPy model of PM-KVQ's progressive quantization, for cross-checking thinkv-sim.

Written from the authors' code (thu-nics/PM-KVQ @ c8a2bff: the "Progressive Begin" block of
pm_kvq/quantization/methods/pm_kvq/progressive/progressive_modeling_qwen2.py and the
UntrainableQuantizer of pm_kvq/quantization/quantizer/quantizer.py), not from thinkv-sim's
Swift code. Nothing is evicted, so there are no kept events; it prints one JSON line per
(layer, decode step):

    {"layer": n, "step": t, "position": p, "kv_bits": b, "resident_bytes": N, "output_error": e}

- kv_bits: the layer's width after the step; resident_bytes: every kv head's K and V at each
  position's width (D elements each) plus, for every position ever held below 16 bits, a
  2-byte scale and a 2-byte zero point per group of K and of V (as the real backend stores
  them), as thinkv-sim counts bytes;
- output_error: mean over query heads of ||O^ - O|| / ||O||, the step's attention output with
  the quantized keys and values (as they are when the step attends, before its own update)
  against the exact ones (docs/metrics.md), when the trace records v.

Per forward (prefill with all P tokens, then each decode token after its attention): the first
--sink tokens go to --sink-bits; the others fill a window of --window tokens at --window-bits;
every full window is flushed as one block to the current width b; then if
sink*sink_bits + window*window_bits + rest*b > 16*B (B = --budget, in 16-bit tokens; times the
--layer-bits weight) and rest > 0 and b/2 >= 2, b halves and every token outside sink and window
is re-quantized at b from its current values. 16 bits = the exact value. Quantizer: per token,
groups of min(--group, D) channels, float32: lo, hi; scale = (hi - lo)/(2^b - 1); a constant group
stays; code = rint(clip((x - lo)/scale, 0, 2^b - 1)); x^ = code*scale + lo. Keys are divided by
SmoothAttention's channel factors before rounding and multiplied after (--smooth-alpha a: per kv
head and RoPE pair (i, i + D/2), clip(max over the prompt of |k|, to the power a, 1e-4, 1e4); 0 = off).

    python3 pmkvq_reference.py TRACE --budget B [--sink 1 --sink-bits 16 --window 128
        --window-bits 16 --init-bits 16 --group 128 --smooth-alpha 0.5 --layer-bits LIST --layers 0,3
        --steps N]
"""
import argparse
import json
import sys

import h5py
import numpy as np
from trace_layers import qk_layers


def round_trip(x, bits):
    """x [n] float32, one group: asymmetric min-max quantize-dequantize in float32."""
    lo, hi = np.float32(x.min()), np.float32(x.max())
    levels = np.float32(2 ** bits - 1)
    scale = np.float32((hi - lo) / levels)
    if not scale > 0:
        return np.full_like(x, lo)
    code = np.rint(np.clip((x - lo) / scale, np.float32(0), levels)).astype(np.float32)
    return (code * scale + lo).astype(np.float32)


class Layer:
    def __init__(self, k, v, args, weight):
        self.k = k.astype(np.float32).copy()   # [T, Hkv, D], rounded in place
        self.v = None if v is None else v.astype(np.float32).copy()
        self.args = args
        T, self.Hkv, self.D = k.shape
        self.group = min(args.group, self.D)
        self.bits = np.full(T, 16, dtype=np.int64)
        self.charged = np.zeros(T, dtype=bool)
        self.kv_bits = args.init_bits
        self.sink_held = 0
        self.window_held = 0
        self.budget = 16 * args.budget * weight
        self.scale = None   # SmoothAttention's per-kv-head channel factors [Hkv, D], float32

    def smooth(self, P):
        """apply_smoothattention_rep with get_max_keys over the prompt: per kv head and RoPE pair
        (channels i, i + D/2), scale = clip(max|k|^alpha, 1e-4, 1e4)."""
        if self.args.smooth_alpha <= 0 or P == 0:
            return
        half = self.D // 2 if self.D % 2 == 0 else self.D
        peak = np.abs(self.k[:P]).reshape(P, self.Hkv, -1, half).max(axis=(0, 2)) if half != self.D \
            else np.abs(self.k[:P]).max(axis=0)
        factors = np.clip(peak.astype(np.float64) ** self.args.smooth_alpha, 1e-4, 1e4).astype(np.float32)
        self.scale = np.concatenate([factors, factors], axis=1) if half != self.D else factors

    def quantize(self, positions, bits):
        if len(positions) == 0:
            return
        self.bits[positions] = bits
        if bits >= 16:
            return
        self.charged[positions] = True
        for tensor in (self.k, self.v):
            if tensor is None:
                continue
            for p in positions:
                for g in range(self.Hkv):
                    row = tensor[p, g]
                    scaled = tensor is self.k and self.scale is not None
                    if scaled:
                        row = (row / self.scale[g]).astype(np.float32)
                    out = np.empty_like(row)
                    for start in range(0, self.D, self.group):
                        out[start:start + self.group] = round_trip(row[start:start + self.group], bits)
                    if scaled:
                        out = (out * self.scale[g]).astype(np.float32)
                    tensor[p, g] = out

    def update(self, length, appended):
        a = self.args
        fresh = appended
        if self.sink_held < a.sink:
            n = min(a.sink - self.sink_held, fresh)
            self.quantize(list(range(self.sink_held, self.sink_held + n)), a.sink_bits)
            self.sink_held += n
            fresh -= n
        if a.window > 0:
            if fresh > 0:
                total = self.window_held + fresh
                out = total // a.window * a.window
                self.window_held = total % a.window
                if out > 0:
                    self.quantize(list(range(length - self.window_held - out, length - self.window_held)), self.kv_bits)
                    self.quantize(list(range(length - self.window_held, length)), a.window_bits)
                else:
                    self.quantize(list(range(length - fresh, length)), a.window_bits)
        elif fresh > 0:
            self.quantize(list(range(length - fresh, length)), self.kv_bits)
        rest = max(0, length - self.sink_held - self.window_held)
        memory = self.sink_held * a.sink_bits + self.window_held * a.window_bits + rest * self.kv_bits
        if memory > self.budget and length > self.sink_held + self.window_held and self.kv_bits // 2 >= 2:
            self.kv_bits //= 2
            self.quantize(list(range(self.sink_held, length - self.window_held)), self.kv_bits)

    def resident_bytes(self, length):
        groups = -(-self.D // self.group)
        per_head = (int(self.bits[:length].sum()) * 2 * self.D + 7) // 8 + int(self.charged[:length].sum()) * 2 * groups * 4
        return self.Hkv * per_head


def output_error(q, k_exact, v_exact, k_hat, v_hat, p, scale):
    Hq = q.shape[1]
    Hkv = k_exact.shape[1]
    group = Hq // Hkv
    errors = []
    for h in range(Hq):
        g = h // group
        qh = q[p, h].astype(np.float64)
        a = np.exp((k_exact[:p + 1, g] @ qh) * scale - ((k_exact[:p + 1, g] @ qh) * scale).max())
        a /= a.sum()
        logits = (k_hat[:p + 1, g].astype(np.float64) @ qh) * scale
        b = np.exp(logits - logits.max())
        b /= b.sum()
        o = a @ v_exact[:p + 1, g]
        o_hat = b @ v_hat[:p + 1, g].astype(np.float64)
        norm = np.linalg.norm(o)
        errors.append(np.linalg.norm(o_hat - o) / norm if norm > 0 else np.linalg.norm(o_hat))
    return float(np.mean(errors))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("trace")
    parser.add_argument("--budget", type=int, required=True)
    parser.add_argument("--sink", type=int, default=1)
    parser.add_argument("--sink-bits", type=int, default=16, choices=[16, 8, 4, 2])
    parser.add_argument("--window", type=int, default=128)
    parser.add_argument("--window-bits", type=int, default=16, choices=[16, 8, 4, 2])
    parser.add_argument("--init-bits", type=int, default=16, choices=[16, 8, 4, 2])
    parser.add_argument("--group", type=int, default=128)
    parser.add_argument("--smooth-alpha", type=float, default=0.5)
    parser.add_argument("--layer-bits", help="one bit width per model layer")
    parser.add_argument("--layers", help="comma-separated layer indices (default: all with k)")
    parser.add_argument("--steps", type=int, help="replay only the first N decode steps")
    args = parser.parse_args()
    with h5py.File(args.trace, "r") as f:
        P = int(f.attrs["prompt_len"])
        D = int(f.attrs["head_dim"])
        scale = float(f.attrs["softmax_scale"]) if "softmax_scale" in f.attrs else 1 / np.sqrt(D)
        num_layers = int(f.attrs["num_layers"])
        weights = [1.0] * num_layers
        if args.layer_bits:
            bits = [float(x) for x in args.layer_bits.split(",")]
            weights = [b / (sum(bits) / len(bits)) for b in bits]
        for index, group in qk_layers(f, args.layers):
            q = group["q"][...].astype(np.float64)
            k = group["k"][...].astype(np.float32)
            v = group["v"][...].astype(np.float32) if "v" in group else None
            T = k.shape[0]
            layer = Layer(k, v, args, weights[index])
            layer.smooth(P)
            layer.update(P, P)
            last = T if args.steps is None else min(T, P + args.steps)
            for p in range(P, last):
                error = None
                if v is not None:
                    error = output_error(q, k.astype(np.float64), v.astype(np.float64), layer.k, layer.v, p, scale)
                layer.update(p + 1, 1)
                print(json.dumps({"layer": index, "step": p - P, "position": p, "kv_bits": layer.kv_bits,
                                  "resident_bytes": layer.resident_bytes(p + 1), "output_error": error}))


if __name__ == "__main__":
    main()
