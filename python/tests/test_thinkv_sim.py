import json
import subprocess

import numpy as np
import pytest

import thinkv_sim as tk


def test_replay_returns_the_cli_summary_one_row_per_run(sample):
    frame = tk.replay(sample, policies=["full", "h2o"], budget=64, steps=40)
    assert list(frame["policy"]) == ["full", "h2o"]
    assert frame.loc[0, "attention_kl_mean"] == 0
    assert frame.loc[1, "param_budget"] == 64, "parameters are typed numbers"
    # The same numbers as the command line's own JSON: nothing is recomputed in Python.
    arguments = ["replay", sample, "--policy", "full,h2o", "--budget", "64", "--steps", "40", "--json"]
    report = json.loads(tk.run(arguments).stdout)
    h2o = report["runs"][1]["summary"]
    assert frame.loc[1, "attention_kl_mean"] == h2o["attention_kl"]["mean"]
    assert frame.loc[1, "kv_bytes_mean"] == h2o["memory"]["mean_bytes"]
    assert frame.loc[1, "percent_of_full_mean"] == h2o["memory"]["mean_percent_of_full"]
    assert frame.loc[1, "mass_recall_p5"] == h2o["mass_recall"]["p5"]


def test_keyword_parameters_become_options(sample):
    frame = tk.replay(sample, policies="thinkv", budget=64, steps=20, thoughts="labels", r_bits=8)
    assert frame.loc[0, "param_r_bits"] == 8
    assert frame.loc[0, "param_thoughts"] == "labels"
    assert frame.loc[0, "thought_breakdown_by_thought_reasoning_mean_tokens"] > 0


def test_replay_steps_is_the_per_step_csv(sample):
    steps = tk.replay_steps(sample, policies=["full", "h2o"], budget=64, steps=10, layers=[-1])
    assert len(steps) == 2 * 1 * 10
    assert set(steps["layer"]) == {3}, "-1 is the last recorded layer"
    assert (steps[steps.policy == "full"]["attention_kl"] == 0).all()
    assert set(steps[steps.policy == "h2o"]["label"]) == {"h2o(budget=64)"}
    # Parameters have columns of their own: no label parsing.
    assert set(steps[steps.policy == "h2o"]["param_budget"]) == {64}


def test_sweep_reads_its_results(tmp_path, sample):
    config = tmp_path / "sweep.json"
    config.write_text(json.dumps({"traces": [sample], "policies": ["h2o"], "parameters": {"budget": [32, 64]}, "steps": 10,
                                  "output": str(tmp_path / "configured.csv")}))
    table = tk.sweep(str(config), output=str(tmp_path / "out.csv"))
    assert sorted(table["param_budget"]) == [32, 64]
    assert (tmp_path / "out.csv").exists()


def test_read_trace_gives_numpy_arrays_of_the_format_shapes(sample):
    trace = tk.read_trace(sample, layers=[1, -1])
    T, Hq, Hkv, D = trace.num_tokens, trace.attrs["num_q_heads"], trace.attrs["num_kv_heads"], trace.attrs["head_dim"]
    assert sorted(trace.layers) == [1, 3]
    assert trace.layers[1]["q"].shape == (T, Hq, D)
    assert trace.layers[3]["k"].shape == (T, Hkv, D)
    assert trace.token_ids.shape == (T,)
    assert np.all(trace.thought[: trace.prompt_len] == -1)
    with pytest.raises(ValueError, match="not recorded"):
        tk.read_trace(sample, layers=[7])


def test_a_refused_request_raises_a_usage_error_with_the_suggestion(sample):
    with pytest.raises(tk.UsageError) as error:
        tk.replay(sample, policies=["h20"])
    assert error.value.status == 2
    assert error.value.suggestion == "h2o"
    assert "h2o" in str(error.value), "the message suggests the policy meant"
