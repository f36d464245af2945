"""Arguments that once reached the binary as something else: paths that look like options,
keyword parameters that are options writing files, and layer indices out of range. Each ends in
a Python exception whose text is the one-line message, never a traceback from inside."""

import json
import shutil

import pytest

import thinkv_sim as tk


def test_a_trace_named_like_an_option_is_a_path(tmp_path, monkeypatch, sample):
    shutil.copy(sample, tmp_path / "-x.h5")
    monkeypatch.chdir(tmp_path)
    frame = tk.replay("-x.h5", policies="full", steps=4)
    assert list(frame["policy"]) == ["full"]
    steps = tk.replay_steps("-x.h5", policies="full", steps=2, layers=[0])
    assert len(steps) == 2


@pytest.mark.parametrize("name", ["--help", "--version", "-h", "--progress"])
def test_an_option_given_as_the_trace_is_a_missing_file(name):
    with pytest.raises(tk.TraceError) as error:
        tk.replay(name, policies="full", steps=2)
    assert error.value.status == 1 and error.value.path == name
    assert "no such file" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_config_named_like_an_option_is_a_path(tmp_path, monkeypatch, sample):
    (tmp_path / "-c.json").write_text(json.dumps({"traces": [sample], "policies": ["h2o"], "parameters": {"budget": [32]},
                                                  "steps": 4, "output": str(tmp_path / "configured.csv")}))
    monkeypatch.chdir(tmp_path)
    table = tk.sweep("-c.json", output=str(tmp_path / "out.csv"))
    assert list(table["param_budget"]) == [32]


@pytest.mark.parametrize("option", [{"csv": "steps.csv"}, {"kept": "kept.jsonl"}, {"cache_timeline": "t.jsonl"},
                                    {"shard_state": "s.json"}, {"json": True}, {"help": True}, {"output": "o.csv"}])
def test_options_that_write_files_are_not_parameters(tmp_path, monkeypatch, sample, option):
    monkeypatch.chdir(tmp_path)
    for call in (tk.replay, tk.replay_steps):
        with pytest.raises(tk.ThinKVSimError) as error:
            call(sample, policies="h2o", budget=16, steps=2, **option)
        assert error.value.status == 2
        assert "not a policy parameter" in str(error.value)
    assert list(tmp_path.iterdir()) == [], "nothing was written"


def test_a_parameter_value_that_looks_like_an_option_stays_a_value(sample):
    with pytest.raises(tk.ThinKVSimError) as error:
        tk.replay(sample, policies="h2o", budget="--csv", steps=2)
    assert error.value.status in (1, 2)
    assert "--csv" in str(error.value) and "\n" not in str(error.value)


def test_a_parameter_name_that_is_not_a_name_is_refused(sample):
    with pytest.raises(tk.ThinKVSimError, match="not a parameter name"):
        tk.replay(sample, policies="h2o", steps=2, **{"budget 16 --csv": 1})


@pytest.mark.parametrize("layers, message", [([-9], "counts back past the first recorded layer"), ([7], "not recorded"),
                                             (["x"], "not an integer index"), ([1.5], "not an integer index")])
def test_read_trace_layer_errors_are_value_errors(sample, layers, message):
    with pytest.raises(ValueError, match=message) as error:
        tk.read_trace(sample, layers=layers)
    assert str(error.value).startswith(sample)
    assert "\n" not in str(error.value)


def test_read_trace_counts_negative_layers_from_the_last(sample):
    trace = tk.read_trace(sample, layers=[-4, -1], tensors=("k",))
    assert sorted(trace.layers) == [0, 3]
