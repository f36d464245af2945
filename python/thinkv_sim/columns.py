"""One column naming scheme for every table of the package.

- Names are snake_case.
- `policy` is the policy's name (`h2o`), `label` the full label the command line prints
  (`h2o(budget=256)`).
- Each policy parameter is a column `param_<name>` with dashes as underscores
  (`param_budget`, `param_gqa_reduce`), holding the run's effective value.
- Summary metrics have the names of the sweep results CSV (docs/csv.md) in every table:
  `attention_kl_mean`, `output_error_p95`, `kv_bytes_mean`, `percent_of_full_mean`, ...; a
  replay adds the percentiles and counters a sweep does not write, under the same pattern.
- Per-step tables keep the per-step CSV's metric names (`attention_kl`, `attended_bytes`, ...).
"""

from __future__ import annotations

import os
from typing import Iterable, List

import pandas as pd

from .runner import keyword_name

#: The replay report's memory summary (JSON) under the results CSV's names.
MEMORY_COLUMNS = {
    "eviction_step_percent": "eviction_step_percent",
    "final_full_bytes": "full_bytes_final",
    "final_percent_of_full": "percent_of_full_final",
    "final_resident_bytes": "kv_bytes_final_resident",
    "final_resident_tokens": "tokens_resident_final",
    "mean_attended_tokens": "tokens_attended_mean",
    "mean_bits_per_element": "bits_per_element_mean",
    "mean_bytes": "kv_bytes_mean",
    "mean_percent_of_full": "percent_of_full_mean",
    "mean_slot_occupancy": "slot_occupancy_mean",
    "peak_blocks": "paging_blocks_peak",
    "peak_bytes": "kv_bytes_peak",
    "peak_paged_bytes": "paged_bytes_peak",
    "peak_resident_bytes": "kv_bytes_peak_resident",
    "total_compaction_bytes": "compaction_bytes_total",
}

#: The replay report's memory match (JSON) under the results CSV's names.
MATCH_COLUMNS = {
    "target_percent": "kv_percent",
    "target_bytes": "kv_bytes_target",
    "statistic": "kv_match",
    "status": "kv_match_status",
    "achieved_percent": "achieved_percent",
    "achieved_bytes": "achieved_bytes",
    "trials": "kv_match_trials",
}

#: Fidelity summaries of the replay report: their name in the tables.
FIDELITY_COLUMNS = {"attention_kl": "attention_kl", "mass_recall": "mass_recall", "output_error": "output_error",
                    "top_k_recall": "topk_recall"}


def param_column(name: str) -> str:
    """The column of a parameter: gqa-reduce -> param_gqa_reduce (a name already prefixed stays)."""
    snake = keyword_name(name)
    return snake if snake.startswith("param_") else "param_" + snake


def _flatten(prefix: str, value, row: dict) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}_{key}" if prefix else str(key), inner, row)
    else:
        row[prefix] = value


def replay_row(entry: dict, report: dict) -> dict:
    """One run of a replay's JSON report as a row under the package's column names."""
    header = report.get("header") or {}
    row = {"trace": report.get("trace"), "model": header.get("model"), "num_layers": header.get("num_layers"),
           "decode_steps": report.get("decode_steps"), "policy": entry["policy"], "label": entry["label"]}
    for name, value in entry.get("parameters", {}).items():
        row[param_column(name)] = value
    summary = dict(entry.get("summary", {}))
    for name, column in FIDELITY_COLUMNS.items():
        for statistic, value in (summary.pop(name, None) or {}).items():
            row[f"{column}_{statistic}"] = value
    for name, value in (summary.pop("memory", None) or {}).items():
        row[MEMORY_COLUMNS.get(name, "memory_" + name)] = value
    for name, value in summary.items():
        _flatten(name, value, row)
    match = entry.get("memory_match")
    if match:
        for name, value in match.items():
            if name != "budget":  # the budget found is the run's param_budget
                row[MATCH_COLUMNS.get(name, "kv_match_" + name)] = value
    row["compresses"] = entry.get("compresses")
    return row


def _move_first(frame: pd.DataFrame, names: Iterable[str]) -> pd.DataFrame:
    first = [n for n in names if n in frame.columns]
    return frame[first + [c for c in frame.columns if c not in first]]


def results(frame: pd.DataFrame) -> pd.DataFrame:
    """A sweep results CSV (docs/csv.md) under the package's names: its parameter columns (those
    between `label` and `layers`) become param_<name>."""
    columns: List[str] = list(frame.columns)
    if "label" in columns and "layers" in columns:
        start, end = columns.index("label") + 1, columns.index("layers")
        frame = frame.rename(columns={c: param_column(c) for c in columns[start:end]})
    return frame


def steps(frame: pd.DataFrame) -> pd.DataFrame:
    """A per-step CSV (`replay --csv`, a sweep's step_csv_dir) under the package's names: its
    `policy` (the label) becomes `label`, `policy_name` becomes `policy`, and the parameter
    columns after it param_<name>."""
    columns: List[str] = list(frame.columns)
    renames = {"policy": "label"}
    if "policy_name" in columns:
        renames["policy_name"] = "policy"
        for column in columns[columns.index("policy_name") + 1:]:
            if column != "token_text":
                renames[column] = param_column(column)
    frame = frame.rename(columns=renames)
    if "policy" not in frame.columns and "label" in frame.columns:
        frame.insert(0, "policy", frame["label"].astype(str).str.split("(", n=1).str[0])
    return _move_first(frame, ["policy", "label"])


def _read_csv(path) -> pd.DataFrame:
    # Only an empty cell is missing (docs/csv.md): a token's text "NA" or "null" stays text.
    return pd.read_csv(os.fspath(path), keep_default_na=False, na_values=[""])


def read_results(path: str) -> pd.DataFrame:
    """Reads a sweep results CSV (or a merged one) into the package's column names.

    >>> import thinkv_sim as tk
    >>> table = tk.read_results("out/budget-sweep.csv")      # doctest: +SKIP
    >>> table[["policy", "label", "param_budget", "attention_kl_mean"]].head()  # doctest: +SKIP
    """
    return results(_read_csv(path))


def read_steps(path: str) -> pd.DataFrame:
    """Reads a per-step CSV (`replay --csv`, or one of a sweep's `step_csv_dir`) into the package's column names.

    >>> import thinkv_sim as tk
    >>> steps = tk.read_steps("steps.csv")                   # doctest: +SKIP
    >>> steps.groupby(["policy", "step"]).attended_bytes.sum()   # doctest: +SKIP
    """
    return steps(_read_csv(path))
