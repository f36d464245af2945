"""The registered policies and their parameters (`thinkv-sim policies --json`), and the checks
and spelling of the policies a function is asked to run."""

from __future__ import annotations

import difflib
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import pandas as pd

from .errors import UsageError
from .runner import binary, check_name, keyword_name, option_name, option_value, run_json

#: What a function's `policies` argument accepts: "h2o", "h2o,rkv", "h2o:budget=64", a list of
#: those or of (name, {parameter: value}) pairs, or a dict {name: {parameter: value}}.
PolicyArgument = Union[str, Sequence[Union[str, Tuple[str, Mapping[str, object]]]], Mapping[str, Mapping[str, object]]]

_CATALOG: Dict[Tuple[str, float], dict] = {}


def catalog() -> dict:
    """{policy: {"summary": str, "parameters": {name: entry of policies --json}}}, read once per binary."""
    path = binary()
    key = (path, os.stat(path).st_mtime)
    if key not in _CATALOG:
        entries = run_json(["policies", "--json"])
        _CATALOG[key] = {entry["name"]: {"summary": entry["summary"],
                                         "parameters": {p["name"]: p for p in entry["parameters"]}}
                         for entry in entries}
    return _CATALOG[key]


_KINDS = {"INT": "integer", "NUMBER": "number", "true|false": "flag"}


def _kind(entry: dict) -> str:
    if entry["kind"] in _KINDS:
        return _KINDS[entry["kind"]]
    return "choice" if entry.get("choices") or "|" in entry["kind"] else "text"


def _typed(raw: Optional[str], kind: str):
    """A default as typed on the command line, as a Python value ("auto" stays a string)."""
    if raw is None or raw == "auto":
        return raw
    try:
        if kind == "integer":
            return int(raw)
        if kind == "number":
            return float(raw)
    except ValueError:
        return raw
    if kind == "flag":
        return raw == "true"
    return raw


def policies() -> pd.DataFrame:
    """Every registered policy and parameter, one row per (policy, parameter).

    Columns: `policy`, `summary`, `parameter` (as the command line spells it, `k-bits`),
    `keyword` (as a keyword argument, `k_bits`), `column` (its column in every table of this
    package, `param_k_bits`), `kind` (integer, number, choice, flag, text), `form` (the command
    line's: INT, NUMBER, a|b, LIST, FILE), `default` (a typed value; "auto" when derived from
    other parameters, None when required), `required`, `minimum` and `maximum` (numbers; NaN
    when unbounded or not a number), `choices` (a list, or None) and `help`. A policy without
    parameters (the full cache) has one row with `parameter` None.

    >>> import thinkv_sim as tk
    >>> table = tk.policies()
    >>> table[(table.policy == "kivi") & (table.keyword == "k_bits")][["default", "minimum", "maximum"]].values.tolist()
    [[2, 1.0, 8.0]]
    """
    rows = []
    for name, entry in catalog().items():
        if not entry["parameters"]:
            rows.append({"policy": name, "summary": entry["summary"], "parameter": None, "required": False})
        for parameter in entry["parameters"].values():
            kind = _kind(parameter)
            required = bool(parameter.get("required", False))
            rows.append({
                "policy": name, "summary": entry["summary"], "parameter": parameter["name"],
                "keyword": keyword_name(parameter["name"]), "column": "param_" + keyword_name(parameter["name"]),
                "kind": kind, "form": parameter["kind"],
                "default": None if required else _typed(parameter.get("default"), kind),
                "required": required, "minimum": parameter.get("minimum"), "maximum": parameter.get("maximum"),
                "choices": parameter.get("choices") or None, "help": parameter.get("help", ""),
            })
    columns = ["policy", "summary", "parameter", "keyword", "column", "kind", "form", "default", "required",
               "minimum", "maximum", "choices", "help"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["minimum"] = pd.to_numeric(frame["minimum"])
    frame["maximum"] = pd.to_numeric(frame["maximum"])
    return frame


def _hint(word: str, candidates: Sequence[str]) -> Optional[str]:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return close[0] if close else None


def _unknown_policy(name: str, known: Sequence[str]) -> UsageError:
    hint = _hint(name, known)
    message = f"unknown policy {name!r} (" + (f"did you mean {hint}? " if hint else "") + "known: " + ", ".join(known)
    message += ")"
    return UsageError(message, 2, suggestion=hint)


def _split(text: str) -> List[Tuple[str, Dict[str, str]]]:
    """"h2o:budget=64,rkv" -> [("h2o", {"budget": "64"}), ("rkv", {})] (parameters as the binary spells them)."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            raise UsageError(f"policies={text!r}: an empty item (a stray comma?)", 2)
        name, *assignments = item.split(":")
        values: Dict[str, str] = {}
        for assignment in assignments:
            key, equals, value = assignment.partition("=")
            if not equals or not key:
                raise UsageError(f"policies={text!r}: {assignment!r} is not parameter=value", 2)
            values[option_name(key)] = value
        out.append((name, values))
    return out


def normalize(policies: PolicyArgument) -> List[Tuple[str, Dict[str, str]]]:
    """The `policies` argument as (name, {option: value}) pairs, names and values as the binary spells them.

    >>> normalize({"h2o": {"budget": 64}, "rkv": {"budget": 128, "divide": 8}})
    [('h2o', {'budget': '64'}), ('rkv', {'budget': '128', 'divide': '8'})]
    """
    if isinstance(policies, str):
        return _split(policies)
    items = list(policies.items()) if isinstance(policies, Mapping) else list(policies)
    if not items:
        raise UsageError("policies: give at least one policy", 2)
    out: List[Tuple[str, Dict[str, str]]] = []
    for item in items:
        if isinstance(item, str):
            out += _split(item)
            continue
        pair = isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) and isinstance(item[1], Mapping)
        if not pair:
            raise UsageError(f"policies: {item!r} is not a policy name or a (name, {{parameter: value}}) pair", 2)
        name, params = item
        values = {}
        for key, value in params.items():
            if value is None:
                continue
            text = option_value(value)
            if "," in text or ":" in text:
                raise UsageError(f"{name}: {key}={value!r}: a value of one policy cannot hold ',' or ':'; "
                                 "give it as a keyword argument for every policy instead", 2)
            values[option_name(check_name(key))] = text
        out.append((name, values))
    return out


def spelling(pairs: Sequence[Tuple[str, Mapping[str, str]]]) -> str:
    """The command line's `--policy` value: `h2o:budget=64,rkv:budget=128:divide=8`.

    >>> spelling([("h2o", {"budget": "64"}), ("rkv", {"budget": "128", "divide": "8"}), ("full", {})])
    'h2o:budget=64,rkv:budget=128:divide=8,full'
    """
    return ",".join(name + "".join(f":{key}={value}" for key, value in params.items()) for name, params in pairs)


def check(pairs: Sequence[Tuple[str, Mapping[str, str]]], shared: Mapping[str, object],
          own_keywords: Sequence[str] = ()) -> None:
    """Refuses, in Python terms and with a suggestion, an unknown policy, a per-policy parameter
    its policy does not have, and a keyword parameter none of the policies has. `own_keywords`
    are the calling function's own arguments (suggested too: `layer` -> `layers`)."""
    known = catalog()
    for name, params in pairs:
        if name not in known:
            raise _unknown_policy(name, list(known))
        names = known[name]["parameters"]
        for option in params:
            if option not in names:
                keyword = keyword_name(option)
                hint = _hint(keyword, [keyword_name(n) for n in names])
                raise UsageError(f"{name}: {keyword} is not a parameter of {name}"
                                 + (f" (did you mean {hint}?)" if hint else "")
                                 + f"; its parameters: {', '.join(keyword_name(n) for n in names) or 'none'}",
                                 2, suggestion=hint)
    chosen = [name for name, _ in pairs]
    for keyword, value in shared.items():
        option = option_name(keyword)
        if any(option in known[name]["parameters"] for name in chosen):
            continue
        def holders(word: str) -> List[str]:
            return [name for name, entry in known.items() if option_name(word) in entry["parameters"]]

        # The closest name among the chosen policies' parameters and the function's own
        # arguments, else among every policy's parameters (saying whose they are).
        candidates = sorted({keyword_name(n) for name in chosen for n in known[name]["parameters"]} | set(own_keywords))
        hint = _hint(keyword, candidates)
        if hint is None:
            hint = _hint(keyword, sorted({keyword_name(n) for entry in known.values() for n in entry["parameters"]}))
        message = f"{keyword}={value!r}: not a parameter of {', '.join(dict.fromkeys(chosen))}"
        if holders(keyword):
            hint = None
            message += f" ({keyword} is a parameter of {', '.join(holders(keyword))})"
        elif hint and hint in candidates:
            message += f" (did you mean {hint}?)"
        elif hint:
            message += f" (did you mean {hint}? a parameter of {', '.join(holders(hint))})"
        raise UsageError(message, 2, suggestion=hint)
