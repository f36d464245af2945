"""Progress of the binary while it runs: relayed as lines on stderr, a tqdm bar, or a callback.

The binary prints a progress line on stderr at a fixed interval (its `--progress plain` mode);
the package reads those lines as they come and hands each to the chosen reporter. Runs shorter
than the interval report nothing.

>>> import thinkv_sim as tk
>>> seen = []
>>> trace = "traces/smollm2-135m-math.h5"
>>> runs = tk.replay(trace, ["h2o", "rkv"], kv_percent=10, progress=seen.append)  # doctest: +SKIP
>>> seen[0]                                   # doctest: +SKIP
Progress(command='replay', fraction=0.13, detail='matching round 1: layer 29 (1/1), step 128/1005', elapsed=3.0)
"""

from __future__ import annotations

import dataclasses
import re
import sys
from typing import Callable, Optional, Union

from .errors import UsageError

#: Seconds between progress lines relayed to stderr.
STDERR_INTERVAL = 5.0
#: Seconds between updates given to a callback or a tqdm bar.
CALLBACK_INTERVAL = 0.5

_LINE = re.compile(r"^progress: (\S+) +(\d+(?:\.\d+)?)% ?(.*?) \((\d+(?:\.\d+)?)s\)$")


@dataclasses.dataclass(frozen=True)
class Progress:
    """One progress report: the command ("replay", "sweep"), the fraction done of the current
    pass (0 to 1; an equal-memory replay makes one pass per bisection round, and says which
    in `detail`), what is being done, and seconds since the binary started."""

    command: str
    fraction: float
    detail: str
    elapsed: float


def parse_line(line: str) -> Optional[Progress]:
    """A `Progress` from one line of the binary's stderr, or None for any other line."""
    found = _LINE.match(line.rstrip("\n"))
    if not found:
        return None
    command, percent, detail, elapsed = found.groups()
    return Progress(command, float(percent) / 100, detail, float(elapsed))


ProgressArgument = Union[None, bool, str, Callable[[Progress], object]]


class Reporter:
    """Receives `Progress` reports during one run; `close()` ends the run's display."""

    @property
    def interval(self) -> Optional[float]:
        """Seconds between the binary's progress lines; None: it prints none."""
        return None

    def report(self, progress: Progress) -> None:
        pass

    def close(self) -> None:
        pass


class _Lines(Reporter):
    @property
    def interval(self) -> float:
        return STDERR_INTERVAL

    def report(self, progress: Progress) -> None:
        print(f"thinkv-sim {progress.command}: {progress.fraction:.0%} {progress.detail} ({progress.elapsed:.0f} s)",
              file=sys.stderr, flush=True)


class _Callback(Reporter):
    @property
    def interval(self) -> float:
        return CALLBACK_INTERVAL

    def __init__(self, function: Callable[[Progress], object]):
        self.function = function

    def report(self, progress: Progress) -> None:
        self.function(progress)


class _Bar(_Callback):
    def __init__(self, tqdm):
        super().__init__(self._update)
        self.tqdm = tqdm
        self.bar = None

    def _update(self, progress: Progress) -> None:
        if self.bar is None:
            self.bar = self.tqdm(total=100, desc=progress.command, unit="%", leave=False)
        # An equal-memory replay restarts at 0 % for each bisection round: the bar follows.
        self.bar.n = round(progress.fraction * 100)
        self.bar.set_postfix_str(progress.detail, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def reporter(progress: ProgressArgument) -> Reporter:
    """The reporter a function's `progress` argument asks for:

    - "auto" (the default): a tqdm bar when tqdm is installed, else lines on stderr;
    - "stderr" or True: a line on stderr every `STDERR_INTERVAL` seconds;
    - "tqdm": a tqdm bar (tqdm.auto: a widget in a notebook);
    - a callable: called with a `Progress` every `CALLBACK_INTERVAL` seconds;
    - None, False or "none": nothing.
    """
    if progress is None or progress is False or progress == "none":
        return Reporter()
    if progress is True or progress == "stderr":
        return _Lines()
    if callable(progress):
        return _Callback(progress)
    if progress in ("auto", "tqdm"):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            if progress == "tqdm":
                raise UsageError("progress='tqdm' needs the tqdm package (pip install tqdm)", 2) from None
            return _Lines()
        return _Bar(tqdm)
    raise UsageError(f"progress={progress!r}: give 'auto', 'stderr', 'tqdm', 'none', True, False or a callable", 2)
