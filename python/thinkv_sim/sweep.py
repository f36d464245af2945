"""`thinkv-sim sweep` as a pandas table."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Mapping, Optional, Union

import pandas as pd

from . import columns
from .errors import ThinKVSimError
from .progress import ProgressArgument
from .runner import notes, run

_DICT_NAME = "config"


def sweep(config: Union[str, os.PathLike, Mapping], output: Optional[str] = None, shard: Optional[str] = None,
          *, threads: Optional[int] = None, progress: ProgressArgument = "auto") -> pd.DataFrame:
    """Runs the sweep a config describes (docs/configs.md) and returns its results table.

    `config` is a JSON file or the same as a dict. With `output` the CSV is kept there (it
    wins over the config's "output", which may then be left out; an interrupted sweep resumes
    from it, as on the command line); without, the config's "output" is used, or, when it has
    none, a temporary file. `shard` is "i/n". Columns: those of docs/csv.md with each parameter
    as param_<name> (see `thinkv_sim.columns`). Notes the sweep printed (rows dropped, runs
    skipped) are in `df.attrs["notes"]`. A config the binary refuses raises ConfigError naming
    the key (`policies[1].parameters.budget`).

    >>> import thinkv_sim as tk
    >>> table = tk.sweep({"traces": ["traces/sample-synthetic.h5"], "policies": ["full", "h2o", "rkv"],
    ...                   "parameters": {"budget": [32, 64]}, "steps": 32})
    >>> table.pivot_table(index="param_budget", columns="policy", values="attention_kl_mean")  # doctest: +SKIP
    """
    with tempfile.TemporaryDirectory() as directory:
        if isinstance(config, Mapping):
            path = os.path.join(directory, "sweep-config.json")
            with open(path, "w", encoding="utf-8") as file:
                json.dump(config, file)
            content = dict(config)
        else:
            path = os.fspath(config)
            content = _content(path)
        configured = content.get("output") if isinstance(content.get("output"), str) and content["output"] else None
        arguments = ["sweep"]
        if output is not None or configured is None:
            target = os.fspath(output) if output is not None else os.path.join(directory, "sweep.csv")
            arguments.append(f"--output={target}")
        else:
            target = _shard_path(configured, shard) if shard else configured
        if shard:
            arguments.append(f"--shard={shard}")
        if threads is not None:
            arguments.append(f"--threads={threads}")
        # '--' ends the options: a config named '-x.json' is a path, not an option.
        try:
            done = run(arguments + ["--", path], progress=progress, configs=[path], outputs=[target],
                       traces=_traces(content))
        except ThinKVSimError as error:
            if isinstance(config, Mapping) and error.path == path:
                _rename(error, path, _DICT_NAME)
            raise
        frame = columns.read_results(target)
    frame.attrs["notes"] = notes(done)
    frame.attrs["output"] = target if target != os.path.join(directory, "sweep.csv") else None
    return frame


def _shard_path(output: str, shard: str) -> str:
    """Where the binary writes shard "i/n" of a sweep whose output is `output` (docs/cluster.md)."""
    index, _, count = shard.partition("/")
    stem, extension = os.path.splitext(output)
    return f"{stem}.shard-{index.strip()}-of-{count.strip()}{extension or '.csv'}"


def _content(path: str) -> dict:
    """The config's keys, or {} when it cannot be read (the binary then says why)."""
    try:
        with open(path, encoding="utf-8") as file:
            content = json.load(file)
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def _traces(content: Mapping) -> list:
    """The trace paths a config names (patterns too: a message names the file, not the pattern)."""
    entries = content.get("traces")
    out = []
    for entry in entries if isinstance(entries, list) else []:
        path = entry.get("path") if isinstance(entry, Mapping) else entry
        if isinstance(path, str):
            out.append(path)
    return out


def _rename(error: ThinKVSimError, old: str, new: str) -> None:
    """Names the caller's dict instead of the temporary file it was written to."""
    error.message = new + error.message[len(old):] if error.message.startswith(old) else error.message
    error.path = new
    error.args = (error.message,)
