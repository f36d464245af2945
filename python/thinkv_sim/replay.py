"""`thinkv-sim replay` as pandas tables."""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence, Union

import pandas as pd

from .runner import options, run, run_json


def _arguments(trace: str, policies: Union[str, Sequence[str]], budget: Optional[int], kv_percent: Optional[float],
               layers: Optional[Sequence[int]], steps: Optional[int], params: dict, extra: Sequence[str] = ()) -> list[str]:
    names = policies if isinstance(policies, str) else ",".join(policies)
    arguments = ["replay", f"--policy={names}"]
    if layers is not None:
        arguments.append("--layers=" + ",".join(str(layer) for layer in layers))
    if steps is not None:
        arguments.append(f"--steps={steps}")
    arguments += options({"budget": budget, "kv_percent": kv_percent, **params})
    # '--' ends the options: a trace named '-x.h5' or '--help' is a path, not an option.
    return arguments + list(extra) + ["--", os.fspath(trace)]


def _flatten(prefix: str, value, row: dict) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}_{key}" if prefix else key, inner, row)
    else:
        row[prefix] = value


def replay(trace: str, policies: Union[str, Sequence[str]] = "full", budget: Optional[int] = None,
           kv_percent: Optional[float] = None, layers: Optional[Sequence[int]] = None, steps: Optional[int] = None,
           **params) -> pd.DataFrame:
    """Replays `trace` through `policies`; one row per run with the summary the CLI reports.

    Columns: policy, label, the run's parameters (param_<name>), then the summary flattened
    with underscores (attention_kl_mean, output_error_p95, memory_mean_bytes, ...), and the
    memory match when kv_percent is given (memory_match_budget, memory_match_achieved_percent).
    The report's notes are in `df.attrs["notes"]`. Other keyword arguments are policy
    parameters (r_bits=8 -> --r-bits 8).
    """
    report = run_json(_arguments(trace, policies, budget, kv_percent, layers, steps, params, extra=["--json"]))
    rows = []
    for entry in report["runs"]:
        row = {"policy": entry["policy"], "label": entry["label"]}
        for name, value in entry.get("parameters", {}).items():
            row[f"param_{name}"] = value
        _flatten("", entry["summary"], row)
        if entry.get("memory_match") is not None:
            _flatten("memory_match", entry["memory_match"], row)
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.attrs["notes"] = report.get("notes", [])
    frame.attrs["trace"] = report.get("trace")
    return frame


def replay_steps(trace: str, policies: Union[str, Sequence[str]] = "full", budget: Optional[int] = None,
                 kv_percent: Optional[float] = None, layers: Optional[Sequence[int]] = None, steps: Optional[int] = None,
                 **params) -> pd.DataFrame:
    """The per-step table of `replay --csv`: one row per (policy, layer, decode step)."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "steps.csv")
        run(_arguments(trace, policies, budget, kv_percent, layers, steps, params, extra=[f"--csv={path}"]))
        return pd.read_csv(path)
