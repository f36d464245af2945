"""The thinkv-sim binary the tools' tests run."""

import os
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def thinkv_sim():
    """$THINKV_SIM, else this checkout's newest build (a stale release build may lack what the
    debug build just gained), else thinkv-sim on PATH; None without any."""
    if os.environ.get("THINKV_SIM"):
        return os.environ["THINKV_SIM"]
    builds = [p for p in (REPO / ".build/release/thinkv-sim", REPO / ".build/debug/thinkv-sim") if os.access(p, os.X_OK)]
    if builds:
        return str(max(builds, key=lambda p: p.stat().st_mtime))
    return shutil.which("thinkv-sim")


def required_thinkv_sim():
    """`thinkv_sim()`, or the calling test skipped with the reason when there is none."""
    import pytest

    binary = thinkv_sim()
    if binary is None:
        pytest.skip("no thinkv-sim binary (make build, or set THINKV_SIM)")
    return binary
