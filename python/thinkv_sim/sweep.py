"""`thinkv-sim sweep` as a pandas table."""

from __future__ import annotations

import os
import tempfile
from typing import Optional

import pandas as pd

from .runner import run


def sweep(config: str, output: Optional[str] = None, shard: Optional[str] = None) -> pd.DataFrame:
    """Runs the sweep described by the JSON file `config` and returns its results CSV.

    With `output` the CSV is kept there (and an interrupted sweep resumes from it, as on the
    command line); without, it goes to a temporary file. `shard` is "i/n".
    """
    def go(path: str) -> pd.DataFrame:
        arguments = ["sweep", f"--output={path}"]
        if shard:
            arguments.append(f"--shard={shard}")
        # '--' ends the options: a config named '-x.json' is a path, not an option.
        run(arguments + ["--", os.fspath(config)])
        return pd.read_csv(path)

    if output is not None:
        return go(os.fspath(output))
    with tempfile.TemporaryDirectory() as directory:
        return go(os.path.join(directory, "sweep.csv"))
