"""Closed-loop generation (tools/end_to_end/closed_loop.py + thinkv-sim serve-policy) on the tiny
random Llama of the end-to-end tests.

The central check: greedy closed-loop generation, where the simulator's policy decides at every
step from what the model computes with its own cache, chooses token for token what the
fixed-point method (--free-running) settles on: the full cache's tokens up to the departure
step, and the same token at the departure.
"""

import csv
import re
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

TOOLS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOOLS))
from end_to_end import closed_loop, forward, free_running, problems, replay  # noqa: E402
from end_to_end import closed_loop_cli  # noqa: E402
from end_to_end.cli import read_trace  # noqa: E402
from end_to_end.timeline import HeadTimeline  # noqa: E402
from test_end_to_end import NEW_TOKENS, greedy_trace, thinkv_sim, tiny, trace_ids, uniform_plans  # noqa: E402,F401


@pytest.mark.parametrize("policy,args", [
    ("full", []),
    ("streaming", ["--budget", "70"]),
    ("h2o", ["--budget", "67"]),
    ("h2o", ["--budget", "74"]),   # two rounds of the fixed point: its own decisions differ from teacher forcing
    ("snapkv", ["--budget", "60"]),
    ("kivi", ["--group", "8", "--residual", "8", "--k-bits", "4", "--v-bits", "4"]),
    ("kivi", ["--group", "8", "--residual", "8"]),
    # Thought types from the sparsity over its own cache, a refresh reading the steps before it.
    ("thinkv", ["--budget", "90", "--theta1", "0.4", "--theta2", "0.55", "--type-lag", "1", "--tau", "4",
                "--recent", "8", "--schedule", "8,4,2", "--r-bits", "8", "--e-bits", "8", "--t-bits", "8"]),
    ("thinkv-tbe", ["--budget", "85", "--theta1", "0.4", "--theta2", "0.55", "--type-lag", "1", "--tau", "4",
                    "--recent", "8", "--schedule", "8,4,2"]),
    ("thinkv", ["--budget", "80", "--theta1", "0.4", "--theta2", "0.55", "--type-lag", "1", "--tau", "4",
                "--recent", "8", "--schedule", "8,4,2"]),
    # Keys per token with SmoothAttention's channel scales; widths halved and re-quantized.
    ("pmkvq", ["--budget", "12", "--window", "8", "--group", "8"]),
])
def test_closed_loop_greedy_equals_the_fixed_point(tiny, greedy_trace, tmp_path, policy, args):
    folder, _, model = tiny
    binary = thinkv_sim()
    ids, P = trace_ids(greedy_trace)
    T, steps = len(ids), len(ids) - P
    full = forward.next_token_log_probs(model, ids, uniform_plans(model, HeadTimeline([-1] * T, []), T, P, steps), P, steps)
    greedy = full.argmax(dim=-1).cpu().numpy()
    header = read_trace(str(greedy_trace))
    budget = int(args[1]) if args[:1] == ["--budget"] else None
    extra = [f"{a}={b}" for a, b in zip(args[::2], args[1::2]) if a != "--budget"]
    timelines, run = replay.replay_with_timeline(binary, str(greedy_trace), policy, budget, str(tmp_path / "t.jsonl"),
                                                 extra, steps)
    label = run["label"]
    if policy == "full":
        departure, exact, fixed = steps, True, greedy[:steps].tolist()
    else:
        departure, _, exact, fixed = free_running.free_running_divergence(
            model, str(greedy_trace), header, binary, policy, label, budget, timelines[label], greedy, steps, extra,
            str(tmp_path), 8)
    assert exact
    groups = [g for t in timelines[label].heads.values() for g in t.groups]
    if policy.startswith("thinkv"):
        # Not vacuous: the classifier changes types along the run, and thoughts are cut at transitions.
        assert run["summary"]["policy_counters"]["transitions"] > 0, run["summary"]["policy_counters"]
    if policy == "pmkvq":
        # Keys per token with SmoothAttention's scales, and positions re-quantized at a lower width.
        assert any(g["tensor"] == "key_per_token" and g.get("channel_scale") for g in groups)
        seen, twice = set(), False
        for g in groups:
            if g["tensor"] == "key_per_token":
                twice |= bool(seen & set(g["positions"]))
                seen |= set(g["positions"])
        assert twice
    result = closed_loop.generate(model, binary, policy, args, ids[:P].tolist(), steps + 1, closed_loop.greedy)
    tokens = result["tokens"]
    assert tokens[0] == ids[P]                         # the first token comes from the exact prefill
    assert tokens[1:1 + len(fixed)] == fixed, (departure, tokens[1:1 + len(fixed)], fixed)
    if policy == "full":
        assert tokens == ids[P:].tolist() + [int(greedy[-1])]
    assert result["summary"]["steps"] == steps
    assert 0 < result["summary"]["kv_percent_mean"] <= 100.0001


def test_closed_loop_some_policy_departs(tiny, greedy_trace, tmp_path):
    """The equality above is not vacuous: at budget 6 H2O's greedy tokens leave the full cache's."""
    _, _, model = tiny
    ids, P = trace_ids(greedy_trace)
    result = closed_loop.generate(model, thinkv_sim(), "h2o", ["--budget", "6"], ids[:P].tolist(), NEW_TOKENS,
                                  closed_loop.greedy)
    assert result["tokens"] != ids[P:P + NEW_TOKENS].tolist()
    assert result["summary"]["kv_percent_mean"] < 60


def serve(args, data, timeout=20):
    return subprocess.run([thinkv_sim(), "serve-policy", *args], input=data, capture_output=True, timeout=timeout)


def header(L=2, Hq=4, Hkv=2, D=8, P=3, T=10, scale=0.0):
    return b"TKVSERV1" + struct.pack("<6i", L, Hq, Hkv, D, P, T) + struct.pack("<f", scale)


def test_closed_loop_serve_policy_refuses_bad_frames():
    cases = [
        (b"NOTMAGIC" + bytes(28), "TKVSERV1"),
        (header()[:20], "input ended inside the header"),
        (header(Hq=3), "multiple of kv heads"),
        (header(P=10), "prompt length"),
        (header(L=4096, T=1 << 20, Hq=1024, Hkv=1024, D=1024), "GiB"),
        (header() + struct.pack("<i", 9), "unknown frame kind 9"),
        (header() + struct.pack("<2i", 1, 1), "prefill of layer 1 where layer 0 was due"),
        (header() + struct.pack("<2i", 1, 0) + bytes(17), "input ended inside layer 0's prefill q"),
        (header() + struct.pack("<2i", 1, 0) + np.full(3 * 4 * 8 + 2 * 3 * 2 * 8, np.nan, "<f4").tobytes(), "not finite"),
        (header() + struct.pack("<3i", 2, 0, 0), "before every layer was prefilled"),
        (header(), "input ended before the end frame"),
    ]
    for data, message in cases:
        result = serve(["--policy", "h2o", "--budget", "4"], data)
        err = result.stderr.decode().strip().splitlines()
        assert result.returncode == 1, (message, result.returncode, err)
        assert len(err) == 1 and err[0].startswith("thinkv-sim serve-policy: ") and message in err[0], (message, err)
    result = serve(["--policy", "nosuch"], b"")
    assert result.returncode == 2


def test_closed_loop_serve_policy_steps_out_of_order():
    rng = np.random.default_rng(0)
    prefill = b"".join(struct.pack("<2i", 1, l) + rng.standard_normal(3 * 4 * 8 + 2 * 3 * 2 * 8).astype("<f4").tobytes()
                       for l in range(2))
    step = lambda l, t: struct.pack("<3i", 2, l, t) + rng.standard_normal(4 * 8 + 2 * 2 * 8).astype("<f4").tobytes()  # noqa: E731
    result = serve(["--policy", "h2o", "--budget", "4"], header() + prefill + step(0, 1))
    assert result.returncode == 1 and b"step 1 arrived where step 0 was due" in result.stderr
    ok = header() + prefill + b"".join(step(l, t) for t in range(7) for l in range(2))
    result = serve(["--policy", "h2o", "--budget", "4"], ok + step(0, 7))
    assert result.returncode == 1 and b"beyond the header's 10 positions" in result.stderr
    result = serve(["--policy", "h2o", "--budget", "4"], ok + struct.pack("<i", 3))
    assert result.returncode == 0, result.stderr
    assert b'"steps":7' in result.stdout


def test_closed_loop_child_dies_with_its_parent(tmp_path):
    """A parent killed with SIGKILL takes its serve-policy child along (end of input, and
    PR_SET_PDEATHSIG on Linux): no orphan is left waiting."""
    code = (f"import sys; sys.path.insert(0, {str(TOOLS)!r})\n"
            "from end_to_end.serve import PolicyServer\n"
            f"s = PolicyServer({thinkv_sim()!r}, 'h2o', ['--budget', '4'], (2, 4, 2, 8), 3, 10, None)\n"
            "print(s.proc.pid, flush=True)\n"
            "import time; time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive(pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                return "\nState:\tZ" not in f.read()
        except FileNotFoundError:
            return False
    deadline = time.time() + 10
    while alive(child) and time.time() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_closed_loop_problems_are_seeded_and_answers_extracted():
    a, b = problems.generate(20, seed=3), problems.generate(20, seed=3)
    assert [p.text for p in a] == [p.text for p in b] and [p.answer for p in a] == [p.answer for p in b]
    assert [p.text for p in a] != [p.text for p in problems.generate(20, seed=4)]
    assert len({p.text for p in a}) == 20
    for p in a:
        assert isinstance(p.answer, int) and p.answer >= 0
    assert problems.extract_answer("so 3 + 4 = 7.\nAnswer: 7") == 7
    assert problems.extract_answer("The answer is **1,250** dollars.") == 1250
    assert problems.extract_answer("first 12, then 30; the total is $42.") == 42
    assert problems.extract_answer("Answer: 5. Wait, 6 is wrong") == 5
    assert problems.extract_answer("no numbers here") is None
    assert closed_loop.ends_in_cycle([1, 2, 3] + [7, 8] * 6)
    assert not closed_loop.ends_in_cycle(list(range(40)))
    assert not closed_loop.ends_in_cycle([1, 2, 3, 4, 5, 6, 9, 9])   # a short run is not a loop
    easy = problems.generate(30, seed=0, level="easy")
    assert [p.text for p in easy] == [p.text for p in problems.generate(30, seed=0, level="easy")]
    assert len({p.text for p in easy}) == 30 and all(0 <= p.answer <= 18 for p in easy)
    for p in easy:   # one sum or difference of one-digit numbers, as written in the text
        a, b = [int(x) for x in re.findall(r"\d+", p.text)]
        assert p.answer in (a + b, a - b)
        assert p.prompt().startswith(problems.EASY_EXAMPLES) and p.prompt().endswith(problems.EASY_INSTRUCTION)
    with pytest.raises(ValueError):
        problems.generate(3, level="hard")
    # Where a generation may stop: a finished answer line, not an unfinished one.
    assert problems.answer_given("3 + 4 = 7\nAnswer: 7\n")
    assert problems.answer_given("**Answer:** 12 apples\n\nExample")
    assert not problems.answer_given("3 + 4 = 7\nAnswer: 7")      # the number may go on
    assert not problems.answer_given("Answer:\n")


def test_closed_loop_cli_tiny_run(tiny, tmp_path):
    folder, _, _ = tiny
    out, generations = tmp_path / "cl.csv", tmp_path / "gen.csv"
    code = closed_loop_cli.main(["--model", str(folder), "--policy", "full,h2o,kivi", "--budget", "10", "--problems", "2",
                                 "--samples", "2", "--max-new-tokens", "12", "--ignore-eos", "-o", str(out),
                                 "--generations-csv", str(generations), "--thinkv-sim", thinkv_sim(), "--threads", "1",
                                 "--replay-arg=--group=8", "--replay-arg=--residual=8", "--progress", "plain"])
    assert code == 0
    rows = {r["policy"]: r for r in csv.DictReader(open(out))}
    assert set(rows) == {"full", "h2o", "kivi"}
    full = rows["full"]
    assert float(full["length_ratio_mean"]) == 1 and float(full["next_token_kl_mean"]) < 1e-6
    assert full["divergence_step_mean"] == "" and full["diverged_share"] == "0"
    assert float(full["loop_rate"]) == 1  # --ignore-eos: every generation hits the limit
    assert rows["h2o"]["budget"] == "10" and float(rows["h2o"]["next_token_kl_mean"]) > 0
    assert int(rows["h2o"]["generations"]) == 2 * 3
    gens = list(csv.DictReader(open(generations)))
    assert len(gens) == 3 * 2 * 3
    assert {g["sample"] for g in gens} == {"greedy", "0", "1"}


def test_closed_loop_cli_refuses_thinkv_without_thresholds(tiny, tmp_path, capsys):
    """ThinKV online needs its thresholds in advance (no trace to calibrate on); refused before
    the model loads, with the options that give them."""
    folder, _, _ = tiny
    code = closed_loop_cli.main(["--model", str(folder), "--policy", "h2o,thinkv", "--budget", "10", "--problems", "1",
                                 "-o", str(tmp_path / "cl.csv"), "--thinkv-sim", thinkv_sim(), "--progress", "none"])
    assert code == 1
    err = capsys.readouterr().err
    assert "thinkv needs its classifier's thresholds in advance" in err and "--replay-arg=--calibration=FILE" in err
    assert not (tmp_path / "cl.csv").exists()


def test_closed_loop_table_merges_runs_and_ranks(tmp_path):
    """closed-loop-table: one full-cache row for runs split over processes (they must agree), rows
    ordered by level, and Spearman correlations of hand-checkable columns."""
    from end_to_end import closed_loop_table

    columns = closed_loop_cli.COLUMNS

    def row(policy, level, tf, kl, loop):
        r = {c: "" for c in columns}
        r.update(policy=policy, kv_target=level, budget="8", kv_percent="20", greedy_accuracy="0.5",
                 greedy_accuracy_ci_low="0.1", greedy_accuracy_ci_high="0.9", pass1="0.25", pass1_ci_low="0",
                 pass1_ci_high="0.5", length_ratio_mean="1", length_ratio_p10="1", length_ratio_p90="1",
                 loop_rate=loop, loop_rate_ci_low="0", loop_rate_ci_high="1", diverged_share="1",
                 divergence_step_median="3", next_token_kl_mean=kl, tf_next_token_kl_mean=tf,
                 tf_attention_kl_mean=tf, tf_output_error_mean=tf, generations="6")
        return r

    def write(path, rows):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)

    full = row("full", "", "", "0", "0.5")
    write(tmp_path / "a.csv", [full, row("h2o", "50", "0.1", "0.2", "0.1"), row("rkv", "10", "0.9", "0.8", "0.3")])
    write(tmp_path / "b.csv", [full, row("snapkv", "25", "0.5", "0.4", "0.2")])
    rows = closed_loop_table.read_rows([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")])
    assert [r["policy"] for r in rows] == ["full", "rkv", "snapkv", "h2o"]          # full, then by level
    text = closed_loop_table.markdown(rows)
    assert text.count("| full |") == 1 and "| 10 | rkv | 8 |" in text
    found = closed_loop_cli.correlations(rows)
    assert found[("tf_next_token_kl_mean", "next_token_kl_mean")] == (1.0, 3)       # same order: rho = 1
    assert found[("tf_attention_kl_mean", "loop_rate")] == (1.0, 3)
    assert found[("tf_output_error_mean", "greedy_accuracy")][0] != found[("tf_output_error_mean", "greedy_accuracy")][0]
    other = dict(full, loop_rate="0.75")
    write(tmp_path / "c.csv", [other])
    with pytest.raises(closed_loop_table.TableError, match="full-cache row differs"):
        closed_loop_table.read_rows([str(tmp_path / "a.csv"), str(tmp_path / "c.csv")])
