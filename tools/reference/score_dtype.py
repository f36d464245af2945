"""Rounding to a model dtype, as the reference scripts emulate `--score-dtype`."""

import numpy as np


def round_to(x, dtype):
    """x rounded to `dtype` (float16 or bfloat16, via float32, bfloat16 to nearest even) and
    widened to float64; x itself for any other dtype (None, float32)."""
    x = np.asarray(x, dtype=np.float64)
    if dtype == "float16":
        return x.astype(np.float32).astype(np.float16).astype(np.float64)
    if dtype == "bfloat16":
        bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.astype(np.uint32).view(np.float32).astype(np.float64)
    return x
