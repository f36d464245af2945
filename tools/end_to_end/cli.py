"""python tools/end_to_end TRACE --model M --policy h2o,rkv --kv-percent 20 -o fidelity.csv

For a trace recorded over every layer of a model: replays each policy with thinkv-sim (at the
budgets that give each the same KV memory, or at one --budget), runs the model teacher-forced on
the recorded tokens with each policy's cache, and writes one CSV row per policy: next-token KL
against the full cache, top-1 agreement, the first step greedy decoding would diverge, and the
replay's own attention metrics beside them. docs/end-to-end.md.
"""

import argparse
import csv
import math
import os
import sys
import tempfile
import time

PROG = "end_to_end"

COLUMNS = ["policy", "label", "budget", "kv_percent", "kv_match_status", "achieved_percent", "kv_bytes_mean", "kv_bytes_peak", "next_token_kl_mean", "next_token_kl_p95", "next_token_kl_max",
           "top1_agreement", "divergence_step", "diverged", "steps", "attention_kl_mean", "mass_recall_mean",
           "output_error_mean", "free_running_divergence_step", "free_running_exact", "free_running_rounds", "decode_steps", "trace", "model"]


class EndToEndError(Exception):
    pass


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Exit status: 0 success, 1 bad input or failed run, 2 usage error.")
    p.add_argument("trace", help="a thinkv-trace recorded over every layer (tools/record_trace.py --layers all)")
    p.add_argument("--model", required=True, metavar="PATH", help="the model the trace was recorded from: a local folder or .gguf file")
    p.add_argument("--policy", default="h2o,rkv,snapkv,thinkv", metavar="NAMES",
                   help="thinkv-sim policies to measure, comma-separated. Default: h2o,rkv,snapkv,thinkv")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--kv-percent", type=float, metavar="P", help="compare at equal memory: each policy at the budget whose mean KV is P %% of the full cache")
    target.add_argument("--budget", type=int, metavar="B", help="compare at one token budget")
    p.add_argument("--steps", type=int, metavar="N", help="only the first N decode steps (default: all)")
    p.add_argument("--replay-arg", action="append", default=[], metavar="ARG",
                   help="extra thinkv-sim replay argument as one token, e.g. --replay-arg=--calibration=cal.json; "
                   "a policy parameter goes only to the replays of policies that have it; repeatable")
    p.add_argument("--free-running", action="store_true",
                   help="also find where greedy decoding with each policy in the loop departs from the full cache's "
                   "(the trace must be a greedy recording: --temperature 0, no repetition penalty)")
    p.add_argument("--free-running-rounds", type=int, default=8, metavar="N",
                   help="rounds of the free-running fixed point before giving a lower bound. Default: 8")
    p.add_argument("-o", "--output", default="-", metavar="CSV", help="results CSV ('-': standard output). Default: -")
    p.add_argument("--steps-csv", metavar="CSV", help="also write per-step KL and top-1 agreement of every policy")
    p.add_argument("--thinkv-sim", metavar="PATH", help="the thinkv-sim binary (default: $THINKV_SIM, PATH, this checkout's build)")
    p.add_argument("--threads", type=int, metavar="N", help="PyTorch CPU threads (default: the cores this process may use)")
    p.add_argument("--timelines", metavar="DIR", help="keep the cache-timeline files in DIR (default: a temporary folder)")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of a failure")
    return p


def read_trace(path):
    import h5py
    import numpy as np
    try:
        with h5py.File(path, "r") as f:
            a = f.attrs
            header = {k: int(a[k]) for k in ("num_layers", "num_q_heads", "num_kv_heads", "head_dim", "prompt_len", "num_tokens")}
            header["layers"] = sorted(int(name) for name in f["layers"])
            header["ids"] = np.asarray(f["tokens/ids"][:], dtype=np.int64)
            header["model"] = a.get("model", "")
    except (OSError, KeyError) as e:
        raise EndToEndError(f"{path}: not a readable thinkv-trace ({e})")
    if header["layers"] != list(range(header["num_layers"])):
        raise EndToEndError(f"{path}: records layers {header['layers'][:8]}... of {header['num_layers']}; the end-to-end "
                            "forward needs every layer (record with --layers all)")
    if len(header["ids"]) != header["num_tokens"]:
        raise EndToEndError(f"{path}: /tokens/ids has {len(header['ids'])} entries, num_tokens is {header['num_tokens']}")
    return header


def load_model(path, threads):
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's bar, read when tqdm is imported
    import torch
    import transformers
    from recorder import model as models
    from recorder.errors import RecorderError
    try:
        torch.set_num_threads(threads or models.default_threads())
        transformers.utils.logging.disable_progress_bar()
        folder, gguf = models.model_location(path)
        config = models.load_config(folder, gguf)
        models.check_architecture(config)
        model = models.load_model(folder, gguf, torch.float32, "eager", torch.device("cpu"))
        return model, models.config_shape(model.config)
    except RecorderError as e:
        raise EndToEndError(str(e))


def evaluate(args):
    from . import forward, free_running, metrics, replay

    binary = replay.find_thinkv_sim(args.thinkv_sim)
    trace = read_trace(args.trace)
    P, T = trace["prompt_len"], trace["num_tokens"]
    steps = min(args.steps or T - P, T - P)
    if steps < 1:
        raise EndToEndError(f"{args.trace}: no decode steps")
    started = time.time()
    model, shape = load_model(args.model, args.threads)
    expected = (trace["num_layers"], trace["num_q_heads"], trace["num_kv_heads"], trace["head_dim"])
    if tuple(shape) != expected:
        raise EndToEndError(f"{args.model}: shape {shape} (layers, q heads, kv heads, head dim) is not the trace's {expected}")
    print(f"{PROG}: model loaded in {time.time() - started:.1f} s", file=sys.stderr)

    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    parameters = replay.policy_parameters(binary)
    unknown = [p for p in policies if p not in parameters]
    if unknown:
        raise EndToEndError(f"unknown policy {unknown[0]} (thinkv-sim policies lists them)")
    budgets = {}
    if args.kv_percent is not None:
        budgets = replay.matched_budgets(binary, args.trace, [p for p in policies if p != "full"], args.kv_percent,
                                         args.replay_arg, steps)
    folder = args.timelines or tempfile.mkdtemp(prefix="end-to-end-")
    os.makedirs(folder, exist_ok=True)
    layers, heads = trace["num_layers"], trace["num_kv_heads"]
    reference = None
    rows, per_step = [], []
    for name in policies:
        budget, status, note = budgets.get(name, (args.budget, "", ""))
        if note:
            print(f"{PROG}: note: {note}", file=sys.stderr)
        path = os.path.join(folder, f"{name}.jsonl")
        extra = replay.arguments_for(name, args.replay_arg, parameters)
        timelines, run = replay.replay_with_timeline(binary, args.trace, name, budget, path, extra, steps)
        if reference is None:
            plans = forward.layer_plans(timelines["full"], layers, heads, T, P, steps)
            reference = forward.next_token_log_probs(model, trace["ids"], plans, P, steps)
            greedy = reference.argmax(dim=-1).cpu().numpy()
            if args.free_running:
                recorded = trace["ids"][P + 1:P + steps]
                off = [t for t, (a, b) in enumerate(zip(greedy, recorded)) if a != b]
                if off:
                    raise EndToEndError(f"{args.trace}: not a greedy recording (decode step {off[0]} holds token "
                                        f"{recorded[off[0]]}, the full cache's argmax is {greedy[off[0]]}); "
                                        "--free-running needs one made with --temperature 0 and no repetition penalty")
        label = run["label"]
        plans = forward.layer_plans(timelines[label], layers, heads, T, P, steps)
        started = time.time()
        result = metrics.compare(reference, forward.next_token_log_probs(model, trace["ids"], plans, P, steps))
        summary = run["summary"]
        free = {}
        if args.free_running:
            if name == "full":
                free = {"free_running_divergence_step": steps, "free_running_exact": True, "free_running_rounds": 0}
            else:
                step, rounds, exact, _ = free_running.free_running_divergence(
                    model, args.trace, trace, binary, name, label, budget, timelines[label], greedy, steps, extra,
                    folder, args.free_running_rounds)
                free = {"free_running_divergence_step": step, "free_running_exact": exact, "free_running_rounds": rounds}
        row = {
            "policy": name, "label": label,
            "budget": run.get("parameters", {}).get("budget", ""),
            # kv_percent is the memory target when there is one (as in a sweep), else the measured share.
            "kv_percent": args.kv_percent if args.kv_percent is not None and name in budgets else summary["memory"]["mean_percent_of_full"],
            "kv_match_status": status,
            "achieved_percent": summary["memory"]["mean_percent_of_full"],
            "kv_bytes_mean": summary["memory"]["mean_bytes"], "kv_bytes_peak": summary["memory"]["peak_bytes"],
            "decode_steps": steps,
            **{k: result[k] for k in ("next_token_kl_mean", "next_token_kl_p95", "next_token_kl_max", "top1_agreement",
                                      "divergence_step", "diverged", "steps")},
            "attention_kl_mean": summary.get("attention_kl", {}).get("mean", ""),
            "mass_recall_mean": summary.get("mass_recall", {}).get("mean", ""),
            "output_error_mean": (summary.get("output_error") or {}).get("mean", ""),
            **free,
            "trace": args.trace, "model": trace["model"],
        }
        rows.append(row)
        for t, (kl, agree) in enumerate(zip(result["per_step_kl"], result["per_step_agree"])):
            per_step.append({"policy": name, "label": label, "step": t, "next_token_kl": float(kl), "top1_agree": int(agree)})
        free_text = ""
        if free:
            free_text = (f", free-running departs at step {'' if free['free_running_exact'] else '>= '}"
                         f"{free['free_running_divergence_step']} ({free['free_running_rounds']} rounds)")
        print(f"{PROG}: {label}: KV {row['achieved_percent']:.1f} %, next-token KL {row['next_token_kl_mean']:.4g}, "
              f"top-1 {row['top1_agreement']:.3f}, diverges at step {row['divergence_step']}{free_text} "
              f"({time.time() - started:.1f} s)", file=sys.stderr)
    return rows, per_step


def write_csv(path, columns, rows):
    def fmt(v):
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.6g}"
        return v
    out = sys.stdout if path == "-" else open(path + ".partial", "w", newline="", encoding="utf-8")
    try:
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: fmt(row.get(k, "")) for k in columns})
    finally:
        if out is not sys.stdout:
            out.close()
    if path != "-":
        os.replace(path + ".partial", path)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["closed-loop"]:
        from . import closed_loop_cli
        return closed_loop_cli.main(argv[1:])
    if argv[:1] == ["closed-loop-table"]:
        from . import closed_loop_table
        return closed_loop_table.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.budget is not None and args.budget < 1:
        parser.error("--budget must be at least 1")
    if args.free_running_rounds < 1:
        parser.error("--free-running-rounds must be at least 1")
    if args.kv_percent is not None and not 0 < args.kv_percent <= 100:
        parser.error("--kv-percent must be in (0, 100]")
    from recorder.errors import RecorderError

    from .replay import ReplayError
    try:
        rows, per_step = evaluate(args)
        write_csv(args.output, COLUMNS, rows)
        if args.steps_csv:
            write_csv(args.steps_csv, ["policy", "label", "step", "next_token_kl", "top1_agree"], per_step)
        return 0
    except (EndToEndError, ReplayError, RecorderError, ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
