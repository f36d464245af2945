# %% [markdown]
# # thinkv-sim from Python, notebook style
#
# Each `# %%` block is a notebook cell (VS Code, Jupyter's jupytext, or plain `python` run it
# top to bottom). The cells replay a trace, compare policies at equal memory, sweep three
# traces and draw the aggregated figure with matplotlib, saved as a PNG.
#
#     make build                                   # the binary (.build/release/thinkv-sim)
#     PATH=$PWD/.build/release:$PATH PYTHONPATH=python python python/examples/notebook.py
#
# `--quick` runs every cell on fewer steps (the package's tests run it so); `--figure PATH`
# chooses where the PNG goes (default docs/images/python-example.png).

# %%
import argparse
import os
import sys
import time

import matplotlib

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # a script draws off-screen; a notebook keeps its inline backend

import thinkv_sim as tk
from thinkv_sim import plot

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--quick", action="store_true", help="fewer decode steps (seconds, not minutes)")
parser.add_argument("--figure", default="docs/images/python-example.png", help="where the PNG goes")
parser.add_argument("--workdir", default="out/python-example", help="synthetic traces and the sweep's CSV")
args = parser.parse_args([] if "ipykernel" in sys.modules else None)

TRACE = "traces/sample-synthetic.h5"
STEPS = 48 if args.quick else 512
os.makedirs(args.workdir, exist_ok=True)
print(f"thinkv_sim {tk.__version__}, binary {tk.binary()}")

# %% [markdown]
# ## 1. Replay: several policies at one token budget
#
# One row per policy; `policy` is the name, `label` the full label, parameters are `param_*`
# columns and the metrics have the sweep CSV's names.

# %%
runs = tk.replay(TRACE, ["full", "h2o", "rkv", "snapkv", "kivi"], budget=128, layers=[-1], steps=STEPS)
print(runs[["label", "param_budget", "attention_kl_mean", "output_error_mean", "percent_of_full_mean"]]
      .to_string(index=False))

# %% [markdown]
# ## 2. Equal memory: every budgeted policy matched to 20 % of the full cache
#
# A long comparison reports progress while the binary bisects (a tqdm bar when tqdm is
# installed, else lines on stderr); a callback receives the same reports.

# %%
reports = []
equal = tk.replay(TRACE, ["h2o", "rkv", "snapkv", "streaming", "kivi"], kv_percent=20, layers=[-1], steps=STEPS,
                  progress=reports.append)
print(equal[["label", "kv_match_status", "achieved_percent", "attention_kl_mean", "output_error_mean"]]
      .to_string(index=False))
print(f"{len(reports)} progress report(s); the last: {reports[-1] if reports else None}")

# %% [markdown]
# Mistakes are typed exceptions with the one-line message and, for a near miss, a suggestion.

# %%
try:
    tk.replay(TRACE, "h2o", budget=64, windw=3)
except tk.UsageError as error:
    print(f"UsageError: {error} -> suggestion {error.suggestion!r}")
try:
    tk.replay("no-such-trace.h5", "h2o", budget=64)
except tk.TraceError as error:
    print(f"TraceError: {error}")

# %% [markdown]
# ## 3. A sweep over three synthetic traces at three memory targets
#
# `synth` writes seeded synthetic traces; the sweep config is a dict (or a JSON file, as on
# the command line), its results a DataFrame under the same column names as `replay`.

# %%
traces = []
for seed in (1, 2, 3):
    path = os.path.join(args.workdir, f"synthetic-{seed}.h5")
    if not os.path.exists(path):
        tk.run(["synth", "-o", path, "--tokens", "192" if args.quick else "768", "--layers", "2", "--seed", str(seed),
                "--head-dim", "32" if args.quick else "64"])
    traces.append(path)
started = time.monotonic()
config = {"traces": traces, "policies": ["full", "h2o", "rkv", "snapkv", "streaming", "kivi"],
          "kv_percent": [10, 20, 40], "layers": [1], "steps": 512}
if args.quick:
    config.update(policies=["full", "h2o", "streaming"], kv_percent=[20, 40], steps=16)
table = tk.sweep(config, output=os.path.join(args.workdir, "sweep.csv"))
print(f"{len(table)} runs in {time.monotonic() - started:.0f} s")
print(table.pivot_table(index="policy", columns="kv_percent", values="attention_kl_mean").round(3).to_string())

# %% [markdown]
# ## 4. The aggregated figure, as `thinkv-sim plot` draws it
#
# x is each trace's own share of its full cache, every trace is a small point, and the 95 %
# interval of the mean over the three traces is drawn. The function returns the Figure, to
# restyle before saving.

# %%
fig = plot.fidelity_memory(table, metrics=["kl", "output_error"])
fig.suptitle("3 synthetic traces: mean over traces and 95 % interval")
fig.set_size_inches(10, 3.6)
os.makedirs(os.path.dirname(args.figure) or ".", exist_ok=True)
fig.savefig(args.figure, dpi=100)
print(f"figure: {args.figure} ({os.path.getsize(args.figure) // 1024} KiB)")
