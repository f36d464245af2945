#!/usr/bin/env python3
"""ThinKV against the baselines at equal KV memory, with what its classifier and TBE did.

Runs `thinkv-sim replay TRACE --policy ... --kv-percent P --json` for every trace and target
and prints one markdown table per target: KL and output error of each policy, and for the
ThinKV policies the transitions their classifier saw, how often the types they ran with agree
with the trace's labels, and which rule evicted their tokens (transition cuts, budget pressure,
floor breaches). Results are also written as JSON lines (--jsonl) so that two builds (e.g. before
and after a change) can be tabulated side by side with --compare.

    python3 tools/thinkv_study.py --binary .build/release/thinkv-sim --percent 5,10,20 \
        --jsonl out/study.jsonl traces/*.h5 extra/*.h5 [--replay-arg=--calibration-domain=cache]
    python3 tools/thinkv_study.py --compare before.jsonl after.jsonl

Only the standard library is needed.
"""
import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

POLICIES = "h2o,rkv,snapkv,streaming,tova,kivi,thinkv,thinkv-tbe"
AGREEMENT = re.compile(r"agree with /tokens/thought on ([0-9.]+) %")


def replay(binary, trace, percent, policies, extra):
    command = [binary, "replay", trace, "--policy", policies, "--kv-percent", str(percent), "--json",
               "--progress", "none"] + extra
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"thinkv_study: {' '.join(command)} failed: {done.stderr.strip()}")
    return json.loads(done.stdout)


def rows_of(result, trace, percent):
    notes = result.get("notes", [])
    for run in result["runs"]:
        summary, label = run["summary"], run["label"]
        counters = summary.get("policy_counters") or {}
        memory = summary["memory"]
        agreement = None
        for note in notes:
            match = AGREEMENT.search(note)
            if note.startswith(label + ":") and match:
                agreement = float(match.group(1))
        evicted = {rule: counters.get(key, 0) for rule, key in
                   (("transition", "transition_evicted_tokens"), ("pressure", "pressure_evicted_tokens"),
                    ("floor", "floor_breach_evicted_tokens"))}
        layers = max(len(result.get("layers", [])), 1)
        yield {
            "trace": Path(trace).name, "percent": percent, "policy": run["policy"], "label": label,
            "budget": (run.get("memory_match") or {}).get("budget"),
            "achieved": memory["mean_percent_of_full"],
            "kl": summary["attention_kl"]["mean"],
            "err": (summary.get("output_error") or {}).get("mean"),
            "evict_steps": memory.get("eviction_step_percent"),
            "bits": memory.get("mean_bits_per_element"),
            "transitions": counters["transitions"] // layers if "transitions" in counters else None,
            "agreement": agreement,
            "evicted": evicted if counters else None,
        }


def share(row, rule):
    evicted = row.get("evicted")
    if not evicted:
        return ""
    total = sum(evicted.values())
    return f"{100 * evicted[rule] / total:.0f}" if total else "-"


def fmt(x, digits=3):
    return "" if x is None else f"{x:.{digits}f}"


def table(rows):
    out = ["| trace | policy | budget | % of full | KL | out err | evicting steps % | bits/elem | transitions | agreement % | evicted by T / pressure / floor % |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        shares = " / ".join(share(r, rule) for rule in ("transition", "pressure", "floor")) if r.get("evicted") else ""
        out.append(f"| {r['trace']} | {r['policy']} | {r['budget'] or '-'} | {r['achieved']:.1f} | {fmt(r['kl'])} | {fmt(r['err'])} "
                   f"| {fmt(r['evict_steps'], 1)} | {fmt(r['bits'], 2)} | {'' if r['transitions'] is None else r['transitions']} "
                   f"| {fmt(r['agreement'], 1)} | {shares} |")
    return "\n".join(out)


def compare(before_path, after_path):
    def load(path):
        return {(r["trace"], r["percent"], r["policy"]): r for r in map(json.loads, Path(path).read_text().splitlines())}
    def shares(row):
        return " / ".join(share(row, rule) for rule in ("transition", "pressure", "floor")) if row.get("evicted") else ""
    before, after = load(before_path), load(after_path)
    print("| % | trace | policy | KL before → after | err before → after | transitions | agreement % | evicted by T / pressure / floor % |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for key in sorted(after, key=lambda k: (k[1], k[2], k[0])):
        a, b = after[key], before.get(key)
        if b is None:
            continue
        transitions = f"{'' if b['transitions'] is None else b['transitions']} → {'' if a['transitions'] is None else a['transitions']}"
        print(f"| {key[1]:g} | {key[0]} | {key[2]} | {fmt(b['kl'])} → {fmt(a['kl'])} | {fmt(b['err'])} → {fmt(a['err'])} "
              f"| {transitions} | {fmt(b['agreement'], 1)} → {fmt(a['agreement'], 1)} | {shares(b)} → {shares(a)} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("traces", nargs="*")
    parser.add_argument("--binary", default=".build/release/thinkv-sim")
    parser.add_argument("--percent", default="5,10,20")
    parser.add_argument("--policies", default=POLICIES)
    parser.add_argument("--jsonl", help="append every row as a JSON line")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="tabulate two --jsonl files")
    parser.add_argument("--replay-arg", action="append", default=[], metavar="ARG",
                        help="an option passed to every replay, e.g. --replay-arg=--calibration-domain=cache")
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
        return
    extra = args.replay_arg
    sink = open(args.jsonl, "a") if args.jsonl else None
    for percent in [float(p) for p in args.percent.split(",")]:
        rows = []
        for trace in args.traces:
            for row in rows_of(replay(args.binary, trace, percent, args.policies, extra), trace, percent):
                rows.append(row)
                if sink:
                    sink.write(json.dumps(row) + "\n")
                    sink.flush()
            print(f"thinkv_study: {Path(trace).name} at {percent:g} % done", file=sys.stderr)
        print(f"\n### {percent:g} % of the full cache\n")
        print(table(rows))


if __name__ == "__main__":
    main()
