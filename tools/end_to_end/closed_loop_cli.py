"""python tools/end_to_end closed-loop --model M --policy h2o,kivi --kv-percent 10,25,50 -o closed.csv

Generates answers to seeded arithmetic word problems while each thinkv-sim policy decides, at
every step, what the model's cache holds (thinkv-sim serve-policy), greedy and with k seeded
samples per problem, and writes one CSV row per policy and memory level as each finishes:
accuracy (greedy, pass@1 over k), generation length relative to the full cache, loop rate, first
step of divergence from the full cache's generation, next-token KL along the way, and the
teacher-forced next-token KL of the same policy on the full cache's greedy run beside them.
docs/end-to-end.md ("Closed loop").
"""

import argparse
import csv
import math
import os
import sys
import tempfile
import time

PROG = "end_to_end closed-loop"

COLUMNS = ["policy", "kv_target", "budget", "kv_percent", "problems", "samples", "generations",
           "greedy_accuracy", "greedy_accuracy_ci_low", "greedy_accuracy_ci_high",
           "pass1", "pass1_ci_low", "pass1_ci_high",
           "length_ratio_mean", "length_ratio_p10", "length_ratio_p50", "length_ratio_p90",
           "loop_rate", "loop_rate_ci_low", "loop_rate_ci_high",
           "diverged_share", "divergence_step_mean", "divergence_step_median",
           "next_token_kl_mean", "next_token_kl_p95", "attention_kl_mean",
           "tf_next_token_kl_mean", "tf_top1_agreement", "tf_attention_kl_mean", "tf_output_error_mean", "seconds", "model"]
GENERATION_COLUMNS = ["policy", "kv_target", "budget", "problem", "sample", "seed", "tokens", "stop", "loop", "answer",
                      "expected", "correct", "length_ratio", "divergence_step", "next_token_kl_mean", "kv_percent"]


class ClosedLoopError(Exception):
    pass


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Exit status: 0 success, 1 bad input or failed run, 2 usage error, 130 interrupted.")
    p.add_argument("--model", required=True, metavar="PATH", help="a local model folder or .gguf file")
    p.add_argument("--policy", default="h2o,rkv,snapkv,kivi", metavar="NAMES",
                   help="thinkv-sim policies, comma-separated; the full cache always runs first. Default: h2o,rkv,snapkv,kivi")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--kv-percent", metavar="P[,P...]",
                        help="memory levels: per problem, each policy at the budget whose mean KV is P %% of the full cache "
                        "on the full cache's greedy run (thinkv-sim replay --kv-percent)")
    target.add_argument("--budget", type=int, metavar="B", help="one token budget for every policy that has one")
    p.add_argument("--problems", type=int, default=20, metavar="N", help="problems (tools/end_to_end/problems.py). Default: 20")
    p.add_argument("--problem-seed", type=int, default=0, metavar="S", help="seed of the problem generator. Default: 0")
    p.add_argument("--problem-level", choices=["easy", "standard"], default="easy",
                   help="easy: one sum, difference or product; standard: two or three operations. Default: easy")
    p.add_argument("--samples", type=int, default=4, metavar="K", help="sampled generations per problem (0: greedy only). Default: 4")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature. Default: 0.7")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling. Default: 0.95")
    p.add_argument("--seed", type=int, default=1, help="sample j of problem i uses seed S + 1000 i + j, the same for every policy. Default: 1")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="generation limit. Default: 256")
    p.add_argument("--ignore-eos", action="store_true", help="generate to the limit")
    p.add_argument("--no-stop-at-answer", action="store_true",
                   help="do not end a generation at its first finished 'Answer: <number>' line (a small model goes on "
                        "inventing further examples)")
    p.add_argument("--no-chat-template", action="store_true", help="encode the problem as plain text")
    p.add_argument("--replay-arg", action="append", default=[], metavar="ARG",
                   help="extra policy parameter or replay option as one token, e.g. --replay-arg=--window=8; "
                   "a policy parameter goes only to the policies that have it; repeatable")
    p.add_argument("-o", "--output", required=True, metavar="CSV", help="results CSV, rewritten as each policy and level finishes")
    p.add_argument("--generations-csv", metavar="CSV", help="also one row per generation")
    p.add_argument("--thinkv-sim", metavar="PATH", help="the thinkv-sim binary (default: $THINKV_SIM, PATH, this checkout's build)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="PyTorch CPU threads. Default: 1 (a one-token step is too small to split; on a shared "
                   "machine two threads were 18 times slower than one)")
    p.add_argument("--work-dir", metavar="DIR", help="keep the full cache's greedy traces and timelines here (default: a temporary folder)")
    p.add_argument("--progress", choices=["auto", "bar", "plain", "none"], default="auto",
                   help="stderr progress: a bar on a terminal, plain lines otherwise (auto). Default: auto")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of a failure")
    return p


class Progress:
    def __init__(self, mode, total):
        self.bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self.quiet = mode == "none"
        self.total, self.done, self.started, self.last = total, 0, time.time(), 0.0

    def step(self, detail):
        self.done += 1
        if self.quiet:
            return
        elapsed = time.time() - self.started
        eta = elapsed / self.done * (self.total - self.done)
        text = f"{self.done}/{self.total} generations, {elapsed:.0f} s, ~{eta:.0f} s left: {detail}"
        if self.bar:
            width = 24
            filled = int(width * self.done / max(self.total, 1))
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {text[:100]:<100}")
            sys.stderr.flush()
        elif time.time() - self.last >= 10 or self.done == self.total:
            print(f"{PROG}: {text}", file=sys.stderr)
            self.last = time.time()

    def note(self, text):
        if self.quiet:
            return
        if self.bar:
            sys.stderr.write("\r" + " " * 130 + "\r")
        print(f"{PROG}: {text}", file=sys.stderr)


def wilson(successes, n, z=1.96):
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def bootstrap_mean(values_by_problem, seed=0, rounds=2000):
    """95 % percentile interval of the mean over problems, problems resampled."""
    import numpy as np
    v = np.asarray(values_by_problem, dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), (rounds, len(v)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def spearman(x, y):
    import numpy as np
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return float("nan"), len(x)

    def rank(a):
        order = a.argsort(kind="mergesort")
        r = np.empty(len(a))
        r[order] = np.arange(len(a))
        for value in np.unique(a):  # ties: mean rank
            r[a == value] = r[a == value].mean()
        return r
    rx, ry = rank(x), rank(y)
    if rx.std() == 0 or ry.std() == 0:
        return float("nan"), len(x)
    return float(np.corrcoef(rx, ry)[0, 1]), len(x)


def write_csv(path, columns, rows):
    def fmt(v):
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.6g}"
        return "" if v is None else v
    with open(path + ".partial", "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: fmt(row.get(k, "")) for k in columns})
    os.replace(path + ".partial", path)


def write_trace(path, model_name, shape, prompt_ids, tokens, captured, scale):
    """The full cache's greedy run as a float32 thinkv-trace of every layer."""
    import h5py
    import numpy as np
    L, Hq, Hkv, D = shape
    ids = list(prompt_ids) + list(tokens[:-1])
    T = len(ids)
    with h5py.File(path + ".partial", "w") as f:
        for key, value in {"format": "thinkv-trace", "version": np.int32(1), "model": model_name,
                           "num_layers": np.int32(L), "num_q_heads": np.int32(Hq), "num_kv_heads": np.int32(Hkv),
                           "head_dim": np.int32(D), "prompt_len": np.int32(len(prompt_ids)), "num_tokens": np.int32(T),
                           "source": "recorded", "generator": "tools/end_to_end closed-loop (full cache, greedy)"}.items():
            f.attrs[key] = value
        if scale is not None and abs(scale - D ** -0.5) > 1e-6 * D ** -0.5:
            f.attrs["softmax_scale"] = np.float32(scale)
        f.create_dataset("tokens/ids", data=np.asarray(ids, dtype=np.int32))
        for layer, (q, k, v) in sorted(captured.items()):
            if len(q) != T:
                raise ClosedLoopError(f"internal error: layer {layer} captured {len(q)} positions, expected {T}")
            for name, a in (("q", q), ("k", k), ("v", v)):
                f.create_dataset(f"layers/{layer}/{name}", data=a.astype(np.float32))
    os.replace(path + ".partial", path)


def run(args):
    if not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")  # the GGUF loader's bar, read when tqdm is imported
    import numpy as np
    import torch

    from recorder import model as models
    from recorder.prompts import PromptJob, encode_prompt
    from recorder.sampling import Sampler

    from . import closed_loop, forward, metrics, problems, replay
    from .cli import load_model
    from .timeline import HeadTimeline, PolicyTimeline

    binary = replay.find_thinkv_sim(args.thinkv_sim)
    parameters = replay.policy_parameters(binary)
    policies = [p.strip() for p in args.policy.split(",") if p.strip() and p.strip() != "full"]
    unknown = [p for p in policies if p not in parameters]
    if unknown:
        raise ClosedLoopError(f"unknown policy {unknown[0]} (thinkv-sim policies lists them)")
    # A policy that types thoughts (ThinKV) serves online only with a refresh that reads finished
    # steps (--type-lag 1) and thresholds given in advance; its replays use the same.
    for p in policies:
        if "type-lag" in parameters[p]:
            given = {a[2:].split("=", 1)[0] for a in replay.arguments_for(p, args.replay_arg, parameters) if a.startswith("--")}
            if not given & {"calibration", "theta1"}:
                raise ClosedLoopError(f"{p} needs its classifier's thresholds in advance: --replay-arg=--calibration=FILE "
                                      "('thinkv-sim calibrate') or --replay-arg=--theta1=X --replay-arg=--theta2=Y")
            if "type-lag" not in given:
                args.replay_arg.append("--type-lag=1")
                print(f"{PROG}: {p} runs with --type-lag 1 (a refresh reads the steps before it), in its replays too",
                      file=sys.stderr)
    levels = [None]
    if args.kv_percent is not None:
        try:
            levels = [float(x) for x in args.kv_percent.split(",") if x.strip()]
        except ValueError:
            raise ClosedLoopError(f"--kv-percent: not a list of numbers: {args.kv_percent}")
        if not levels or any(not 0 < x <= 100 for x in levels):
            raise ClosedLoopError("--kv-percent: every level must be in (0, 100]")

    started = time.time()
    model, shape = load_model(args.model, args.threads)
    folder, gguf = models.model_location(args.model)
    tokenizer = models.load_tokenizer(folder, gguf, None)
    use_template = not args.no_chat_template and getattr(tokenizer, "chat_template", None) is not None
    stops = set() if args.ignore_eos else models.stop_ids(model, tokenizer)
    model_name = os.path.basename(os.path.normpath(args.model))
    print(f"{PROG}: model loaded in {time.time() - started:.1f} s", file=sys.stderr)

    work = args.work_dir or tempfile.mkdtemp(prefix="closed-loop-")
    os.makedirs(work, exist_ok=True)
    problem_set = problems.generate(args.problems, args.problem_seed, args.problem_level)
    prompts = [encode_prompt(tokenizer, PromptJob(p.prompt(), None), use_template, {}) for p in problem_set]
    budgeted = {p for p in policies if "budget" in parameters[p]}
    runs = [("full", None)] + [(p, level) for level in levels for p in policies if p in budgeted or level == levels[0]]
    progress = Progress(args.progress, len(runs) * len(problem_set) * (1 + args.samples))

    def stop_at_answer(tokens):
        return problems.answer_given(tokenizer.decode(tokens, skip_special_tokens=True))

    answered = None if args.no_stop_at_answer or args.ignore_eos else stop_at_answer

    def seed_of(i, j):
        return args.seed + 1000 * i + j

    def chooser(j, i):
        if j < 0:
            return closed_loop.greedy
        return Sampler(args.temperature, 0, args.top_p, 1.0, seed_of(i, j))

    full_runs = {}   # (problem, sample) -> tokens
    traces = {}      # problem -> trace path of the full cache's greedy run
    tf_reference = {}
    budget_cache = {}
    rows, generation_rows = [], []

    def budgets_for(i, level):
        if level is None:
            return {p: args.budget for p in budgeted}
        if (i, level) not in budget_cache:
            if i not in traces:
                raise ClosedLoopError(f"problem {i}: the full cache's greedy run has no decode step to match memory on")
            found = replay.matched_budgets(binary, traces[i], sorted(budgeted), level, args.replay_arg)
            budget_cache[(i, level)] = {p: b for p, (b, _, _) in found.items()}
        return budget_cache[(i, level)]

    def teacher_forced(i, policy, budget, extra):
        """Teacher-forced next-token KL and top-1 agreement on the full cache's greedy run."""
        if i not in traces:
            return float("nan"), float("nan"), float("nan"), float("nan")
        import h5py
        trace = traces[i]
        with h5py.File(trace, "r") as f:
            ids = np.asarray(f["tokens/ids"][:], dtype=np.int64)
            P, T = int(f.attrs["prompt_len"]), int(f.attrs["num_tokens"])
        steps = T - P
        L, _, Hkv, _ = shape
        if i not in tf_reference:
            full = PolicyTimeline("full")
            for layer in range(L):
                for h in range(Hkv):
                    full.heads[(layer, h)] = HeadTimeline([-1] * T, [])
            plans = forward.layer_plans(full, L, Hkv, T, P, steps)
            tf_reference[i] = forward.next_token_log_probs(model, ids, plans, P, steps)
        timelines, run_report = replay.replay_with_timeline(binary, trace, policy, budget,
                                                            os.path.join(work, f"{policy}-{i}.jsonl"), extra, steps)
        plans = forward.layer_plans(timelines[run_report["label"]], L, Hkv, T, P, steps)
        result = metrics.compare(tf_reference[i], forward.next_token_log_probs(model, ids, plans, P, steps))
        summary = run_report.get("summary", {})
        return (result["next_token_kl_mean"], result["top1_agreement"],
                summary.get("attention_kl", {}).get("mean", float("nan")),
                summary.get("output_error", {}).get("mean", float("nan")))

    for policy, level in runs:
        if policy not in budgeted:
            level = None  # no budget: runs once, as given, whatever the levels
        run_started = time.time()
        extra = replay.arguments_for(policy, args.replay_arg, parameters) if policy != "full" else []
        serve_extra = [a for a in extra if a[2:].split("=", 1)[0] in parameters[policy]]
        gens, used_budgets, tf = [], [], []
        for i, problem in enumerate(problem_set):
            budget = budgets_for(i, level).get(policy) if policy in budgeted else None
            if budget is not None:
                used_budgets.append(budget)
            policy_args = serve_extra + (["--budget", str(budget)] if budget is not None else [])
            if policy != "full":
                tf.append(teacher_forced(i, policy, budget, extra))
            for j in [-1] + list(range(args.samples)):
                capture = {} if policy == "full" and j < 0 else None
                result = closed_loop.generate(model, binary, policy, policy_args, prompts[i], args.max_new_tokens,
                                              chooser(j, i), stops, capture=capture, done=answered)
                tokens = result["tokens"]
                if policy == "full":
                    full_runs[(i, j)] = tokens
                    if capture is not None and len(tokens) > 1:
                        path = os.path.join(work, f"full-greedy-{i}.h5")
                        write_trace(path, model_name, shape, prompts[i], tokens, closed_loop.captured_arrays(capture), None)
                        traces[i] = path
                reference = full_runs[(i, j)]
                body = tokens[:-1] if tokens and tokens[-1] in stops else tokens
                text = tokenizer.decode(tokens, skip_special_tokens=True)
                answer = problems.extract_answer(text)
                n = len(tokens)
                kl = float("nan")
                if n > 1:
                    full_lp = closed_loop.full_cache_log_probs(model, list(prompts[i]) + tokens[:-1], len(prompts[i]), n - 1)
                    kl_steps = metrics.compare(full_lp, result["log_probs"].double())["per_step_kl"]
                else:
                    kl_steps = []
                if len(kl_steps):
                    kl = float(np.mean(kl_steps))
                d = closed_loop.first_divergence(tokens, reference)
                gens.append({"problem": i, "sample": j, "tokens": n, "stop": result["stop"],
                             "loop": result["stop"] == "limit" or closed_loop.ends_in_cycle(body),
                             "correct": answer == problem.answer, "answer": answer,
                             "length_ratio": n / max(len(reference), 1),
                             "divergence_step": None if d is None else d - 1, "kl": kl, "kl_steps": kl_steps,
                             "kv_percent": result["summary"]["kv_percent_mean"] if result["summary"]["steps"] else float("nan"),
                             "attention_kl": result["summary"].get("attention_kl_mean", float("nan"))})
                generation_rows.append({"policy": policy, "kv_target": "" if level is None else level, "budget": budget,
                                        "problem": i, "sample": "greedy" if j < 0 else j, "seed": "" if j < 0 else seed_of(i, j),
                                        "tokens": n, "stop": result["stop"], "loop": gens[-1]["loop"], "answer": answer,
                                        "expected": problem.answer, "correct": gens[-1]["correct"],
                                        "length_ratio": gens[-1]["length_ratio"],
                                        "divergence_step": gens[-1]["divergence_step"], "next_token_kl_mean": kl,
                                        "kv_percent": gens[-1]["kv_percent"]})
                progress.step(f"{policy}{'' if level is None else f' at {level:g} %'} problem {i} "
                              f"{'greedy' if j < 0 else f'sample {j}'}: {n} tokens")
        rows.append(summarize(policy, level, used_budgets, gens, tf, args, time.time() - run_started, model_name))
        write_csv(args.output, COLUMNS, rows)
        if args.generations_csv:
            write_csv(args.generations_csv, GENERATION_COLUMNS, generation_rows)
        r = rows[-1]
        progress.note(f"{policy}{'' if level is None else f' at {level:g} %'}: greedy accuracy {r['greedy_accuracy']:.3f}, "
                      f"pass@1 {r['pass1']:.3f}, length x{r['length_ratio_mean']:.2f}, loops {r['loop_rate']:.3f}, "
                      f"KL {r['next_token_kl_mean']:.4g}, KV {r['kv_percent']:.1f} % ({r['seconds']:.0f} s)")
    report_correlations(rows, progress)
    return rows


def summarize(policy, level, budgets, gens, tf, args, seconds, model_name):
    import numpy as np
    greedy = [g for g in gens if g["sample"] < 0]
    sampled = [g for g in gens if g["sample"] >= 0]
    n_problems = len(greedy)
    g_correct = sum(g["correct"] for g in greedy)
    per_problem = [np.mean([g["correct"] for g in sampled if g["problem"] == i]) for i in range(n_problems)] if sampled else []
    ratios = np.array([g["length_ratio"] for g in gens])
    loops = sum(g["loop"] for g in gens)
    diverged = [g["divergence_step"] for g in gens if g["divergence_step"] is not None]
    kl_all = np.concatenate([np.asarray(g["kl_steps"], float) for g in gens if len(g["kl_steps"])]) if gens else np.zeros(0)
    budget = ""
    if budgets:
        budget = str(budgets[0]) if len(set(budgets)) == 1 else f"{min(budgets)}-{max(budgets)}"
    lo, hi = wilson(g_correct, n_problems)
    p_lo, p_hi = bootstrap_mean(per_problem) if per_problem else (float("nan"), float("nan"))
    l_lo, l_hi = wilson(loops, len(gens))
    finite = lambda xs: [x for x in xs if x == x]  # noqa: E731
    return {
        "policy": policy, "kv_target": "" if level is None else level, "budget": budget,
        "kv_percent": float(np.mean(finite([g["kv_percent"] for g in gens]) or [float("nan")])),
        "problems": n_problems, "samples": args.samples, "generations": len(gens),
        "greedy_accuracy": g_correct / max(n_problems, 1), "greedy_accuracy_ci_low": lo, "greedy_accuracy_ci_high": hi,
        "pass1": float(np.mean(per_problem)) if per_problem else float("nan"), "pass1_ci_low": p_lo, "pass1_ci_high": p_hi,
        "length_ratio_mean": float(ratios.mean()), "length_ratio_p10": float(np.percentile(ratios, 10)),
        "length_ratio_p50": float(np.percentile(ratios, 50)), "length_ratio_p90": float(np.percentile(ratios, 90)),
        "loop_rate": loops / max(len(gens), 1), "loop_rate_ci_low": l_lo, "loop_rate_ci_high": l_hi,
        "diverged_share": len(diverged) / max(len(gens), 1),
        "divergence_step_mean": float(np.mean(diverged)) if diverged else float("nan"),
        "divergence_step_median": float(np.median(diverged)) if diverged else float("nan"),
        "next_token_kl_mean": float(np.mean(finite([g["kl"] for g in gens]) or [float("nan")])),
        "next_token_kl_p95": float(np.percentile(kl_all, 95)) if len(kl_all) else float("nan"),
        "attention_kl_mean": float(np.mean(finite([g["attention_kl"] for g in gens]) or [float("nan")])),
        "tf_next_token_kl_mean": float(np.mean(finite([t[0] for t in tf]) or [float("nan")])) if tf else float("nan"),
        "tf_top1_agreement": float(np.mean(finite([t[1] for t in tf]) or [float("nan")])) if tf else float("nan"),
        "tf_attention_kl_mean": float(np.mean(finite([t[2] for t in tf]) or [float("nan")])) if tf else float("nan"),
        "tf_output_error_mean": float(np.mean(finite([t[3] for t in tf]) or [float("nan")])) if tf else float("nan"),
        "seconds": seconds, "model": model_name,
    }


# What the teacher-forced figures are asked to predict, and the predictors.
CLOSED_LOOP_FIGURES = ("next_token_kl_mean", "greedy_accuracy", "pass1", "loop_rate", "length_ratio_mean",
                       "divergence_step_mean")
TEACHER_FORCED_FIGURES = ("tf_attention_kl_mean", "tf_output_error_mean", "tf_next_token_kl_mean")


def correlations(rows):
    """{(teacher-forced column, closed-loop column): (Spearman rho, n)} over the policy rows."""
    policy_rows = [r for r in rows if r["policy"] != "full"]
    out = {}
    for predictor in TEACHER_FORCED_FIGURES:
        x = [float(r[predictor]) if r.get(predictor, "") != "" else float("nan") for r in policy_rows]
        for column in CLOSED_LOOP_FIGURES:
            y = [float(r[column]) if r.get(column, "") != "" else float("nan") for r in policy_rows]
            out[(predictor, column)] = spearman(x, y)
    return out


def report_correlations(rows, progress):
    """Spearman rank correlation, over the policy rows, of each teacher-forced figure with each
    closed-loop figure."""
    found = correlations(rows)
    for predictor in TEACHER_FORCED_FIGURES:
        parts = []
        for column in CLOSED_LOOP_FIGURES:
            rho, n = found[(predictor, column)]
            parts.append(f"{column} {rho:.2f} (n={n})" if rho == rho else f"{column} - (n={n})")
        progress.note(f"rank correlation (Spearman) of {predictor} with " + ", ".join(parts))


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("problems", "max_new_tokens"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.samples < 0:
        parser.error("--samples must be at least 0")
    if args.budget is not None and args.budget < 1:
        parser.error("--budget must be at least 1")
    if args.samples and not args.temperature > 0:
        parser.error("--temperature must be above 0 when --samples is given")
    from recorder.errors import RecorderError

    from .cli import EndToEndError
    from .replay import ReplayError
    from .serve import ServeError
    try:
        run(args)
        return 0
    except (ClosedLoopError, EndToEndError, ReplayError, RecorderError, ServeError, ValueError, OSError) as e:
        if args.debug:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (finished rows are in the output)", file=sys.stderr)
        return 130
