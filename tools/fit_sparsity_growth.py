#!/usr/bin/env python3
"""Fits how attention sparsity grows with context length, per layer, in a recorded trace.

The synthetic generator (thinkv-sim synth, docs/synthetic-traces.md) makes each step's target
sparsity rise with its position the way a recorded trace's does. This script produces the
constants it uses (SparsityGrowth.fitted in Sources/ThinKVSim/Synthetic/SyntheticTraceConfig.swift).

Input: the per-step CSV of a full-cache replay, which holds the contract's sparsity of every
(layer, decode step):

    thinkv-sim replay traces/smollm2-135m-math.h5 --policy full --csv steps.csv
    python3 tools/fit_sparsity_growth.py steps.csv

Model used by the generator, per layer (logistic in log position):

    s(p) = 1 / (1 + exp(-(alpha + gamma * ln(p + 1))))

i.e. the odds that a visible position is sparse grow as (p + 1) ** gamma. The generator keeps
each thought type's own level and takes gamma, the slope. Fitted by least squares in s
(Gauss-Newton from a straight-line fit of the clipped logit).

For comparison the script also fits s(p) = 1 - b * (p + 1) ** (-c) (the fraction of attended
positions decays as a power of the context; c = 1: a constant number of attended positions),
with b in closed form for each c on a grid of step 0.001 in [0, 2].

Quality is reported as the RMSE over steps, the RMSE of ten equal-count position bins (the
trend without step noise), and R^2 against a constant (the share of the per-step variance the
curve explains).
"""
import argparse
import csv
import json
from collections import defaultdict

import numpy as np


def quality(positions, sparsity, predicted):
    residual = sparsity - predicted
    rmse = float(np.sqrt(np.mean(residual ** 2)))
    total = float(np.sum((sparsity - sparsity.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual ** 2)) / total if total > 0 else float("nan")
    bins = np.array_split(np.argsort(positions, kind="stable"), 10)
    binned = [(float(positions[i].mean()), float(sparsity[i].mean()), float(predicted[i].mean())) for i in bins]
    binned_rmse = float(np.sqrt(np.mean([(m - f) ** 2 for _, m, f in binned])))
    return {"rmse": rmse, "binned_rmse": binned_rmse, "r2": r2, "bins": binned}


def fit_logistic(positions, sparsity):
    x = np.log(positions + 1.0)
    clipped = np.clip(sparsity, 0.005, 0.995)
    gamma, alpha = np.polyfit(x, np.log(clipped / (1 - clipped)), 1)
    theta = np.array([alpha, gamma])
    for _ in range(200):
        f = 1 / (1 + np.exp(-(theta[0] + theta[1] * x)))
        jacobian = np.stack([f * (1 - f), f * (1 - f) * x], axis=1)
        step = np.linalg.lstsq(jacobian, sparsity - f, rcond=None)[0]
        theta = theta + step
        if np.abs(step).max() < 1e-12:
            break
    predicted = 1 / (1 + np.exp(-(theta[0] + theta[1] * x)))
    return {"alpha": float(theta[0]), "gamma": float(theta[1]), **quality(positions, sparsity, predicted),
            "first_position": int(positions.min()), "last_position": int(positions.max())}


def fit_power(positions, sparsity):
    x_log = np.log(positions + 1.0)
    dense = 1.0 - sparsity
    best = None
    for c in np.arange(0.0, 2.0005, 0.001):
        x = np.exp(-c * x_log)
        b = float(np.dot(dense, x) / np.dot(x, x))
        error = float(np.sum((dense - b * x) ** 2))
        if best is None or error < best[2]:
            best = (float(c), b, error)
    c, b, _ = best
    predicted = 1.0 - b * (positions + 1.0) ** (-c)
    return {"b": b, "c": c, **quality(positions, sparsity, predicted)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", help="per-step CSV of `thinkv-sim replay TRACE --policy full --csv FILE`")
    parser.add_argument("--json", action="store_true", help="print the fits as JSON")
    args = parser.parse_args()

    rows = defaultdict(list)
    with open(args.csv, newline="") as f:
        for row in csv.DictReader(f):
            if row["policy"] != "full":
                continue
            rows[int(row["layer"])].append((int(row["position"]), float(row["sparsity"])))
    if not rows:
        raise SystemExit(f"{args.csv}: no rows of policy 'full'")
    fits = {}
    for layer in sorted(rows):
        data = np.array(rows[layer], dtype=np.float64)
        fits[layer] = {"logistic": fit_logistic(data[:, 0], data[:, 1]), "power": fit_power(data[:, 0], data[:, 1])}

    if args.json:
        print(json.dumps(fits, indent=2))
        return
    print("logistic in log p: s = 1/(1+exp(-(alpha + gamma ln(p+1))))")
    print("layer    alpha   gamma    rmse  binned  R^2   first bin -> last bin (measured / fitted)")
    for layer, fit in fits.items():
        f = fit["logistic"]
        first, last = f["bins"][0], f["bins"][-1]
        print(f"{layer:5d} {f['alpha']:8.3f} {f['gamma']:7.3f} {f['rmse']:7.4f} {f['binned_rmse']:6.4f} {f['r2']:5.2f}   "
              f"p~{first[0]:.0f}: {first[1]:.3f}/{first[2]:.3f} -> p~{last[0]:.0f}: {last[1]:.3f}/{last[2]:.3f}")
    print("\npower law (comparison): s = 1 - b (p+1)^-c")
    print("layer        b       c    rmse  binned  R^2")
    for layer, fit in fits.items():
        f = fit["power"]
        print(f"{layer:5d} {f['b']:8.4f} {f['c']:7.3f} {f['rmse']:7.4f} {f['binned_rmse']:6.4f} {f['r2']:5.2f}")
    print("\nSwift (SparsityGrowth.fittedCurves):")
    for layer, fit in fits.items():
        f = fit["logistic"]
        print(f"    SparsityCurve(layer: {layer}, alpha: {f['alpha']:.3f}, gamma: {f['gamma']:.3f}),")


if __name__ == "__main__":
    main()
