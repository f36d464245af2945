"""The exceptions of thinkv_sim: one base, one subclass per cause.

Every error the package raises for a refused or failed request is a `ThinKVSimError`; its text
is one line (the binary's message, or the package's own in Python terms), `status` the exit
status (2 for usage errors), and `suggestion` the name meant, when the mistake was a near miss.

>>> import thinkv_sim as tk
>>> try:
...     tk.replay("traces/sample-synthetic.h5", policies="h20")
... except tk.UsageError as error:
...     print(error.suggestion)
h2o
"""

from __future__ import annotations

import re
from typing import Optional


class ThinKVSimError(RuntimeError):
    """Base of every error of the package: the request was refused or the run failed.

    Attributes: `message` (one line, also `str(error)`), `status` (the binary's exit status: 1
    bad input or failed run, 2 usage error, 127 binary not found), `suggestion` (the name that
    was probably meant, or None), `command` (the subcommand, e.g. "replay", or None) and
    `path` (the file the message is about, or None).
    """

    def __init__(self, message: str, status: int = 1, *, suggestion: Optional[str] = None,
                 command: Optional[str] = None, path: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.suggestion = suggestion
        self.command = command
        self.path = path


class UsageError(ThinKVSimError, ValueError):
    """An argument the package or the binary refuses: an unknown policy or parameter, a value out
    of range, options that exclude each other. Also a ValueError."""


class TraceError(ThinKVSimError, ValueError):
    """A trace that is missing, not HDF5, damaged, or lacks what the request needs (a layer that
    is not recorded). Also a ValueError, as `read_trace` raised before."""


class OutputError(ThinKVSimError, OSError):
    """A file the request would write cannot be written: its directory is missing, it is an
    input, a directory or a device that refuses the bytes. Also an OSError."""


class ConfigError(ThinKVSimError, ValueError):
    """A sweep config the binary refuses; the message names the key (`policies[1].parameters`)."""


_SUGGESTION = re.compile(r"did you mean ([^?\s]+)\?")


def suggestion_in(message: str) -> Optional[str]:
    """The name a "did you mean X?" in `message` proposes; an option in Python spelling (--layers
    -> layers, --r-bits -> r_bits), a policy name as it is.

    >>> suggestion_in("unknown option --layer (did you mean --layers?)")
    'layers'
    """
    found = _SUGGESTION.search(message)
    if not found:
        return None
    name = found.group(1)
    return name.lstrip("-").replace("-", "_") if name.startswith("--") else name
