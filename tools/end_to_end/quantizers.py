"""The cache quantizers of thinkv-sim, in numpy, bit for bit (docs/quantization.md).

Every function quantizes float32 groups along the last axis and returns the dequantized copy,
rounding each float32 operation as the Swift code does (no fused multiply-add, sums in the same
order).
tools/tests/test_end_to_end.py checks them against `thinkv-sim quantize` on random groups.
"""

import numpy as np

F32 = np.float32


def _minifloat(x, mantissa_bits, min_normal_exponent, max_finite):
    """Round to the nearest value of a small float format, ties to even, saturating."""
    x = np.asarray(x, dtype=F32)
    mag = np.abs(x)
    out = np.zeros_like(x)
    nz = mag > 0
    m = mag[nz]
    # Swift's Float.exponent is floor(log2|x|): frexp gives |x| = f * 2^e with f in [0.5, 1).
    _, e = np.frexp(m)
    binade = np.maximum(e.astype(np.int64) - 1, min_normal_exponent)
    step = np.ldexp(F32(1), (binade - mantissa_bits).astype(np.int32)).astype(F32)
    rounded = np.minimum(np.rint(m / step).astype(F32) * step, F32(max_finite)).astype(F32)
    out[nz] = np.where(x[nz] < 0, -rounded, rounded)
    out[~nz] = x[~nz]  # keeps the sign of zero
    return out


def e4m3(x):
    return _minifloat(x, 3, -6, 448.0)


def _e4m3_spacing(mag):
    """Spacing of E4M3 values in the binade of each magnitude (the subnormal step below 2^-6)."""
    mag = np.asarray(mag, dtype=F32)
    _, e = np.frexp(np.where(mag > 0, mag, F32(1)))
    binade = np.where(mag > 0, np.maximum(e.astype(np.int64) - 1, -6), -6)
    return np.ldexp(F32(1), (binade - 3).astype(np.int32)).astype(F32)


def e4m3_up(x):
    """The smallest E4M3 value >= x for x >= 0 (0 stays 0), saturating at 448."""
    x = np.asarray(x, dtype=F32)
    nearest = e4m3(x)
    up = np.minimum(nearest + _e4m3_spacing(nearest), F32(448.0)).astype(F32)
    return np.where(x >= F32(448.0), F32(448.0), np.where(nearest < x, up, nearest)).astype(F32)


def e2m1(x):
    return _minifloat(x, 1, 0, 6.0)


def integer(x, bits):
    """Asymmetric min-max integers (KIVI): code = rint(clamp((x - min) / s, 0, 2^b - 1))."""
    x = np.asarray(x, dtype=F32)
    lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    levels = F32((1 << bits) - 1)
    scale = ((hi - lo) / levels).astype(F32)
    exact = ~(scale > 0)  # a constant group comes back as its minimum
    with np.errstate(divide="ignore", invalid="ignore"):
        code = np.rint(np.minimum(np.maximum((x - lo) / np.where(exact, F32(1), scale), F32(0)), levels))
    return np.where(exact, lo, code * scale + lo).astype(F32)


def fp8(x):
    """E4M3 elements with one E4M3 scale per group: amax / 448 rounded up to an E4M3 value."""
    x = np.asarray(x, dtype=F32)
    amax = np.abs(x).max(axis=-1, keepdims=True)
    scale = e4m3_up((amax / F32(448.0)).astype(F32))
    zero = ~(amax > 0)
    safe = np.where(zero, F32(1), scale)
    return np.where(zero, x, e4m3(x / safe) * safe).astype(F32)


def nvfp4(x):
    """E2M1 elements, one E4M3 scale per block of 16."""
    x = np.asarray(x, dtype=F32)
    out = np.empty_like(x)
    for start in range(0, x.shape[-1], 16):
        block = x[..., start:start + 16]
        scale = e4m3((np.abs(block).max(axis=-1, keepdims=True) / F32(6.0)).astype(F32))
        zero = ~(scale > 0)
        safe = np.where(zero, F32(1), scale)
        out[..., start:start + 16] = np.where(zero, F32(0), e2m1(block / safe) * safe)
    return out


def ternary(x):
    """{-s, 0, +s} with s = mean |x| (summed in float64 in order) rounded to E4M3, at least 2^-9."""
    x = np.asarray(x, dtype=F32)
    total = np.cumsum(np.abs(x).astype(np.float64), axis=-1)[..., -1:]
    mean = (total / x.shape[-1]).astype(F32)
    zero = ~(mean > 0)
    scale = np.maximum(e4m3(mean), F32(2.0 ** -9)).astype(F32)
    safe = np.where(zero, F32(1), scale)
    code = np.minimum(np.maximum(np.rint(x / safe), F32(-1)), F32(1))
    return np.where(zero, x, code * safe).astype(F32)


def round_trip(x, name):
    """Groups along the last axis of `x` through the quantizer `name` (int1..int8, fp8, nvfp4,
    ternary): a vector is one group, a [n, g] matrix n groups of g."""
    if name.startswith("int") and name[3:].isdigit() and 1 <= int(name[3:]) <= 8:
        return integer(x, int(name[3:]))
    if name == "fp8":
        return fp8(x)
    if name == "nvfp4":
        return nvfp4(x)
    if name == "ternary":
        return ternary(x)
    raise ValueError(f"unknown quantizer '{name}'")


def round_trip_groups(x, name, group):
    """Consecutive groups of `group` values (the last may be shorter), as `thinkv-sim quantize`."""
    x = np.asarray(x, dtype=F32).reshape(-1)
    whole = len(x) // group * group
    out = np.empty_like(x)
    if whole:
        out[:whole] = round_trip(x[:whole].reshape(-1, group), name).reshape(-1)
    if whole < len(x):
        out[whole:] = round_trip(x[whole:], name)
    return out


def round_rows(rows, name, channel_group, channel_scale=None):
    """rows [n, D] float32, each row's channels in runs of `channel_group` (the last may be
    shorter): values, and PM-KVQ's keys per token. With `channel_scale` ([D]), divided by it
    before rounding and multiplied by it after, one float32 operation each, as the simulator."""
    out = np.array(rows, dtype=F32, copy=True)
    if channel_scale is not None:
        scale = np.asarray(channel_scale, dtype=F32)[None, :]
        out = out / scale
    width = int(channel_group)
    for start in range(0, out.shape[1], width):
        out[:, start:start + width] = round_trip(out[:, start:start + width], name)
    if channel_scale is not None:
        out = out * scale
    return out.astype(F32, copy=False)


def apply_group(keys, values, group):
    """Rounds `group` (a timeline or serve-policy group dict) into `keys` and `values` ([T, D]
    float32 numpy, the current copies, changed in place; the one a group does not touch may be
    None): keys per channel, values and keys per token per position."""
    positions = np.asarray(group["positions"], dtype=np.int64)
    name, tensor = group["quantizer"], group["tensor"]
    if tensor == "key":
        keys[positions, :] = round_trip(keys[positions, :].T, name).T
    elif tensor == "value":
        values[positions, :] = round_rows(values[positions, :], name, group["channel_group"])
    elif tensor == "key_per_token":
        keys[positions, :] = round_rows(keys[positions, :], name, group["channel_group"], group.get("channel_scale"))
    else:
        raise ValueError(f"unknown group tensor {tensor!r}")
