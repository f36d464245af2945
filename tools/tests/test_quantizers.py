"""tools/end_to_end/quantizers.py against `thinkv-sim quantize`, bit for bit.

Needs numpy and a thinkv-sim binary only (no torch), so it runs wherever the simulator builds:
`python3 -m pytest tools/tests/test_quantizers.py`.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TOOLS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOOLS))
from end_to_end import quantizers  # noqa: E402
from binaries import thinkv_sim  # noqa: E402




def test_end_to_end_quantizers_match_thinkv_sim_bit_for_bit(tmp_path):
    binary = thinkv_sim()
    if binary is None:
        pytest.skip("no thinkv-sim binary (make build, or set THINKV_SIM)")
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(6000) * rng.choice([1e-4, 0.02, 1.0, 40.0], 6000)).astype(np.float32)
    x[:32] = 2.5          # a constant group
    x[32:64] = 0.0        # an all-zero group
    x[64:80] = 5e3        # saturates E4M3 / E2M1 ranges
    x[80:96] = -1e-9      # below every format's smallest value: the scales' zero guards
    x[96:112] = 1.0       # amax 1: an FP8 scale rounded up across the subnormal step
    source = tmp_path / "x.f32"
    x.astype("<f4").tofile(source)
    for name in ["int1", "int2", "int3", "int4", "int8", "fp8", "nvfp4", "ternary"]:
        for group in (16, 32, 5):
            out = tmp_path / "y.f32"
            subprocess.run([binary, "quantize", str(source), "--quantizer", name, "--group", str(group), "-o", str(out)],
                           check=True)
            swift = np.fromfile(out, dtype="<f4")
            python = quantizers.round_trip_groups(x, name, group)
            assert np.isfinite(python).all(), (name, group)
            assert swift.view(np.uint32).tolist() == python.view(np.uint32).tolist(), (name, group)


def test_e4m3_round_up_is_the_smallest_value_not_below():
    # Every non-negative E4M3 value: subnormals k·2^-9, normals (1 + m/8)·2^e up to 448.
    finite = [k * 2.0 ** -9 for k in range(8)] + [(1 + m / 8) * 2.0 ** e for e in range(-6, 9) for m in range(8)]
    values = np.array(sorted(v for v in finite if v <= 448), dtype=np.float32)
    assert quantizers.e4m3(values).tolist() == values.tolist()
    x = np.abs(np.random.default_rng(3).standard_normal(5000) * np.float32(20)).astype(np.float32)
    x = np.concatenate([x, values, np.float32([1e-30, 447.9, 1e6])])
    up = quantizers.e4m3_up(x)
    expected = values[np.minimum(np.searchsorted(values, x, side="left"), len(values) - 1)]
    assert up.tolist() == expected.tolist()
