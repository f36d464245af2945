"""The figures of `thinkv-sim plot`, drawn with matplotlib from the package's tables.

Every function takes a table of this package (`sweep`, `replay`, `read_results`; per-step
figures `replay_steps`, `read_steps`) and returns the matplotlib Figure, to restyle, show or
save (`fig.savefig("kl.png", dpi=150)`). The rules every figure follows:

- Fidelity comes first: (a) attention KL, (b) output error (top-k recall when the trace has no
  values), (c) mass recall; `metrics=` picks others ("kl", "output_error", "mass_recall",
  "top_k_recall").
- Every axis title carries its unit.
- Every policy has its own colour, derived from its name (hashed onto a 16-colour palette, the
  full cache black) so it is the same in every figure of a table, and its own marker; the
  variants of a policy (runs differing in more than the budget) have their own dash patterns.
- Series that coincide (within half a pixel) are drawn with interleaved dashes, a segment of
  each in turn, and nested markers, so none hides another.
- Aggregated figures put each trace's own share of its full cache on x (% of the trace's full
  cache: traces of different lengths are comparable), show every trace's point, and draw the
  95 % Student-t interval of the mean over traces only where there are at least 3 traces.

>>> import thinkv_sim as tk
>>> from thinkv_sim import plot
>>> table = tk.sweep({"traces": ["traces/sample-synthetic.h5"], "policies": ["full", "h2o", "rkv"],
...                   "parameters": {"budget": [32, 64, 128]}, "steps": 64})
>>> fig = plot.fidelity_budget(table)
>>> fig.axes[0].set_title("KL")                # doctest: +SKIP
>>> fig.savefig("fidelity-budget.png")          # doctest: +SKIP
"""

from __future__ import annotations

import math
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

import matplotlib.lines
import matplotlib.pyplot as plt
import matplotlib.ticker
from matplotlib.figure import Figure

from .errors import UsageError

#: Metric name -> (results column, per-step column, panel title, axis title with unit).
METRICS = {
    "kl": ("attention_kl_mean", "attention_kl", "Attention KL (policy ‖ full)", "KL (nats)"),
    "output_error": ("output_error_mean", "output_error", "Attention output error", "relative L2 error (ratio)"),
    "mass_recall": ("mass_recall_mean", "mass_recall", "Attention mass recall", "mass recall (fraction of attention)"),
    "top_k_recall": ("topk_recall_mean", "topk_recall", "Top-k recall", "top-k recall (fraction of top k)"),
}
DEFAULT_METRICS = ("kl", "output_error", "mass_recall")

#: 16 colours no two of which are close in hue and lightness (Okabe-Ito, Tol's, a few of
#: ColorBrewer's): a figure holds up to 16 policies, each in its own colour.
PALETTE = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#E69F00", "#332288", "#117733",
    "#882255", "#999933", "#E31A1C", "#8C564B", "#6A3D9A", "#17BECF", "#7F7F7F", "#B2DF8A",
]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*"]
DASHES = ["-", (0, (6, 2.5)), (0, (1.5, 1.5)), (0, (7, 2, 1.5, 2)), (0, (3, 1.5, 1, 1.5, 1, 1.5)), (0, (10, 3))]
FULL_COLOR = "black"

# t(0.975, df) for df = 1...30; 1.960 beyond.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]
#: Fewest traces a mean gets an interval with.
MIN_INTERVAL_TRACES = 3
INTERVAL_NOTE = "bars: 95 % Student-t interval of the mean over traces (n ≥ 3)"


def _assign(names: Sequence[str], choices: Sequence, skip: Sequence[str] = ()) -> Dict[str, object]:
    """Each name a choice: its hash's, or the next one free (names in sorted order, so a set of
    names always gets the same assignment)."""
    out: Dict[str, object] = {}
    used = set()
    for name in sorted(set(names)):
        if name in skip:
            continue
        index = zlib.crc32(name.encode()) % len(choices)
        for step in range(len(choices)):
            candidate = (index + step) % len(choices)
            if candidate not in used or len(used) >= len(choices):
                break
        used.add(candidate)
        out[name] = choices[candidate]
    return out


def policy_colors(policies: Sequence[str]) -> Dict[str, str]:
    """A colour per policy name: hashed onto `PALETTE`, distinct within `policies`, the full cache black.

    >>> policy_colors(["full", "h2o", "rkv"])["full"]
    'black'
    """
    colors = _assign(policies, PALETTE, skip=("full",))
    if "full" in policies:
        colors["full"] = FULL_COLOR
    return colors


def policy_markers(policies: Sequence[str]) -> Dict[str, str]:
    """A marker per policy name, hashed onto `MARKERS`, distinct within `policies` (up to 12)."""
    return _assign(policies, MARKERS)


def interval(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """(mean, half-width of its 95 % Student-t interval) of the finite values; the half-width is
    None with fewer than `MIN_INTERVAL_TRACES` values.

    >>> mean, half = interval([1.0, 2.0, 3.0])      # t(0.975, 2) = 4.303, s = 1
    >>> mean, round(half, 3)
    (2.0, 2.484)
    >>> interval([1.0, 2.0])                        # two traces: no interval
    (1.5, None)
    """
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return math.nan, None
    mean = float(finite.mean())
    if finite.size < MIN_INTERVAL_TRACES:
        return mean, None
    df = finite.size - 1
    t = _T975[df - 1] if df <= len(_T975) else 1.960
    return mean, round(t * float(finite.std(ddof=1)) / math.sqrt(finite.size), 12)


# MARK: series


def _metrics(table: pd.DataFrame, metrics: Optional[Sequence[str]], per_step: bool = False) -> List[str]:
    chosen = list(metrics) if metrics is not None else list(DEFAULT_METRICS)
    for name in chosen:
        if name not in METRICS:
            raise UsageError(f"metrics: {name!r} is not a metric (known: {', '.join(METRICS)})", 2)
    column = 1 if per_step else 0
    if metrics is None and "output_error" in chosen:
        # A trace without values has no output error: top-k recall takes its panel, as in the CLI.
        values = table.get(METRICS["output_error"][column])
        if values is None or pd.to_numeric(values, errors="coerce").isna().all():
            chosen[chosen.index("output_error")] = "top_k_recall"
    return chosen


def _variants(table: pd.DataFrame, ignore: Sequence[str] = ("param_budget",)) -> pd.Series:
    """Each row's series name: the policy, plus the parameters its runs differ in besides
    `ignore` (`kivi k-bits=4`)."""
    names = pd.Series(table["policy"].astype(str).values, index=table.index)
    parameters = [c for c in table.columns if c.startswith("param_") and c not in ignore]
    for policy, rows in table.groupby("policy", sort=False):
        varying = [c for c in parameters if rows[c].astype(str).nunique(dropna=False) > 1]
        for index, row in rows.iterrows():
            names[index] = " ".join([str(policy)] + [f"{c[len('param_'):].replace('_', '-')}={_text(row[c])}"
                                                     for c in varying])
    return names


def _text(value) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class _Styles:
    """Colour, marker and dash pattern of every series of a table."""

    def __init__(self, table: pd.DataFrame, variants: pd.Series):
        policies = list(dict.fromkeys(table["policy"].astype(str)))
        self.colors = policy_colors(policies)
        self.markers = policy_markers(policies)
        # A policy's variants in order of appearance: the first solid, the others dashed.
        self.order: Dict[str, int] = {}
        for policy in policies:
            names = list(dict.fromkeys(variants[table["policy"].astype(str) == policy]))
            for i, name in enumerate(names):
                self.order[name] = i
        self.policy_of = dict(zip(variants, table["policy"].astype(str)))

    def __call__(self, variant: str) -> dict:
        policy = self.policy_of[variant]
        order = self.order[variant]
        color = self.colors[policy]
        # Every other variant has hollow markers: two variants differ in more than the dashes.
        return {"color": color, "marker": self.markers[policy], "linestyle": DASHES[order % len(DASHES)],
                "markerfacecolor": "white" if order % 2 else color, "markeredgecolor": color}

    def solid(self, variant: str) -> bool:
        return self.order[variant] == 0


def _separate_coincident(ax, tolerance_px: float = 0.5, segment: float = 5.0) -> None:
    """Lines drawn on one another (same points within half a pixel) get interleaved dashes: line
    i of k draws segment i of every k, so each shows its colour."""
    ax.autoscale_view()
    # Series only: an interval's caps are lines too, and sit on their mean.
    lines = [line for line in ax.get_lines()
             if len(line.get_xdata()) > 0 and line.get_visible() and not line.get_label().startswith("_")]
    points = {}
    for line in lines:
        xy = np.column_stack([np.asarray(line.get_xdata(), dtype=float), np.asarray(line.get_ydata(), dtype=float)])
        points[line] = ax.transData.transform(xy)
    groups: List[List] = []
    for line in lines:
        for group in groups:
            other = points[group[0]]
            mine = points[line]
            if mine.shape == other.shape and np.all(np.nan_to_num(np.abs(mine - other), nan=0.0) <= tolerance_px):
                group.append(line)
                break
        else:
            groups.append([line])
    for group in groups:
        if len(group) < 2:
            continue
        k = len(group)
        for i, line in enumerate(group):
            line.set_linestyle((i * segment, (segment, (k - 1) * segment)))
    _nest_shared_points(ax, lines, points, tolerance_px)


def _nest_shared_points(ax, lines, points, tolerance_px: float) -> None:
    """Where series share a point (a marker on another's marker), their markers are drawn again
    there, nested: the first series' largest, each next one smaller and on top."""
    seen: List[Tuple[np.ndarray, List]] = []
    for line in lines:
        if line.get_marker() in (None, "None", "", " "):
            continue
        for xy in points[line]:
            if not np.all(np.isfinite(xy)):
                continue
            for place, members in seen:
                if np.all(np.abs(place - xy) <= tolerance_px):
                    if line not in members:
                        members.append(line)
                    break
            else:
                seen.append((xy, [line]))
    inverse = ax.transData.inverted()
    for place, members in seen:
        if len(members) < 2:
            continue
        x, y = inverse.transform(place)
        k = len(members)
        for i, line in enumerate(members):
            ax.plot([x], [y], linestyle="none", marker=line.get_marker(), color=line.get_color(),
                    markerfacecolor=line.get_markerfacecolor(), markeredgecolor=line.get_markeredgecolor(),
                    markersize=line.get_markersize() * (1 + 0.7 * (k - 1 - i)), zorder=line.get_zorder() + 0.01 * (i + 1),
                    label="_shared point")


def _log2_axis(ax, values: Sequence[float]) -> None:
    finite = [v for v in values if np.isfinite(v) and v > 0]
    if finite and max(finite) >= 4 * min(finite):
        ax.set_xscale("log", base=2)
        ticks = sorted(set(finite))
        if len(ticks) <= 8:
            ax.set_xticks(ticks)
            ax.set_xticklabels([_text(float(t)) for t in ticks])
            ax.minorticks_off()


def _panels(count: int, title: str, height: float = 3.6) -> Tuple[Figure, List]:
    fig, axes = plt.subplots(1, count, figsize=(max(8.0, 2.0 + 3.6 * count), height), squeeze=False,
                             layout="constrained")
    fig.suptitle(title)
    return fig, list(axes[0])


def _bound(ax, metric: str) -> None:
    """Keeps the y axis where the metric lives (errors ≥ 0, recalls in [0, 1]): an interval
    reaching past it is cut at the panel's edge."""
    bottom, top = ax.get_ylim()
    floor = -0.03 * top  # a margin below 0, so a point at 0 (the full cache) shows whole
    if metric in ("mass_recall", "top_k_recall"):
        ax.set_ylim(max(bottom, floor), min(top, 1.03))
    else:
        ax.set_ylim(max(bottom, floor), top)


def _letter(ax, index: int, title: str) -> None:
    ax.set_title(f"({chr(ord('a') + index)}) {title}", loc="left", fontsize="medium")


def _one_trace(table: pd.DataFrame, trace: Optional[str]) -> Tuple[pd.DataFrame, str]:
    traces = list(dict.fromkeys(table["trace"].astype(str))) if "trace" in table.columns else ["(one trace)"]
    if trace is None:
        if len(traces) > 1:
            raise UsageError(f"the table holds {len(traces)} traces: give trace= one of {', '.join(traces)} "
                             "(or draw them together with fidelity_memory)", 2)
        return table, traces[0]
    if trace not in traces:
        raise UsageError(f"trace={trace!r} is not in the table (traces: {', '.join(traces)})", 2)
    return table[table["trace"].astype(str) == trace], trace


def _legend(fig, axes, extra: Sequence[Tuple[object, str]] = ()) -> None:
    """One legend for all panels, right of them; `extra` (handle, text) pairs after the series."""
    handles, labels = [], []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels and not label.startswith("_"):
                handles.append(handle)
                labels.append(label)
    for handle, label in extra:
        handles.append(handle)
        labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="outside right center", fontsize="small", frameon=False)


# MARK: figures


def fidelity_budget(results: pd.DataFrame, trace: Optional[str] = None,
                    metrics: Optional[Sequence[str]] = None) -> Figure:
    """Fidelity against the budget on one trace (`<trace>.fidelity-budget` of the CLI): one line
    per policy variant through its budgets; policies without a budget (the full cache, KIVI) are
    levels across each panel. `trace` is needed when the table holds several.

    >>> table = tk.sweep("configs/quick-sweep.json")                              # doctest: +SKIP
    >>> fig = plot.fidelity_budget(table, trace="traces/sample-synthetic.h5")     # doctest: +SKIP
    """
    table, name = _one_trace(results, trace)
    chosen = _metrics(table, metrics)
    variants = _variants(table)
    styles = _Styles(table, variants)
    fig, axes = _panels(len(chosen), f"Fidelity against the budget: {name}")
    budgets = pd.to_numeric(table.get("param_budget", pd.Series(np.nan, index=table.index)), errors="coerce")
    for index, (ax, metric) in enumerate(zip(axes, chosen)):
        column, _, title, unit = METRICS[metric]
        values = pd.to_numeric(table[column], errors="coerce")
        for variant in dict.fromkeys(variants):
            rows = variants == variant
            style = styles(variant)
            with_budget = rows & budgets.notna()
            if with_budget.any():
                order = budgets[with_budget].sort_values().index
                ax.plot(budgets[order], values[order], label=variant, **style)
            else:
                for value in values[rows]:
                    ax.axhline(value, label=variant + " (no budget)", color=style["color"],
                               linestyle=(0, (4, 3)) if variant != "full" else (0, (8, 3)), linewidth=1.2)
        _log2_axis(ax, budgets.dropna().tolist())
        ax.set_xlabel("budget (tokens per kv head)")
        _finish_panel(ax, index, title, unit, metric)
    _legend(fig, axes)
    return fig


def fidelity_bytes(results: pd.DataFrame, trace: Optional[str] = None, metrics: Optional[Sequence[str]] = None,
                   bytes: str = "mean", log: bool = True) -> Figure:
    """Fidelity against the KV bytes each run needed on one trace (`<trace>.fidelity-bytes`):
    `bytes` "mean" or "peak" over the decode steps (all model layers); log axis unless
    `log=False`.

    >>> fig = plot.fidelity_bytes(table, bytes="peak", log=False)      # doctest: +SKIP
    """
    if bytes not in ("mean", "peak"):
        raise UsageError(f"bytes={bytes!r}: give 'mean' or 'peak'", 2)
    table, name = _one_trace(results, trace)
    chosen = _metrics(table, metrics)
    variants = _variants(table)
    styles = _Styles(table, variants)
    mib = pd.to_numeric(table[f"kv_bytes_{bytes}"], errors="coerce") / 2**20
    fig, axes = _panels(len(chosen), f"Fidelity against KV memory: {name}")
    for index, (ax, metric) in enumerate(zip(axes, chosen)):
        column, _, title, unit = METRICS[metric]
        values = pd.to_numeric(table[column], errors="coerce")
        for variant in dict.fromkeys(variants):
            order = mib[variants == variant].sort_values().index
            ax.plot(mib[order], values[order], label=variant, **styles(variant))
        if log:
            ax.set_xscale("log", base=2)
        ax.set_xlabel(f"KV cache, {bytes} over decode steps (MiB, all layers)")
        _finish_panel(ax, index, title, unit, metric)
    _legend(fig, axes)
    return fig



def _finish_panel(ax, index: int, title: str, unit: str, metric: str) -> None:
    """A metric panel's y title, letter and range, with coinciding lines told apart."""
    ax.set_ylabel(unit)
    _letter(ax, index, title)
    _bound(ax, metric)
    _separate_coincident(ax)

def _points(table: pd.DataFrame, variants: pd.Series) -> pd.Series:
    """Each row's point within its series: the memory target in a kv_percent table, else the budget."""
    if "kv_percent" in table.columns and pd.to_numeric(table["kv_percent"], errors="coerce").notna().any():
        return pd.to_numeric(table["kv_percent"], errors="coerce")
    return pd.to_numeric(table.get("param_budget", pd.Series(np.nan, index=table.index)), errors="coerce")


def fidelity_memory(results: pd.DataFrame, metrics: Optional[Sequence[str]] = None) -> Figure:
    """Over every trace of the table (`all-traces.fidelity-bytes` of the CLI): per policy variant
    and budget (or memory target), x is the KV memory as % of each trace's own full cache (mean
    over decode steps) and y the metric; every trace's run is a small point, the mean over
    traces a marker on the variant's line, with its 95 % Student-t interval when at least three
    traces have the point.

    >>> fig = plot.fidelity_memory(tk.read_results("out/equal-memory.csv"))   # doctest: +SKIP
    """
    table = results.reset_index(drop=True)
    chosen = _metrics(table, metrics)
    variants = _variants(table, ignore=("param_budget",))
    styles = _Styles(table, variants)
    points = _points(table, variants)
    percent = pd.to_numeric(table["percent_of_full_mean"], errors="coerce")
    traces = table["trace"].nunique() if "trace" in table.columns else 1
    fig, axes = _panels(len(chosen), f"Fidelity against KV memory (mean over decode steps), {traces} trace(s)")
    any_interval = False
    for index, (ax, metric) in enumerate(zip(axes, chosen)):
        column, _, title, unit = METRICS[metric]
        values = pd.to_numeric(table[column], errors="coerce")
        for variant in dict.fromkeys(variants):
            style = styles(variant)
            rows = table[variants == variant]
            ax.scatter(percent[rows.index], values[rows.index], s=10, color=style["color"], alpha=0.45,
                       marker=style["marker"], linewidths=0, label="_each trace")
            means = []
            for point in sorted(points[rows.index].dropna().unique()) or [None]:
                group = rows.index if point is None else rows.index[points[rows.index] == point]
                x, _ = interval(percent[group])
                y, half = interval(values[group])
                means.append((x, y, half))
            means = [m for m in means if np.isfinite(m[0]) and np.isfinite(m[1])]
            if not means:
                continue
            xs, ys, halves = zip(*sorted(means))
            ax.plot(xs, ys, label=variant, **style)
            errors = [h if h is not None else np.nan for h in halves]
            if any(h is not None for h in halves):
                any_interval = True
                ax.errorbar(xs, ys, yerr=errors, fmt="none", ecolor=style["color"], elinewidth=1, capsize=3)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_xlabel("KV cache (% of the trace's full cache)")
        _finish_panel(ax, index, title, unit, metric)
    _legend(fig, axes, extra=_trace_notes(any_interval, "small points: one trace each"))
    return fig


def _trace_notes(any_interval: bool, points: str) -> List[Tuple[object, str]]:
    each = matplotlib.lines.Line2D([], [], linestyle="none", marker="o", color="grey", alpha=0.5, markersize=4)
    blank = matplotlib.lines.Line2D([], [], linestyle="none")
    return [(each, points), (blank, INTERVAL_NOTE if any_interval else "no interval: fewer than 3 traces")]


def equal_memory(results: pd.DataFrame, metrics: Optional[Sequence[str]] = None) -> Figure:
    """Fidelity at equal memory (`all-traces.equal-memory`): one bar group per memory target
    (`kv_percent`), one bar per policy variant matched to it, the bar the mean over traces,
    every trace's value a point on it, and the 95 % Student-t interval where at least three
    traces have the bar. Policies without a budget are not matched and have no bar.

    >>> fig = plot.equal_memory(tk.replay(trace, ["h2o", "rkv", "snapkv"], kv_percent=20))  # doctest: +SKIP
    """
    if "kv_percent" not in results.columns:
        raise UsageError("the table has no kv_percent column: run a sweep with kv_percent, or replay(kv_percent=...)",
                         2)
    table = results.reset_index(drop=True)
    targets = pd.to_numeric(table["kv_percent"], errors="coerce")
    table = table[targets.notna()]
    targets = targets[targets.notna()]
    if table.empty:
        raise UsageError("no run of the table was matched to a memory target", 2)
    chosen = _metrics(table, metrics)
    variants = _variants(table, ignore=("param_budget",))
    styles = _Styles(table, variants)
    names = list(dict.fromkeys(variants))
    levels = sorted(targets.unique())
    width = 0.8 / len(names)
    traces = table["trace"].nunique() if "trace" in table.columns else 1
    fig, axes = _panels(len(chosen), f"Fidelity at equal memory, {traces} trace(s)")
    any_interval = False
    for index, (ax, metric) in enumerate(zip(axes, chosen)):
        column, _, title, unit = METRICS[metric]
        values = pd.to_numeric(table[column], errors="coerce")
        for slot, variant in enumerate(names):
            style = styles(variant)
            labelled = False
            for group, level in enumerate(levels):
                rows = table.index[(variants == variant) & (targets == level)]
                if len(rows) == 0:
                    continue
                x = group - 0.4 + width * (slot + 0.5)
                mean, half = interval(values[rows])
                # A policy's second variant is hatched: bars have no dash pattern.
                ax.bar(x, mean, width=width * 0.9, color=style["color"], alpha=0.85,
                       hatch=None if styles.solid(variant) else "//", edgecolor="white",
                       label="_" if labelled else variant)
                labelled = True
                ax.scatter([x] * len(rows), values[rows], s=12, color="white", edgecolors="black", linewidths=0.6,
                           marker=style["marker"], zorder=3, label="_each trace")
                if half is not None:
                    any_interval = True
                    ax.errorbar([x], [mean], yerr=[half], fmt="none", ecolor="black", elinewidth=1, capsize=3, zorder=4)
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels([f"{_text(float(level))} %" for level in levels])
        ax.set_xlabel("memory target (% of the trace's full cache)")
        ax.set_ylabel(unit)
        _letter(ax, index, title)
        _bound(ax, metric)
    _legend(fig, axes, extra=_trace_notes(any_interval, "points on a bar: one trace each"))
    return fig


def steps(per_step: pd.DataFrame, metrics: Optional[Sequence[str]] = None, smooth: int = 16) -> Figure:
    """A per-step table over the decode steps (the CLI's `<csv>.steps` figure): (a) attended KV
    bytes at every step, summed over the replayed layers (not extrapolated), then one panel per
    metric, mean over layers and query heads, smoothed with a centred moving average of
    `smooth` steps (1: none). One line per policy variant.

    >>> fig = plot.steps(tk.replay_steps(trace, ["h2o", "rkv"], budget=64, layers=[-1]))   # doctest: +SKIP
    """
    table = per_step.reset_index(drop=True)
    chosen = _metrics(table, metrics, per_step=True)
    # Variants by label: a per-step table's runs are its labels.
    table = table.assign(_series=table["label" if "label" in table.columns else "policy"].astype(str))
    styles_table = table.drop_duplicates("_series")
    series = pd.Series(styles_table["_series"].values, index=styles_table.index)
    styles = _Styles(styles_table, series)
    fig, axes = _panels(1 + len(chosen), "Over the decode steps" + (f" (metrics: centred {smooth}-step moving average)"
                                                                    if smooth > 1 else ""), height=3.2)
    for name in dict.fromkeys(table["_series"]):
        rows = table[table["_series"] == name]
        style = dict(styles(name))
        style["marker"] = None
        kib = rows.groupby("step")["attended_bytes"].sum() / 1024
        axes[0].plot(kib.index, kib.values, label=name, **style)
        for ax, metric in zip(axes[1:], chosen):
            column = METRICS[metric][1]
            mean = pd.to_numeric(rows[column], errors="coerce").groupby(rows["step"]).mean()
            if smooth > 1:
                mean = mean.rolling(smooth, center=True, min_periods=1).mean()
            ax.plot(mean.index, mean.values, label=name, **style)
    axes[0].set_ylabel("attended KV (KiB, replayed layers)")
    _letter(axes[0], 0, "KV cache attended")
    for index, (ax, metric) in enumerate(zip(axes[1:], chosen), start=1):
        _, _, title, unit = METRICS[metric]
        ax.set_ylabel(unit)
        _letter(ax, index, title)
    for ax in axes:
        ax.set_xlabel("decode step (tokens generated)")
        _separate_coincident(ax)
    _legend(fig, axes)
    return fig


def kv_steps(results: pd.DataFrame, trace: Optional[str] = None, budget: Optional[float] = None) -> Figure:
    """Attended KV bytes at every decode step on one trace (`<trace>.kv-steps` of the CLI), all
    model layers (the replayed layers' sum scaled by num_layers / replayed layers), one line per
    policy variant at one budget (default the middle budget of the trace; a variant without a
    run at it shows its nearest and says so in the legend), with the 16-bit full cache. Needs
    the per-step CSVs of a sweep with `step_csv_dir` (its `steps_csv` column).

    >>> table = tk.sweep("configs/quick-sweep.json")                   # doctest: +SKIP
    >>> fig = plot.kv_steps(table, trace="traces/sample-synthetic.h5")  # doctest: +SKIP
    """
    from .columns import read_steps

    table, name = _one_trace(results, trace)
    if "steps_csv" not in table.columns or table["steps_csv"].isna().all():
        raise UsageError("the table has no per-step files (steps_csv): give the sweep config a step_csv_dir", 2)
    budgets = pd.to_numeric(table.get("param_budget", pd.Series(np.nan, index=table.index)), errors="coerce")
    known = sorted(budgets.dropna().unique())
    if budget is None and known:
        budget = known[(len(known) - 1) // 2]
    variants = _variants(table)
    styles = _Styles(table, variants)
    fig, axes = _panels(1, f"KV cache over the decode steps: {name}" + (f", budget {_text(float(budget))}"
                                                                         if budget is not None else ""))
    ax = axes[0]
    full_drawn = False
    for variant in dict.fromkeys(variants):
        rows = table[(variants == variant) & table["steps_csv"].notna()]
        if rows.empty:
            continue
        label = variant
        with_budget = budgets[rows.index].notna()
        if with_budget.any() and budget is not None:
            distance = (budgets[rows.index] - budget).abs()
            row = rows.loc[distance.idxmin()]
            if row["param_budget"] != budget:
                label += f" (budget {_text(float(row['param_budget']))}, nearest)"
        else:
            row = rows.iloc[0]
        steps = read_steps(row["steps_csv"])
        layers = steps["layer"].nunique()
        scale = float(row["num_layers"]) / layers if "num_layers" in row and pd.notna(row["num_layers"]) else 1.0
        per_step = steps.groupby("step")[["attended_bytes", "full_bytes"]].sum() * scale / 2**20
        style = dict(styles(variant))
        style["marker"] = None
        ax.plot(per_step.index, per_step["attended_bytes"], label=label, **style)
        if not full_drawn and "full" not in set(table["policy"]):
            ax.plot(per_step.index, per_step["full_bytes"], label="full cache (16-bit)", color=FULL_COLOR,
                    linestyle=(0, (8, 3)), linewidth=1)
            full_drawn = True
    ax.set_xlabel("decode step (tokens generated)")
    ax.set_ylabel("attended KV (MiB, all layers)")
    _letter(ax, 0, "Attended KV bytes")
    _separate_coincident(ax)
    _legend(fig, axes)
    return fig


#: Thought types of /tokens/thought (docs/trace-format.md) and their band colours.
THOUGHTS = {0: ("reasoning", "#CFE3F3"), 1: ("execution", "#F6E0C4"), 2: ("transition", "#E4D2EA")}


def thoughts(trace: str, per_step: Optional[pd.DataFrame] = None) -> Figure:
    """A trace's thought timeline (`<trace>.thoughts` of the CLI): reasoning, execution and
    transition bands over the decode steps from the trace's /tokens/thought and, given a per-step
    table of the trace (`replay_steps`), the full-cache attention sparsity of every step (mean
    over the replayed layers) on a fixed 0-1 axis.

    >>> steps = tk.replay_steps("traces/sample-synthetic.h5", steps=64, layers=[-1])
    >>> fig = plot.thoughts("traces/sample-synthetic.h5", steps)
    """
    from .trace import read_trace

    loaded = read_trace(trace, tensors=())
    labels = None if loaded.thought is None else np.asarray(loaded.thought[loaded.prompt_len:], dtype=int)
    if labels is None and per_step is None:
        raise UsageError(f"{trace}: no thought labels (/tokens/thought) and no per-step table to draw", 2)
    fig, axes = _panels(1, f"Thoughts and attention sparsity: {trace}", height=3.0)
    ax = axes[0]
    if labels is not None:
        start = 0
        for step in range(1, len(labels) + 1):
            if step == len(labels) or labels[step] != labels[start]:
                kind = THOUGHTS.get(int(labels[start]))
                if kind is not None:
                    ax.axvspan(start - 0.5, step - 0.5, color=kind[1], linewidth=0, label=kind[0])
                start = step
    if per_step is not None:
        sparsity = pd.to_numeric(per_step["sparsity"], errors="coerce").groupby(per_step["step"]).mean()
        ax.plot(sparsity.index, sparsity.values, color=FULL_COLOR, linewidth=1, label="sparsity (full cache)")
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.5, (len(labels) if labels is not None else int(per_step["step"].max()) + 1) - 0.5)
    ax.set_xlabel("decode step (tokens generated)")
    ax.set_ylabel("attention sparsity (fraction)")
    _letter(ax, 0, "Thought types and full-cache sparsity")
    _legend(fig, axes)
    return fig
