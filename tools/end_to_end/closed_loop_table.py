"""`tools/end_to_end closed-loop-table RESULTS.csv [...]`: the closed-loop results of one or more
runs (`closed-loop -o`) as the Markdown table of docs/end-to-end.md, and the rank correlations of
the teacher-forced figures with the closed-loop ones over all policy rows.

Runs split over several processes each have a full-cache row of the same problems and seeds;
those must agree and are shown once.
"""

import argparse
import csv
import sys

from .closed_loop_cli import CLOSED_LOOP_FIGURES, TEACHER_FORCED_FIGURES, correlations

PROG = "end_to_end closed-loop-table"


class TableError(Exception):
    pass


def read_rows(paths):
    rows, full = [], None
    for path in paths:
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                found = list(csv.DictReader(f))
        except OSError as e:
            raise TableError(f"{path}: {e.strerror or e}")
        if not found or "policy" not in found[0] or "loop_rate" not in found[0]:
            raise TableError(f"{path}: not a closed-loop results CSV (no policy/loop_rate columns)")
        for row in found:
            if row["policy"] == "full":
                same = ("greedy_accuracy", "pass1", "loop_rate", "generations")
                if full is not None and any(full[k] != row[k] for k in same):
                    raise TableError(f"{path}: its full-cache row differs from an earlier file's (not the same problems?)")
                if full is None:
                    full = row
                continue
            rows.append(row)
    if full is None:
        raise TableError("no full-cache row in the results")
    rows.sort(key=lambda r: (float(r["kv_target"]) if r["kv_target"] else 1e9, r["policy"]))
    return [full] + rows


def number(text, digits=2):
    try:
        value = float(text)
    except ValueError:
        return "–"
    return "–" if value != value else f"{value:.{digits}f}"


def interval(row, column, digits=2):
    return f"{number(row[column], digits)} ({number(row[column + '_ci_low'], digits)}–{number(row[column + '_ci_high'], digits)})"


def markdown(rows):
    head = ["KV target", "policy", "budget", "KV % held", "greedy acc. (95 % CI)", "pass@1 (95 % CI)",
            "length × full (p10–p90)", "loop rate (95 % CI)", "diverged", "diverges at (median)",
            "next-token KL", "TF next-token KL", "TF attention KL", "TF output error"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in rows:
        target = r["kv_target"] or ("–" if r["policy"] == "full" else "– (as given)")
        if target not in ("–", "– (as given)"):
            target = f"{float(target):g}"
        lines.append("| " + " | ".join([
            target, r["policy"], r["budget"] or "–", number(r["kv_percent"], 1),
            interval(r, "greedy_accuracy"), interval(r, "pass1"),
            f"{number(r['length_ratio_mean'])} ({number(r['length_ratio_p10'])}–{number(r['length_ratio_p90'])})",
            interval(r, "loop_rate"), number(r["diverged_share"]), number(r["divergence_step_median"], 0),
            number(r["next_token_kl_mean"], 3), number(r.get("tf_next_token_kl_mean", ""), 3),
            number(r.get("tf_attention_kl_mean", ""), 3), number(r.get("tf_output_error_mean", ""), 3),
        ]) + " |")
    return "\n".join(lines)


def correlation_table(rows):
    found = correlations(rows)
    head = ["teacher-forced figure"] + list(CLOSED_LOOP_FIGURES)
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for predictor in TEACHER_FORCED_FIGURES:
        cells = []
        for column in CLOSED_LOOP_FIGURES:
            rho, n = found[(predictor, column)]
            cells.append(f"{rho:+.2f} (n={n})" if rho == rho else f"– (n={n})")
        lines.append("| " + " | ".join([predictor] + cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", metavar="CSV", help="results CSVs of 'closed-loop -o'")
    args = parser.parse_args(argv)
    try:
        rows = read_rows(args.results)
    except TableError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    print(markdown(rows))
    print()
    print("Spearman rank correlation over the policy rows:")
    print()
    print(correlation_table(rows))
    return 0
