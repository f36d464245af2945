"""`thinkv-sim replay` as pandas tables."""

from __future__ import annotations

import os
import tempfile
from typing import Optional, Sequence

import pandas as pd

from . import columns
from .policies import PolicyArgument, check, normalize, spelling
from .progress import ProgressArgument
from .runner import notes, option_name, options, run, run_json

# The functions' own arguments, suggested when a keyword parameter is misspelt (layer -> layers).
_OWN_KEYWORDS = ("budget", "kv_percent", "kv_bytes", "kv_match", "kv_adapt", "layers", "steps", "topk", "threads", "paging",
                 "block_size", "progress")


def _arguments(trace, policies: PolicyArgument, budget, kv_percent, layers, steps, replay_options: dict,
               params: dict, extra: Sequence[str]) -> tuple[list[str], dict]:
    pairs = normalize(policies)
    shared = dict(params)
    if budget is not None:
        shared["budget"] = budget
    parameter_options = options(shared)  # first: refuses the command's own options (csv=, json=) by name
    check(pairs, {k: v for k, v in shared.items() if v is not None and v is not False}, _OWN_KEYWORDS)
    arguments = ["replay", f"--policy={spelling(pairs)}"]
    if layers is not None:
        arguments.append("--layers=" + ",".join(str(layer) for layer in layers))
    if steps is not None:
        arguments.append(f"--steps={steps}")
    if kv_percent is not None:
        arguments.append(f"--kv-percent={kv_percent}")
    for name, value in replay_options.items():
        if value is not None:
            arguments.append(f"--{option_name(name)}={value}")
    arguments += parameter_options
    # The binary's messages name options; the error shows the keyword the caller wrote.
    keywords = {option_name(k): k for k in [*shared, *replay_options, "kv_percent", "layers", "steps"]}
    for _, per_policy in pairs:
        keywords.update({option: option.replace("-", "_") for option in per_policy})
    # '--' ends the options: a trace named '-x.h5' or '--help' is a path, not an option.
    return arguments + list(extra) + ["--", os.fspath(trace)], keywords


def replay(trace: str, policies: PolicyArgument = "full", budget: Optional[int] = None,
           kv_percent: Optional[float] = None, layers: Optional[Sequence[int]] = None, steps: Optional[int] = None,
           *, kv_bytes: Optional[int] = None, kv_match: Optional[str] = None, kv_adapt: bool = False,
           topk: Optional[int] = None, threads: Optional[int] = None, paging: Optional[str] = None,
           block_size: Optional[int] = None, progress: ProgressArgument = "auto", **params) -> pd.DataFrame:
    """Replays `trace` through `policies`; one row per run with the summary the CLI reports.

    `policies`: "h2o", "h2o,rkv", a list, or per-policy parameters as the command line spells
    them ("h2o:budget=64", a list of (name, {parameter: value}) pairs, or a dict
    {"h2o": {"budget": 64}}). Other keyword arguments are parameters of every chosen policy
    that has them (r_bits=8 -> --r-bits=8); one none of them has raises UsageError naming the
    closest. `kv_percent` (or `kv_bytes`) compares at equal memory: every policy with a budget
    is matched to that share of the full cache. `layers` are recorded layer indices (negative
    count from the last). `progress`: see `thinkv_sim.progress.reporter` ("auto" shows a bar
    or stderr lines during long runs; a callable receives `Progress` reports).

    Columns (see `thinkv_sim.columns`): trace, model, num_layers, decode_steps, policy, label,
    param_<name> per parameter, the summary under the sweep CSV's names (attention_kl_mean,
    output_error_p95, kv_bytes_mean, percent_of_full_mean, ...), with a memory target
    kv_percent, kv_match_status, achieved_percent, and compresses (when the cache compresses).
    With `kv_adapt=True`, a target out of reach at a policy's compression cadence is matched at
    the cadence value that reaches it (`replay --kv-adapt`; the note says what changed).
    The report's notes are in `df.attrs["notes"]`, its timing in `df.attrs["timing"]`.

    >>> import thinkv_sim as tk
    >>> runs = tk.replay("traces/sample-synthetic.h5", ["full", "h2o", "rkv"], budget=64, steps=32)
    >>> runs[["label", "attention_kl_mean", "kv_bytes_mean"]]          # doctest: +SKIP
    >>> tk.replay("traces/sample-synthetic.h5", {"h2o": {"budget": 32}, "kivi": {"k_bits": 4}})  # doctest: +SKIP
    """
    replay_options = {"kv_bytes": kv_bytes, "kv_match": kv_match, "topk": topk, "threads": threads, "paging": paging,
                      "block_size": block_size}
    arguments, keywords = _arguments(trace, policies, budget, kv_percent, layers, steps, replay_options, params,
                                     extra=["--json"] + (["--kv-adapt"] if kv_adapt else []))
    report = run_json(arguments, progress=progress, traces=[os.fspath(trace)], keywords=keywords)
    rows = [columns.replay_row(entry, report) for entry in report["runs"]]
    frame = pd.DataFrame(rows)
    # Parameters right after the label, as in a sweep's results.
    identity = ["trace", "model", "num_layers", "decode_steps", "policy", "label"]
    parameters = [c for c in frame.columns if c.startswith("param_")]
    frame = frame[identity + parameters + [c for c in frame.columns if c not in identity and c not in parameters]]
    if "kv_match_status" in frame.columns:
        # As in a sweep's results: a policy that was not matched has no memory target.
        frame.loc[frame["kv_match_status"] == "not matched", "kv_percent"] = None
    frame.attrs["notes"] = report.get("notes", [])
    frame.attrs["trace"] = report.get("trace")
    frame.attrs["timing"] = report.get("timing", {})
    return frame


def replay_steps(trace: str, policies: PolicyArgument = "full", budget: Optional[int] = None,
                 kv_percent: Optional[float] = None, layers: Optional[Sequence[int]] = None,
                 steps: Optional[int] = None, *, kv_bytes: Optional[int] = None, kv_match: Optional[str] = None,
                 topk: Optional[int] = None, threads: Optional[int] = None, paging: Optional[str] = None,
                 block_size: Optional[int] = None, progress: ProgressArgument = "auto", **params) -> pd.DataFrame:
    """The per-step table of `replay --csv`: one row per (policy, layer, decode step).

    Arguments as for `replay`. Columns: policy (the name), label, layer, step, position, the
    per-step metrics of docs/csv.md (attended_bytes, attention_kl, sparsity, ...), and
    param_<name> per parameter. The run's notes are in `df.attrs["notes"]`.

    >>> import thinkv_sim as tk
    >>> steps = tk.replay_steps("traces/sample-synthetic.h5", ["h2o", "rkv"], budget=64, layers=[-1])
    >>> steps.groupby(["policy", "step"]).attended_bytes.sum().unstack(0).plot()   # doctest: +SKIP
    """
    replay_options = {"kv_bytes": kv_bytes, "kv_match": kv_match, "topk": topk, "threads": threads, "paging": paging,
                      "block_size": block_size}
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "steps.csv")
        arguments, keywords = _arguments(trace, policies, budget, kv_percent, layers, steps, replay_options, params,
                                         extra=[f"--csv={path}"])
        done = run(arguments, progress=progress, traces=[os.fspath(trace)], outputs=[path], keywords=keywords)
        frame = columns.read_steps(path)
    frame.attrs["notes"] = notes(done)
    frame.attrs["trace"] = os.fspath(trace)
    return frame
