"""Running thinkv-sim: budgets at equal KV memory, and each policy's cache timeline."""

import json
import os
import shutil
import subprocess

from .timeline import read_timelines

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class ReplayError(Exception):
    pass


def find_thinkv_sim(explicit=None):
    """The binary: --thinkv-sim, $THINKV_SIM, thinkv-sim on PATH, or this checkout's build."""
    candidates = [explicit, os.environ.get("THINKV_SIM"), shutil.which("thinkv-sim"),
                  os.path.join(REPO, ".build", "release", "thinkv-sim"), os.path.join(REPO, ".build", "debug", "thinkv-sim")]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise ReplayError("no thinkv-sim binary: build it (make build), put it on PATH, or pass --thinkv-sim / set THINKV_SIM")


def run(binary, args):
    result = subprocess.run([binary, *args, "--progress", "none"], capture_output=True, text=True)
    if result.returncode != 0:
        message = [line for line in result.stderr.strip().splitlines() if not line.startswith("Run 'thinkv-sim")]
        raise ReplayError(message[0] if message else f"thinkv-sim exited with {result.returncode}")
    return result.stdout


def policy_parameters(binary):
    """{policy name: set of its parameter names}, from `thinkv-sim policies --json`."""
    return {p["name"]: {q["name"] for q in p["parameters"]} for p in json.loads(run(binary, ["policies", "--json"]))}


def arguments_for(policy, extra, parameters):
    """The extra replay arguments (each one token, --name=value or --flag) that apply to a replay of
    `policy`: replay's own options, and the parameters `policy` has (thinkv-sim refuses a
    parameter that no chosen policy has)."""
    known = set().union(*parameters.values()) if parameters else set()
    chosen = []
    for arg in extra:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if name is None or name not in known or name in parameters.get(policy, set()):
            chosen.append(arg)
    return chosen


def matched_budgets(binary, trace, policies, kv_percent, extra=(), steps=None):
    """{policy name: (budget, match status, note)} for a mean KV of kv_percent % of the full
    cache (policies without a budget are left out: they run as given). The status is the
    replay's: matched, or unreachable (the note says why; the nearest budget is used)."""
    args = ["replay", trace, "--policy", ",".join(policies), "--kv-percent", str(kv_percent), "--json", *extra]
    if steps:
        args += ["--steps", str(steps)]
    report = json.loads(run(binary, args))
    budgets = {}
    for r in report["runs"]:
        budget = r.get("parameters", {}).get("budget")
        if budget is not None:
            match = r.get("memory_match", {})
            budgets[r["policy"]] = (int(budget), match.get("status", ""), match.get("note", ""))
    return budgets


def replay_with_timeline(binary, trace, policy, budget, timeline_path, extra=(), steps=None):
    """Replays `full` and `policy` (at `budget`, if given) over every recorded layer, writing the
    cache timeline; returns ({label: PolicyTimeline}, the JSON report's run of `policy`)."""
    names = "full" if policy == "full" else f"full,{policy}"
    args = ["replay", trace, "--policy", names, "--json", "--cache-timeline", timeline_path, *extra]
    if budget is not None and policy != "full":
        args += ["--budget", str(budget)]
    if steps:
        args += ["--steps", str(steps)]
    report = json.loads(run(binary, args))
    runs = [r for r in report["runs"] if r["policy"] != "full"] or report["runs"]
    return read_timelines(timeline_path), runs[0]
