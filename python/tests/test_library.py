"""The package as a library: one column scheme across functions, policies(), typed errors,
progress while the binary runs, per-policy parameters, sweeps from dicts and without 'output'."""

import importlib
import json
import pathlib
import re
import time

import pandas as pd
import pytest

import thinkv_sim as tk
from thinkv_sim import columns, progress as progress_module, runner
from thinkv_sim.replay import _arguments

# The module, not the function `tk.policies` that shadows it as an attribute of the package.
policy_module = importlib.import_module("thinkv_sim.policies")

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")


# MARK: one column scheme


def test_replay_sweep_and_steps_share_one_column_scheme(tmp_path, sample):
    runs = tk.replay(sample, ["full", "h2o"], budget=32, steps=12, layers=[1])
    table = tk.sweep({"traces": [sample], "policies": ["full", "h2o"], "parameters": {"budget": [32]}, "steps": 12,
                      "layers": [1]})
    steps = tk.replay_steps(sample, ["full", "h2o"], budget=32, steps=12, layers=[1])
    for frame in (runs, table, steps):
        bad = [c for c in frame.columns if not SNAKE.match(c)]
        assert bad == [], f"not snake_case: {bad}"
        assert set(frame["policy"]) == {"full", "h2o"}, "policy is the name"
        assert "h2o(budget=32)" in set(frame["label"]), "label is the full label"
        assert {"param_budget", "param_gqa_reduce", "param_recent"} <= set(frame.columns)
    # The summary metrics have the sweep CSV's names, and a replay's values are the sweep's (to its 8 digits).
    shared = [c for c in table.columns if c in runs.columns and c.endswith(("_mean", "_p5", "_p95", "_peak", "_min"))]
    assert {"attention_kl_mean", "output_error_p95", "kv_bytes_mean", "kv_bytes_peak", "percent_of_full_mean",
            "mass_recall_p5", "topk_recall_mean"} <= set(shared)
    by_label = runs.set_index("label")
    for _, row in table.iterrows():
        for column in shared:
            assert by_label.loc[row["label"], column] == pytest.approx(row[column], rel=1e-7, abs=1e-12), column
    for frame in (runs, table):
        by_policy = frame.set_index("policy")
        assert pd.isna(by_policy.loc["full", "param_gqa_reduce"]), "a parameter the policy lacks is empty"
        assert by_policy.loc["h2o", "param_gqa_reduce"] == "sum"


def test_parameter_columns_follow_the_label_in_a_replay(sample):
    runs = tk.replay(sample, ["full", "kivi"], steps=4, layers=[0], k_bits=4)
    names = list(runs.columns)
    after_label = names[names.index("label") + 1:]
    parameters = [c for c in names if c.startswith("param_")]
    assert after_label[:len(parameters)] == parameters
    assert runs.set_index("policy").loc["kivi", "param_k_bits"] == 4


def test_read_steps_renames_a_per_step_csv(tmp_path, sample):
    path = tmp_path / "steps.csv"
    tk.run(["replay", sample, "--policy", "h2o", "--budget", "16", "--steps", "3", "--layers", "0", "--csv", str(path)])
    raw = pd.read_csv(path)
    steps = tk.read_steps(path)
    assert list(raw["policy"]) == list(steps["label"])
    assert list(raw["policy_name"]) == list(steps["policy"])
    assert list(raw["gqa-reduce"]) == list(steps["param_gqa_reduce"])


# MARK: policies()


def test_policies_lists_every_policy_and_parameter_with_defaults_and_ranges():
    table = tk.policies()
    raw = tk.run_json(["policies", "--json"])
    assert list(dict.fromkeys(table["policy"])) == [entry["name"] for entry in raw]
    parameters = [(entry["name"], p["name"]) for entry in raw for p in entry["parameters"]]
    assert list(zip(table.dropna(subset=["parameter"])["policy"], table.dropna(subset=["parameter"])["parameter"])) \
        == parameters
    assert table[table.policy == "full"]["parameter"].isna().all()
    kivi = table[(table.policy == "kivi")].set_index("keyword")
    assert kivi.loc["k_bits", "column"] == "param_k_bits"
    assert kivi.loc["k_bits", "kind"] == "integer"
    assert kivi.loc["format", "kind"] == "choice" and kivi.loc["format", "choices"] == ["int", "paper"]
    h2o = table[table.policy == "h2o"].set_index("keyword")
    assert h2o.loc["recent", "default"] == "auto", "derived defaults say so"
    assert h2o.loc["gqa_reduce", "default"] == "sum"


@pytest.mark.parametrize("policy, keyword", [("kivi", "k_bits"), ("rkv", "lambda"), ("h2o", "budget")])
def test_a_range_is_the_one_the_binary_enforces(sample, policy, keyword):
    row = tk.policies().set_index(["policy", "keyword"]).loc[(policy, keyword)]
    assert pd.notna(row["minimum"])
    just_below = row["minimum"] - (1 if row["kind"] == "integer" else 0.5)
    if row["kind"] == "integer":
        just_below = int(just_below)
    with pytest.raises(tk.UsageError) as error:
        tk.replay(sample, policy, steps=2, **({"budget": 16} if policy != "kivi" and keyword != "budget" else {}),
                  **{keyword: just_below})
    low = int(row["minimum"]) if row["kind"] == "integer" else row["minimum"]
    assert f"must be in {low}..." in str(error.value)
    assert f"{keyword} must be in" in str(error.value), "the message names the keyword, not --option"


# MARK: typed errors


def test_an_unknown_keyword_parameter_is_a_usage_error_in_python_terms(sample):
    with pytest.raises(tk.UsageError) as error:
        tk.replay(sample, "h2o", budget=32, windw=3)
    assert str(error.value).startswith("windw=3: not a parameter of h2o")
    assert error.value.suggestion == "window"
    assert "--" not in str(error.value)
    with pytest.raises(tk.UsageError) as error:
        tk.replay(sample, "h2o", budget=8, layer=[1])
    assert error.value.suggestion == "layers", "the function's own arguments are suggested too"
    with pytest.raises(tk.UsageError, match=r"window=8: not a parameter of h2o \(window is a parameter of .*rkv"):
        tk.replay(sample, "h2o", window=8)


def test_usage_errors_of_the_binary_speak_of_keywords(sample):
    with pytest.raises(tk.UsageError) as error:
        tk.replay(sample, ["h2o"], budget=16, kv_percent=20, steps=2)
    assert error.value.status == 2 and error.value.command == "replay"
    assert "budget and a memory target" in str(error.value)
    assert "Run 'thinkv-sim" not in str(error.value) and "\n" not in str(error.value)


def test_a_missing_or_damaged_trace_is_a_trace_error(tmp_path, sample):
    missing = str(tmp_path / "missing.h5")
    for call in (lambda: tk.replay(missing, "full"), lambda: tk.read_trace(missing)):
        with pytest.raises(tk.TraceError) as error:
            call()
        assert error.value.path == missing and str(error.value) == f"{missing}: no such file"
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(open(sample, "rb").read()[:4096])
    for call in (lambda: tk.replay(str(damaged), "full"), lambda: tk.read_trace(str(damaged))):
        with pytest.raises(tk.TraceError) as error:
            call()
        assert str(error.value).startswith(str(damaged) + ":")
    with pytest.raises(tk.TraceError, match="not recorded") as error:
        tk.replay(sample, "full", layers=[9], steps=2)
    assert isinstance(error.value, ValueError) and isinstance(error.value, tk.ThinKVSimError)


def test_an_output_that_cannot_be_written_is_an_output_error(tmp_path, sample):
    config = {"traces": [sample], "policies": ["full"], "steps": 2}
    with pytest.raises(tk.OutputError) as error:
        tk.sweep(config, output=str(tmp_path))
    assert error.value.path == str(tmp_path) and "is a directory" in str(error.value)
    with pytest.raises(tk.OutputError, match="refusing to overwrite an input"):
        tk.sweep(config, output=sample)
    assert isinstance(error.value, OSError)


def test_a_config_the_binary_refuses_is_a_config_error_naming_the_key(tmp_path, sample):
    with pytest.raises(tk.ConfigError) as error:
        tk.sweep({"traces": [sample], "policies": ["h2o"], "parameters": {"bugdet": [3]}})
    assert str(error.value).startswith("config: parameters.bugdet:"), "a dict config is named as such"
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"traces": [sample], "policies": ["h2o"], "parameters": {"bugdet": [3]}}))
    with pytest.raises(tk.ConfigError) as error:
        tk.sweep(path)
    assert error.value.path == str(path)


def test_a_suggestion_of_the_binary_reaches_the_error(sample):
    # run() passes arguments straight to the binary: the suggestion is the binary's own.
    with pytest.raises(tk.UsageError) as error:
        tk.run(["replay", sample, "--policy", "h20", "--steps", "2"])
    assert error.value.suggestion == "h2o" and error.value.command == "replay"
    with pytest.raises(tk.UsageError) as error:
        tk.run(["replay", sample, "--layer", "1", "--steps", "2"])
    assert error.value.suggestion == "layers", "an option is suggested in Python spelling"


def test_classify_parses_suggestions_and_renames_options():
    error = runner.classify("thinkv-sim replay: unknown option --layer (did you mean --layers?): not a parameter", 2)
    assert isinstance(error, tk.UsageError) and error.suggestion == "layers" and error.command == "replay"
    error = runner.classify("thinkv-sim replay: thinkv: --r-bits must be in 1...8, got '9'", 2,
                            keywords={"r-bits": "r_bits"})
    assert str(error) == "thinkv: r_bits must be in 1...8, got '9'"
    assert runner.classify("thinkv-sim replay: unknown policy 'thinkv-tbx' (did you mean thinkv-tbq? known: ...)",
                           2).suggestion == "thinkv-tbq", "a policy name keeps its dashes"
    assert type(runner.classify("thinkv-sim replay: out of memory", 1)) is tk.ThinKVSimError


# MARK: progress


def test_progress_lines_parse_and_other_lines_do_not():
    found = progress_module.parse_line("progress: replay 38% matching round 1: layer 29 (1/1), step 384/1005 (11s)\n")
    assert found == tk.Progress("replay", 0.38, "matching round 1: layer 29 (1/1), step 384/1005", 11.0)
    assert progress_module.parse_line("thinkv-sim replay: note: progress: 10% (1s)") is None


def test_progress_reaches_a_callback_while_the_binary_runs(monkeypatch, sample):
    monkeypatch.setattr(progress_module, "CALLBACK_INTERVAL", 0.05)
    seen = []
    started = time.monotonic()
    runs = tk.replay(sample, "h2o", budget=64, layers=[-1], steps=400,
                     progress=lambda p: seen.append((time.monotonic() - started, p)))
    finished = time.monotonic() - started
    assert seen, "a run of about a second reports at a 0.05 s interval"
    assert all(p.command == "replay" and 0 <= p.fraction <= 1 and "step" in p.detail for _, p in seen)
    assert seen[0][0] < finished, "reported while running, not after"
    assert [p.fraction for _, p in seen] == sorted(p.fraction for _, p in seen)
    assert list(runs["policy"]) == ["h2o"] and not any("progress" in n for n in runs.attrs["notes"])


def test_progress_lines_go_to_stderr_and_can_be_silenced(monkeypatch, capsys, sample):
    monkeypatch.setattr(progress_module, "STDERR_INTERVAL", 0.05)
    tk.replay(sample, "h2o", budget=64, layers=[-1], steps=400, progress="stderr")
    lines = capsys.readouterr().err.splitlines()
    assert lines and all(re.match(r"^thinkv-sim replay: \d+% .*step \d+/400 .*\(\d+ s\)$", line) for line in lines)
    tk.replay(sample, "h2o", budget=64, layers=[-1], steps=400, progress=None)
    assert capsys.readouterr().err == ""


def test_an_exception_in_the_callback_stops_the_run(monkeypatch, sample):
    monkeypatch.setattr(progress_module, "CALLBACK_INTERVAL", 0.05)

    def stop(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tk.replay(sample, "h2o", budget=64, layers=[-1], steps=400, progress=stop)


def test_an_unknown_progress_argument_is_a_usage_error(sample):
    with pytest.raises(tk.UsageError, match="progress='bar'"):
        tk.replay(sample, "full", steps=2, progress="bar")


# MARK: per-policy parameters


def test_per_policy_parameters_take_the_command_lines_spelling(sample):
    expected = "--policy=h2o:budget=64,rkv:budget=128:divide=8"
    for policies in ("h2o:budget=64,rkv:budget=128:divide=8", ["h2o:budget=64", "rkv:budget=128:divide=8"],
                     {"h2o": {"budget": 64}, "rkv": {"budget": 128, "divide": 8}},
                     [("h2o", {"budget": 64}), ("rkv", {"budget": 128, "divide": 8})]):
        arguments, keywords = _arguments(sample, policies, None, None, None, None, {}, {}, extra=[])
        assert arguments[1] == expected, policies
    arguments, _ = _arguments(sample, {"kivi": {"k_bits": 4}}, None, None, None, None, {}, {}, extra=[])
    assert arguments[1] == "--policy=kivi:k-bits=4", "keywords are spelt as options"


def test_per_policy_parameters_run_as_separate_replays_would(sample):
    """One replay with per-policy parameters gives each run what a replay of it alone gives."""
    both = tk.replay(sample, {"h2o": {"budget": 24}, "rkv": {"budget": 40, "divide": 8}}, steps=20, layers=[1],
                     progress=None).set_index("label")
    alone = pd.concat([tk.replay(sample, "h2o", budget=24, steps=20, layers=[1], progress=None),
                       tk.replay(sample, "rkv", budget=40, divide=8, steps=20, layers=[1], progress=None)]).set_index("label")
    assert list(both.index) == ["h2o(budget=24)", "rkv(budget=40,divide=8)"]
    assert both.loc["rkv(budget=40,divide=8)", "param_divide"] == 8
    for column in ("attention_kl_mean", "kv_bytes_mean", "mass_recall_mean"):
        assert both[column].tolist() == alone.loc[both.index, column].tolist(), column


def test_kv_adapt_lets_the_matcher_change_the_cadence(sample):
    """10 % of the full cache is out of reach at R-KV's --divide 128 on 150 steps; kv_adapt runs
    the halving of --divide that reaches it, and says so."""
    adapted = tk.replay(sample, "rkv", kv_percent=10, layers=[0], steps=150, kv_adapt=True, progress=None)
    row = adapted.iloc[0]
    assert row["kv_match_status"] == "matched" and row["param_divide"] < 128
    assert row["kv_match_note"].startswith(f"rkv: --kv-adapt set --divide {row['param_divide']} (was 128)")
    assert abs(row["achieved_percent"] - 10) <= 1


def test_per_policy_parameters_are_checked_against_their_policy(sample):
    with pytest.raises(tk.UsageError) as error:
        tk.replay(sample, {"h2o": {"budgt": 3}})
    assert error.value.suggestion == "budget" and str(error.value).startswith("h2o: budgt is not a parameter of h2o")
    with pytest.raises(tk.UsageError, match="cannot hold ','"):
        tk.replay(sample, {"thinkv": {"schedule": [64, 32]}})
    with pytest.raises(tk.UsageError, match="empty item"):
        policy_module.normalize("h2o,,rkv")


# MARK: sweeps


def test_sweep_output_overrides_a_config_without_one(tmp_path, sample):
    config = tmp_path / "no-output.json"
    config.write_text(json.dumps({"traces": [sample], "policies": ["h2o"], "parameters": {"budget": [16]}, "steps": 3}))
    table = tk.sweep(config, output=tmp_path / "results.csv")
    assert (tmp_path / "results.csv").exists()
    assert list(table["param_budget"]) == [16] and table.attrs["output"] == str(tmp_path / "results.csv")
    again = tk.sweep(config)  # no output anywhere: a temporary file
    assert again.attrs["output"] is None
    assert list(again["attention_kl_mean"]) == list(table["attention_kl_mean"])


def test_sweep_writes_where_the_config_says_without_output(tmp_path, sample):
    target = tmp_path / "configured.csv"
    table = tk.sweep({"traces": [sample], "policies": ["full"], "steps": 2, "output": str(target)})
    assert target.exists() and table.attrs["output"] == str(target)


# MARK: package


def test_version_and_typing_marker(root):
    assert re.match(r"^\d+\.\d+\.\d+$", tk.__version__)
    assert (root / "python/thinkv_sim/py.typed").exists()
    pyproject = (root / "python/pyproject.toml").read_text()
    assert 'version = {attr = "thinkv_sim.__version__"}' in pyproject and '"py.typed"' in pyproject
    assert '"matplotlib>=3.7"' in pyproject


def test_every_public_function_has_a_docstring_with_an_example():
    import inspect

    from thinkv_sim import plot

    public = [getattr(tk, name) for name in tk.__all__
              if callable(getattr(tk, name)) and not inspect.isclass(getattr(tk, name))]
    public += [plot.fidelity_budget, plot.fidelity_bytes, plot.fidelity_memory, plot.equal_memory, plot.steps,
               plot.kv_steps, plot.thoughts]
    missing = [f.__name__ for f in public if ">>>" not in (f.__doc__ or "")]
    assert missing == []


def test_the_docstring_examples_run(monkeypatch, root):
    import doctest

    from thinkv_sim import errors, plot, progress, runner as runner_module, trace

    monkeypatch.chdir(root)
    for module in (tk, errors, columns, policy_module, progress, runner_module, trace, plot):
        result = doctest.testmod(module, extraglobs={"tk": tk, "plot": plot}, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__


def test_a_tqdm_bar_follows_the_run_and_a_missing_tqdm_is_named(monkeypatch, sample):
    import sys
    import types

    bars = []

    class FakeBar:
        def __init__(self, total, desc, unit, leave):
            self.total, self.desc, self.n, self.closed, self.values = total, desc, 0, False, []
            bars.append(self)

        def set_postfix_str(self, text, refresh):
            self.postfix = text

        def refresh(self):
            self.values.append(self.n)

        def close(self):
            self.closed = True

    package, auto = types.ModuleType("tqdm"), types.ModuleType("tqdm.auto")
    auto.tqdm = FakeBar
    monkeypatch.setitem(sys.modules, "tqdm", package)
    monkeypatch.setitem(sys.modules, "tqdm.auto", auto)
    monkeypatch.setattr(progress_module, "CALLBACK_INTERVAL", 0.05)
    tk.replay(sample, "h2o", budget=64, layers=[-1], steps=400, progress="tqdm")
    assert len(bars) == 1 and bars[0].desc == "replay" and bars[0].closed
    assert bars[0].values and all(0 <= v <= 100 for v in bars[0].values) and "step" in bars[0].postfix
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(tk.UsageError, match="needs the tqdm package"):
        tk.replay(sample, "full", steps=2, progress="tqdm")


def test_the_notebook_example_runs(tmp_path, root):
    import os
    import subprocess
    import sys

    figure = tmp_path / "example.png"
    environment = dict(os.environ, PYTHONPATH=str(root / "python"), MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, str(root / "python/examples/notebook.py"), "--quick", "--figure", str(figure),
                           "--workdir", str(tmp_path / "work")], cwd=root, env=environment, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "UsageError: windw=3: not a parameter of h2o" in done.stdout and "suggestion 'window'" in done.stdout
    assert "TraceError: no-such-trace.h5: no such file" in done.stdout
    table = tk.read_results(tmp_path / "work/sweep.csv")
    assert table["trace"].nunique() == 3 and set(table["kv_percent"].dropna()) == {20, 40}
