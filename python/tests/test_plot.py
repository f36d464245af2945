"""thinkv_sim.plot: the CLI's figures with matplotlib, following the figure rules (units on
every axis, a distinct colour per policy, coinciding series kept visible, per-trace points and
an interval only from three traces)."""

import re

import matplotlib
import matplotlib.colors
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

import thinkv_sim as tk
from thinkv_sim import plot

UNIT = re.compile(r"\(.+\)")


def _table(traces, policies=("full", "h2o", "rkv"), budgets=(16, 32, 64), seed=0):
    """A results table of the package's columns with made-up metrics: `traces` maps a policy to
    its number of traces (so a policy can have fewer)."""
    rng = np.random.default_rng(seed)
    rows = []
    for policy in policies:
        for t in range(traces.get(policy, 3) if isinstance(traces, dict) else traces):
            for budget in ([None] if policy == "full" else budgets):
                share = 100.0 if budget is None else budget / (2 + t) / 2
                kl = 0.0 if budget is None else 1.0 / budget + rng.uniform(0, 0.01)
                rows.append({"trace": f"t{t}.h5", "policy": policy,
                             "label": policy if budget is None else f"{policy}(budget={budget})",
                             "param_budget": budget, "percent_of_full_mean": share, "attention_kl_mean": kl,
                             "output_error_mean": kl / 2, "mass_recall_mean": 1 - kl, "topk_recall_mean": 1 - kl,
                             "kv_bytes_mean": share * 1e4, "kv_bytes_peak": share * 2e4})
    return pd.DataFrame(rows)


def _axis_titles(fig):
    return [(ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]


def _errorbar_colors(ax):
    colors = []
    for collection in ax.collections:
        if isinstance(collection, LineCollection) and len(collection.get_segments()):
            colors.append(matplotlib.colors.to_hex(collection.get_colors()[0]))
    return colors


def test_every_registered_policy_gets_its_own_colour_and_marker():
    names = list(dict.fromkeys(tk.policies()["policy"]))
    colors = plot.policy_colors(names)
    assert len(set(colors.values())) == len(names), "no two policies share a colour"
    assert colors["full"] == "black"
    assert plot.policy_colors(list(reversed(names))) == colors, "the same set of names, the same colours"
    markers = plot.policy_markers(names)
    assert len(set(markers.values())) == min(len(names), len(plot.MARKERS))
    # Derived from the name, not a fixed list: a policy the palette never heard of gets a colour too.
    assert plot.policy_colors(["h2o", "my-new-policy"])["my-new-policy"] in plot.PALETTE


def test_the_aggregated_figure_shows_each_trace_and_intervals_only_from_three_traces():
    table = _table({"full": 3, "h2o": 3, "rkv": 2})
    fig = plot.fidelity_memory(table, metrics=["kl"])
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert "% of the trace's full cache" in ax.get_xlabel()
    colors = plot.policy_colors(["full", "h2o", "rkv"])
    bars = _errorbar_colors(ax)
    assert matplotlib.colors.to_hex(colors["h2o"]) in bars, "three traces: an interval"
    assert matplotlib.colors.to_hex(colors["rkv"]) not in bars, "two traces: none"
    points = sum(len(c.get_offsets()) for c in ax.collections if not isinstance(c, LineCollection))
    assert points == len(table), "every trace's run is a point"
    # The mean is drawn at each trace's own share of its full cache, averaged.
    h2o = [line for line in ax.get_lines() if line.get_label() == "h2o"][0]
    expected = table[table.policy == "h2o"].groupby("param_budget")["percent_of_full_mean"].mean().sort_values()
    assert np.allclose(sorted(h2o.get_xdata()), expected.values)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("95 %" in t and "n ≥ 3" in t for t in legend), "the interval says what it is"


def test_every_axis_title_carries_its_unit():
    table = _table(3)
    figures = [plot.fidelity_budget(table, trace="t0.h5"), plot.fidelity_bytes(table, trace="t0.h5"),
               plot.fidelity_memory(table), plot.equal_memory(table.assign(kv_percent=table["param_budget"] / 4))]
    for fig in figures:
        for x, y in _axis_titles(fig):
            assert UNIT.search(x) and UNIT.search(y), (x, y)


def test_coinciding_series_are_drawn_with_interleaved_dashes():
    table = _table(1, policies=("h2o", "streaming", "rkv"))
    same = table.policy == "streaming"
    table.loc[same, "attention_kl_mean"] = table.loc[table.policy == "h2o", "attention_kl_mean"].values
    fig = plot.fidelity_budget(table, metrics=["kl"])
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    h2o, streaming, rkv = (lines[n].get_linestyle() for n in ("h2o", "streaming", "rkv"))
    assert lines["h2o"]._dash_pattern != lines["streaming"]._dash_pattern
    offsets = {lines[n]._unscaled_dash_pattern[0] for n in ("h2o", "streaming")}
    assert len(offsets) == 2, "one line's dashes fill the other's gaps"
    assert rkv == "-", "a line that coincides with none stays solid"


def test_variants_of_a_policy_differ_in_dashes_and_are_labelled_by_what_differs():
    table = pd.concat([_table(1, policies=("streaming",), seed=s).assign(param_sinks=s) for s in (1, 4)],
                      ignore_index=True)
    fig = plot.fidelity_budget(table, metrics=["kl"])
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert set(lines) == {"streaming sinks=1", "streaming sinks=4"}
    assert lines["streaming sinks=1"].get_color() == lines["streaming sinks=4"].get_color()
    assert lines["streaming sinks=1"]._unscaled_dash_pattern != lines["streaming sinks=4"]._unscaled_dash_pattern
    assert lines["streaming sinks=1"].get_markerfacecolor() != lines["streaming sinks=4"].get_markerfacecolor()


def test_a_table_of_several_traces_needs_a_trace_for_per_trace_figures():
    with pytest.raises(tk.UsageError, match="holds 3 traces"):
        plot.fidelity_budget(_table(3))
    with pytest.raises(tk.UsageError, match="'kl2' is not a metric"):
        plot.fidelity_memory(_table(3), metrics=["kl2"])


def test_figures_of_real_runs(sample):
    table = tk.sweep({"traces": [sample], "policies": ["full", "h2o", "streaming"], "parameters": {"budget": [16, 64]},
                      "steps": 24, "layers": [3]})
    fig = plot.fidelity_budget(table)
    kl = {line.get_label(): line for line in fig.axes[0].get_lines()}
    h2o = table[table.policy == "h2o"].sort_values("param_budget")
    assert list(kl["h2o"].get_ydata()) == list(h2o["attention_kl_mean"]), "the figure draws the table's numbers"
    assert [ax.get_title(loc="left")[:3] for ax in fig.axes] == ["(a)", "(b)", "(c)"]
    assert "KL" in fig.axes[0].get_title(loc="left") and "output error" in fig.axes[1].get_title(loc="left")
    equal = tk.replay(sample, ["full", "h2o", "streaming"], kv_percent=30, steps=24, layers=[3])
    fig = plot.equal_memory(equal, metrics=["kl"])
    heights = sorted(p.get_height() for p in fig.axes[0].patches)
    expected = sorted(equal.dropna(subset=["kv_percent"])["attention_kl_mean"])
    assert heights == pytest.approx(expected), "a bar per matched policy; the full cache is not matched"
    steps = tk.replay_steps(sample, ["h2o", "streaming"], budget=32, steps=40, layers=[3])
    fig = plot.steps(steps, smooth=1)
    kib = {line.get_label(): line for line in fig.axes[0].get_lines()}
    h2o_steps = steps[steps.policy == "h2o"].groupby("step")["attended_bytes"].sum() / 1024
    assert list(kib["h2o(budget=32)"].get_ydata()) == list(h2o_steps.values)


def test_a_point_two_series_share_shows_both_markers_nested():
    table = _table(1, policies=("h2o", "rkv"))
    shared = (table.policy == "rkv") & (table.param_budget == 64)
    h2o_at_64 = (table.policy == "h2o") & (table.param_budget == 64)
    table.loc[shared, "attention_kl_mean"] = table.loc[h2o_at_64, "attention_kl_mean"].values
    fig = plot.fidelity_budget(table, metrics=["kl"])
    nested = [line for line in fig.axes[0].get_lines() if line.get_label() == "_shared point"]
    assert len(nested) == 2, "one marker per series at the shared point"
    sizes = [line.get_markersize() for line in nested]
    assert sizes[0] > sizes[1], "the one below is larger, so it shows around the one on top"
    assert nested[0].get_zorder() < nested[1].get_zorder()
    assert {line.get_marker() for line in nested} == {plot.policy_markers(["h2o", "rkv"])[p] for p in ("h2o", "rkv")}


def test_kv_steps_draws_every_layer_of_each_policy_at_one_budget(tmp_path, sample):
    table = tk.sweep({"traces": [sample], "policies": ["h2o", {"policy": "streaming", "parameters": {"budget": [16]}}],
                      "parameters": {"budget": [16, 32, 64]}, "steps": 30, "layers": [2, 3],
                      "step_csv_dir": str(tmp_path / "steps")})
    fig = plot.kv_steps(table)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert "h2o" in lines and "streaming (budget 16, nearest)" in lines, "the middle budget is 32; streaming has 16 only"
    run = table[(table.policy == "h2o") & (table.param_budget == 32)].iloc[0]
    steps = tk.read_steps(run["steps_csv"])
    expected = steps.groupby("step")["attended_bytes"].sum() * run["num_layers"] / 2 / 2**20
    assert list(lines["h2o"].get_ydata()) == pytest.approx(list(expected.values))
    assert "full cache (16-bit)" in lines
    with pytest.raises(tk.UsageError, match="step_csv_dir"):
        plot.kv_steps(table.drop(columns=["steps_csv"]))


def test_thoughts_draws_the_label_runs_and_the_sparsity(sample):
    trace = tk.read_trace(sample, tensors=())
    labels = trace.thought[trace.prompt_len:]
    runs = 1 + int((labels[1:] != labels[:-1]).sum())
    steps = tk.replay_steps(sample, "full", steps=20, layers=[2, 3])
    fig = plot.thoughts(sample, steps)
    ax = fig.axes[0]
    assert len(ax.patches) == runs, "one band per run of one thought type"
    line = ax.get_lines()[0]
    assert list(line.get_ydata()) == pytest.approx(list(steps.groupby("step")["sparsity"].mean().values))
    assert ax.get_ylim() == (0, 1) and UNIT.search(ax.get_ylabel()) and UNIT.search(ax.get_xlabel())
