"""tools/bench_torch.py's peers keep the kept sets of thinkv-sim's H2O and reach its mean metrics.

A small synthetic trace (thinkv-sim synth) whose cache fills in the middle of a chunk and then
evicts for several chunks; each peer's eviction steps and mean mass recall, KL and output error
are compared with `thinkv-sim replay --cache-timeline --json` on the same trace.
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="bench_torch.py's peers need PyTorch")
pytest.importorskip("h5py", reason="bench_torch.py reads traces with h5py")

TOOLS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOOLS))

import bench_torch  # noqa: E402
from binaries import required_thinkv_sim  # noqa: E402

BUDGET = 96   # recent window 48
CHUNK = 16    # the cache (prompt 40) fills at step 56, inside the fourth chunk


@pytest.fixture(scope="module")
def binary():
    return required_thinkv_sim()


@pytest.fixture(scope="module")
def trace(binary, tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "tiny.h5"
    subprocess.run([binary, "synth", "-o", str(path), "--tokens", "300", "--prompt", "40", "--layers", "1",
                    "--q-heads", "6", "--kv-heads", "2", "--head-dim", "32", "--seed", "3", "--threads", "1"],
                   check=True, capture_output=True)
    return str(path)


@pytest.fixture(scope="module")
def simulated(binary, trace):
    return bench_torch.thinkv_reference(binary, trace, 0, BUDGET)


def run_peer(name, trace):
    P, T, D, scale, q, k, v = bench_torch.load_layer(trace, 0)
    q, k, v = (torch.from_numpy(x) for x in (q, k, v))
    with torch.inference_mode():
        return bench_torch.REPLAYS[name](torch, np, q, k, v, P, scale, CHUNK, BUDGET, BUDGET // 2)


@pytest.mark.parametrize("name", bench_torch.PEERS)
def test_peer_keeps_thinkv_sims_sets_and_metrics(name, trace, simulated):
    dropped, means = run_peer(name, trace)
    sim_dropped, sim_means = simulated
    assert sorted(sim_dropped) == [0, 1]
    for head in (0, 1):
        np.testing.assert_array_equal(dropped[head], np.asarray(sim_dropped[head]))
    # Once full, every step but the last evicts one position per kv head.
    assert (dropped >= 0).sum() == 2 * (300 - 40 - (BUDGET - 40) - 1)
    np.testing.assert_allclose(means, sim_means, rtol=1e-6)
    assert 0 < means[0] < 1 and means[1] > 0 and means[2] > 0


def test_check_fails_when_one_eviction_moves(trace, simulated, capsys):
    dropped, means = run_peer("strong", trace)
    sim_dropped, sim_means = simulated
    assert bench_torch.check(np, "strong", dropped, means, sim_dropped, sim_means, 1e-6)
    moved = dropped.copy()
    position = int(np.flatnonzero(moved[1] >= 0)[0])
    moved[1, position] += 1
    assert not bench_torch.check(np, "strong", moved, means, sim_dropped, sim_means, 1e-6)
    assert not bench_torch.check(np, "strong", dropped, [means[0] * (1 + 1e-5), *means[1:]],
                                 sim_dropped, sim_means, 1e-6)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == ["PASS", "FAIL", "FAIL"]
    assert "1 positions evicted at other steps" in lines[1]


def test_script_prints_pass_and_exits_zero(binary, trace):
    run = subprocess.run([sys.executable, str(TOOLS / "bench_torch.py"), trace, "--budget", str(BUDGET),
                          "--chunk", str(CHUNK), "--peer", "strong,simple", "--no-timing", "--threads", "1",
                          "--thinkv", binary], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert [line.split(":")[0] for line in run.stdout.splitlines()[1:]] == ["check strong", "check simple"]
    assert all(": PASS:" in line for line in run.stdout.splitlines()[1:])


def test_script_fails_against_another_recent_window(binary, trace, tmp_path):
    # A peer that evicts elsewhere than thinkv-sim must fail the check: give thinkv-sim a wrapper
    # whose H2O keeps a shorter recent window.
    wrapper = tmp_path / "thinkv-sim"
    wrapper.write_text(f'#!/bin/sh\nfor a in "$@"; do shift; [ "$a" = h2o ] && a=h2o:recent={BUDGET // 2 - 8}; '
                       f'set -- "$@" "$a"; done\nexec "{binary}" "$@"\n')
    wrapper.chmod(0o755)
    run = subprocess.run([sys.executable, str(TOOLS / "bench_torch.py"), trace, "--budget", str(BUDGET),
                          "--chunk", str(CHUNK), "--no-timing", "--threads", "1", "--thinkv", str(wrapper)],
                         capture_output=True, text=True)
    assert run.returncode == 1, run.stdout + run.stderr
    assert ": FAIL:" in run.stdout
