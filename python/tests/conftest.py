import os
import pathlib

import pytest

# Figures are drawn off-screen: the tests run without a display.
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session", autouse=True)
def thinkv_binary():
    """Uses $THINKV_SIM, else the repository's release or debug build."""
    if not os.environ.get("THINKV_SIM"):
        for candidate in (ROOT / ".build/release/thinkv-sim", ROOT / ".build/debug/thinkv-sim"):
            if candidate.exists():
                os.environ["THINKV_SIM"] = str(candidate)
                break
        else:
            pytest.fail("no thinkv-sim binary: run `make build` or set THINKV_SIM")


@pytest.fixture
def sample():
    return str(ROOT / "traces/sample-synthetic.h5")


@pytest.fixture
def root():
    return ROOT
