#!/usr/bin/env python3
"""Compares two kept-event files (JSON lines as `thinkv-sim replay --kept` writes them).

Events are matched on (layer, step, kv_head); the policy field is ignored. Prints the Jaccard
index |A ∩ B| / |A ∪ B| of every event's kept positions (an event present in one file only
counts as 0) and a summary; exits 1 if any event differs, 0 if all are identical.

    python3 compare_kept.py A.jsonl B.jsonl [--quiet]
"""
import argparse
import json
import sys


def load(path):
    events = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            e = json.loads(line)
            key = (e["layer"], e["step"], e["kv_head"])
            if key in events:
                sys.exit(f"{path}:{number}: duplicate event layer {key[0]} step {key[1]} kv_head {key[2]}")
            events[key] = set(e["kept"])
    return events


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--quiet", action="store_true", help="print only differing events and the summary")
    args = parser.parse_args()
    a, b = load(args.a), load(args.b)
    keys = sorted(set(a) | set(b))
    scores = []
    for key in keys:
        if key in a and key in b:
            union = a[key] | b[key]
            j = len(a[key] & b[key]) / len(union) if union else 1.0
            note = ""
        else:
            j = 0.0
            note = "  (only in %s)" % (args.a if key in a else args.b)
        scores.append(j)
        if not args.quiet or j < 1:
            print("layer %d step %d kv_head %d jaccard %.4f%s" % (key[0], key[1], key[2], j, note))
    if not scores:
        print("no events in either file")
        return 0
    differing = sum(1 for j in scores if j < 1)
    print("events %d  identical %d  differing %d  mean jaccard %.4f  min jaccard %.4f"
          % (len(scores), len(scores) - differing, differing, sum(scores) / len(scores), min(scores)))
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
