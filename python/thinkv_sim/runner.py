"""Finding and running the thinkv-sim binary."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from typing import Iterable, Mapping


class ThinKVSimError(RuntimeError):
    """The binary refused the request (its one-line message is the error's text)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def binary() -> str:
    """The thinkv-sim executable: $THINKV_SIM if set, else the one on PATH."""
    explicit = os.environ.get("THINKV_SIM")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise ThinKVSimError(f"THINKV_SIM={explicit} is not an executable file", 127)
        return explicit
    found = shutil.which("thinkv-sim")
    if not found:
        raise ThinKVSimError("thinkv-sim not found on PATH; build it (make build) and add .build/release to PATH, or set THINKV_SIM", 127)
    return found


# Options of the commands themselves that write files or change what is printed: the functions
# of this package choose them (or offer them as their own arguments), never **params.
RESERVED_OPTIONS = frozenset({
    "csv", "kept", "cache-timeline", "shard-state", "json", "output", "o", "help", "h", "progress", "version",
    "policy", "p", "layers", "steps", "shard", "stop-after", "dry-run",
})

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")


def options(params: Mapping[str, object]) -> list[str]:
    """Policy parameters as command-line options: budget=64 -> --budget=64, a True flag -> --name.

    Underscores in names become dashes (r_bits -> --r-bits); None and False values are left out.
    Names of the command's own options that write files or change the output (csv=, kept=,
    json=, ...) raise ThinKVSimError: they are not policy parameters.
    """
    out: list[str] = []
    for name, value in params.items():
        if not isinstance(name, str) or not _NAME.match(name):
            raise ThinKVSimError(f"{name!r} is not a parameter name (letters, digits, '_' and '-')", 2)
        option = name.replace("_", "-")
        if option in RESERVED_OPTIONS:
            raise ThinKVSimError(f"{name}= is not a policy parameter (--{option} is an option this function sets itself or does not offer)", 2)
        if value is None or value is False:
            continue
        # --name=value keeps a value that starts with '-' from reading as an option.
        if value is True:
            out.append(f"--{option}")
        elif isinstance(value, (list, tuple)):
            out.append(f"--{option}=" + ",".join(str(v) for v in value))
        else:
            out.append(f"--{option}={value}")
    return out


def _one_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit] + "…"


def run(arguments: Iterable[str]) -> subprocess.CompletedProcess:
    """Runs `thinkv-sim ARGUMENTS`; raises ThinKVSimError with its one-line message on a non-zero
    exit (or the signal that ended it)."""
    command = [binary(), *[os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in arguments]]
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL)
    except OSError as error:
        raise ThinKVSimError(f"cannot run {command[0]}: {error.strerror or error}", 127) from None
    if done.returncode != 0:
        message = _one_line(done.stderr)
        if done.returncode < 0:
            message = f"thinkv-sim was killed by signal {-done.returncode}" + (f": {message}" if message else "")
        raise ThinKVSimError(message or f"thinkv-sim exited with {done.returncode}", done.returncode)
    return done


def run_json(arguments: Iterable[str]):
    """Runs a command that prints JSON (its --json option) and parses what it printed."""
    done = run(arguments)
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise ThinKVSimError(f"thinkv-sim printed no JSON report: {_one_line(done.stdout) or '(nothing)'}", 1) from None
