"""Finding and running the thinkv-sim binary, relaying its progress, and typing its errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from typing import Iterable, Mapping, Optional, Sequence

from .errors import ConfigError, OutputError, ThinKVSimError, TraceError, UsageError, suggestion_in
from .progress import ProgressArgument, parse_line, reporter


def binary() -> str:
    """The thinkv-sim executable: $THINKV_SIM if set, else the one on PATH.

    >>> import thinkv_sim as tk
    >>> tk.binary()                               # doctest: +SKIP
    '/usr/local/bin/thinkv-sim'
    """
    explicit = os.environ.get("THINKV_SIM")
    if explicit:
        if not (os.path.isfile(explicit) and os.access(explicit, os.X_OK)):
            raise ThinKVSimError(f"THINKV_SIM={explicit} is not an executable file", 127)
        return explicit
    found = shutil.which("thinkv-sim")
    if not found:
        raise ThinKVSimError("thinkv-sim not found on PATH; build it (make build) and add .build/release to PATH, "
                             "or set THINKV_SIM", 127)
    return found


# Options of the commands themselves that write files or change what is printed: the functions
# of this package choose them (or offer them as their own arguments), never **params.
RESERVED_OPTIONS = frozenset({
    "csv", "kept", "cache-timeline", "shard-state", "json", "output", "o", "help", "h", "progress", "version",
    "policy", "p", "layers", "steps", "shard", "stop-after", "dry-run",
})

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*\Z")


def option_name(keyword: str) -> str:
    """The command-line spelling of a keyword argument: r_bits -> r-bits."""
    return keyword.replace("_", "-")


def keyword_name(option: str) -> str:
    """The Python spelling of a command-line option or parameter: r-bits -> r_bits."""
    return option.lstrip("-").replace("-", "_")


def check_name(name: object) -> str:
    """`name` if it can be a parameter name; else a UsageError."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise UsageError(f"{name!r} is not a parameter name (letters, digits, '_' and '-')", 2)
    return name


def option_value(value: object) -> str:
    """A Python value as the binary reads it: True -> true, a list -> comma-separated."""
    if value is True or value is False:
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ",".join(option_value(v) for v in value)
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def options(params: Mapping[str, object]) -> list[str]:
    """Policy parameters as command-line options: budget=64 -> --budget=64, a True flag -> --name.

    Underscores in names become dashes (r_bits -> --r-bits); None and False values are left out.
    Names of the command's own options that write files or change the output (csv=, kept=,
    json=, ...) raise UsageError: they are not policy parameters.

    >>> options({"budget": 64, "r_bits": 8, "thoughts": "labels", "skip": None})
    ['--budget=64', '--r-bits=8', '--thoughts=labels']
    """
    out: list[str] = []
    for name, value in params.items():
        option = option_name(check_name(name))
        if option in RESERVED_OPTIONS:
            raise UsageError(f"{name}= is not a policy parameter (--{option} is an option this function sets itself "
                             "or does not offer)", 2)
        if value is None or value is False:
            continue
        # --name=value keeps a value that starts with '-' from reading as an option.
        out.append(f"--{option}" if value is True else f"--{option}={option_value(value)}")
    return out


def _stringify(argument) -> str:
    return os.fspath(argument) if isinstance(argument, os.PathLike) else str(argument)


def _error_line(lines: Sequence[str]) -> str:
    """The binary's error message among its stderr lines (not notes, not the usage hint)."""
    candidates = [line for line in lines if line.strip() and not line.startswith("Run 'thinkv-sim")
                  and ": note: " not in line]
    line = candidates[-1].strip() if candidates else ""
    return line if len(line) <= 600 else line[:600] + "…"


_PREFIX = re.compile(r"^thinkv-sim(?: ([a-z-]+))?: ")


def classify(message: str, status: int, *, traces: Sequence[str] = (), outputs: Sequence[str] = (),
             configs: Sequence[str] = (), keywords: Optional[Mapping[str, str]] = None) -> ThinKVSimError:
    """The typed error for one message of the binary (with its "thinkv-sim CMD: " prefix or not).

    The file the message is about decides first: a file the request writes -> OutputError, a
    trace it reads -> TraceError, its sweep config -> ConfigError; otherwise exit status 2 ->
    UsageError, anything else ThinKVSimError. `keywords` maps options that came from keyword
    arguments to their Python names, which replace them in the message (--r-bits -> r_bits).

    >>> error = classify("thinkv-sim replay: t.h5: no such file", 1, traces=["t.h5"])
    >>> type(error).__name__, error.path, error.command
    ('TraceError', 't.h5', 'replay')
    """
    command = None
    found = _PREFIX.match(message)
    if found:
        command = found.group(1)
        message = message[found.end():]
    suggestion = suggestion_in(message)
    for option, keyword in (keywords or {}).items():
        message = re.sub(rf"--{re.escape(option)}(?![A-Za-z0-9-])", keyword, message)

    def about(paths: Sequence[str]) -> Optional[str]:
        return next((p for p in sorted(paths, key=len, reverse=True) if p and message.startswith(p + ":")), None)

    # Outputs first: an output that is also an input is refused as an output.
    for kind, paths in ((OutputError, outputs), (TraceError, traces), (ConfigError, configs)):
        path = about([_stringify(p) for p in paths])
        if path is not None:
            return kind(message, status, suggestion=suggestion, command=command, path=path)
    kind = UsageError if status == 2 else ThinKVSimError
    return kind(message, status, suggestion=suggestion, command=command)


def _environment(interval: Optional[float]) -> dict:
    environment = dict(os.environ)
    if interval is None:
        environment["THINKV_PROGRESS"] = "none"
    else:
        environment["THINKV_PROGRESS"] = "plain"
        environment["THINKV_PROGRESS_SECONDS"] = str(interval)
    return environment


def run(arguments: Iterable[object], *, progress: ProgressArgument = None, traces: Sequence[str] = (),
        outputs: Sequence[str] = (), configs: Sequence[str] = (),
        keywords: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess:
    """Runs `thinkv-sim ARGUMENTS`, relaying its progress (see `progress.reporter`).

    Returns the completed process (stdout; stderr without progress lines). A non-zero exit
    raises the typed error of its one-line message (see `classify`; `traces`, `outputs` and
    `configs` are the files of the request); interrupting (Ctrl-C, a notebook's stop button)
    ends the binary too.

    >>> import thinkv_sim as tk
    >>> tk.run(["--version"]).stdout             # doctest: +SKIP
    'thinkv-sim 0.1.0\\n'
    """
    command = [binary(), *[_stringify(a) for a in arguments]]
    relay = reporter(progress)
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, errors="replace", env=_environment(relay.interval))
    except OSError as error:
        raise ThinKVSimError(f"cannot run {command[0]}: {error.strerror or error}", 127) from None
    # stdout is drained on its own thread: a large JSON report must not block the binary while
    # this thread waits for stderr lines.
    captured: list[str] = []
    reader = threading.Thread(target=lambda: captured.append(process.stdout.read()), daemon=True)
    reader.start()
    other: list[str] = []
    try:
        for line in process.stderr:
            found = parse_line(line)
            if found is None:
                other.append(line.rstrip("\n"))
            else:
                relay.report(found)
        process.wait()
        reader.join()
    except BaseException:
        process.kill()
        process.wait()
        raise
    finally:
        relay.close()
        reader.join(timeout=10)  # the pipe is at its end once the binary is gone
        process.stdout.close()
        process.stderr.close()
    stdout = captured[0] if captured else ""
    stderr = "\n".join(other) + ("\n" if other else "")
    if process.returncode != 0:
        message = _error_line(other)
        if process.returncode < 0:
            message = f"thinkv-sim was killed by signal {-process.returncode}" + (f": {message}" if message else "")
        raise classify(message or f"thinkv-sim exited with {process.returncode}", process.returncode,
                       traces=traces, outputs=outputs, configs=configs, keywords=keywords)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def notes(done: subprocess.CompletedProcess) -> list[str]:
    """The "note:" lines a successful run printed on stderr, without the "thinkv-sim CMD: note: " prefix."""
    out = []
    for line in done.stderr.splitlines():
        found = re.match(r"^(?:thinkv-sim(?: [a-z-]+)?: )?note: (.*)$", line)
        if found:
            out.append(found.group(1))
    return out


def run_json(arguments: Iterable[object], **kwargs):
    """Runs a command that prints JSON (its --json option) and parses what it printed; keyword
    arguments as for `run`.

    >>> import thinkv_sim as tk
    >>> report = tk.run_json(["replay", "traces/sample-synthetic.h5", "--steps=4", "--json"])
    >>> report["runs"][0]["policy"]
    'full'
    """
    done = run(arguments, **kwargs)
    try:
        return json.loads(done.stdout)
    except ValueError:
        line = done.stdout.strip().splitlines()[0] if done.stdout.strip() else "(nothing)"
        raise ThinKVSimError(f"thinkv-sim printed no JSON report: {line[:300]}", 1) from None
