"""Finding and running the thinkv-sim binary."""

from __future__ import annotations

import os
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


def options(params: Mapping[str, object]) -> list[str]:
    """Policy parameters as command-line options: budget=64 -> --budget 64, a True flag -> --name.

    Underscores in names become dashes (r_bits -> --r-bits); None values are left out.
    """
    out: list[str] = []
    for name, value in params.items():
        if value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out += [flag, ",".join(str(v) for v in value)]
        else:
            out += [flag, str(value)]
    return out


def run(arguments: Iterable[str]) -> subprocess.CompletedProcess:
    """Runs `thinkv-sim ARGUMENTS`; raises ThinKVSimError with its message on a non-zero exit."""
    command = [binary(), *[str(a) for a in arguments]]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        message = done.stderr.strip().splitlines()
        raise ThinKVSimError(message[0] if message else f"thinkv-sim exited with {done.returncode}", done.returncode)
    return done
