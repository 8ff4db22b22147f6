"""Alignment quality on the shipped mnist-5k checkpoints.

For every pair among seeds 0..3: the loss barrier and the midpoint accuracy on the test
set for naive interpolation, weight matching and activation matching, each with no BN
handling, RESET and REPAIR (statistics and matching on the training set). Each curve has
``ALPHAS`` evenly spaced points, as a user's ``lmc_curve(..., alphas=11)`` has: the barrier
is the maximum over all of them (a 3-point curve misses the peak when it is off the
midpoint), the midpoint accuracy is the one at alpha = 0.5. How the barrier moves with
width is `width_sweep.py`.

    python benchmarks/alignment_quality.py [--seeds 0 1 2 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time

import torch

import workbench as wb
from workbench.alignment import align
from workbench.graph import permutation_spec

METHODS = ("none", "weight", "activation")
BN_MODES = (None, "reset", "repair")
ALPHAS = 11  # odd, so that alpha = 0.5 is on the path


def pair_rows(model_a, model_b, train, test, spec, label: str) -> list[dict]:
    rows = []
    for method in METHODS:
        started = time.perf_counter()
        aligned = align(model_a, model_b, method=method, data=train, spec=spec)
        seconds = time.perf_counter() - started
        for bn in BN_MODES:
            curve = wb.lmc_curve(
                model_a,
                aligned,
                eval_data=test,
                alphas=ALPHAS,
                bn=bn,
                data=train,
                spec=spec,
                progress=False,
            )
            rows.append(
                {
                    "pair": label,
                    "method": method,
                    "bn": bn or "none",
                    "barrier": curve.barrier,
                    "rebasin_barrier": curve.rebasin_barrier,
                    "midpoint_accuracy": curve.midpoint_accuracy,
                    "accuracy_a": float(curve.accuracy[0]),
                    "accuracy_b": float(curve.accuracy[-1]),
                    "mean_endpoint_accuracy": float(curve.accuracy[[0, -1]].mean()),
                    "align_seconds": seconds,
                }
            )
    return rows


def seed_accuracies(rows: list[dict]) -> dict[str, float]:
    """Each model's own test accuracy, read off the endpoints of its naive curves without
    BN handling (endpoints neither aligned nor renormalized: the shipped models as they are)."""
    accuracies = {}
    for row in rows:
        if row["method"] == "none" and row["bn"] == "none":
            seed_a, seed_b = row["pair"].split("-")
            accuracies[seed_a], accuracies[seed_b] = row["accuracy_a"], row["accuracy_b"]
    return accuracies


def summarize(rows: list[dict]) -> dict:
    summary = {}
    for method, bn in itertools.product(METHODS, ("none", "reset", "repair")):
        sel = [r for r in rows if r["method"] == method and r["bn"] == bn]
        summary[f"{method}+{bn}"] = {
            "barrier_mean": statistics.mean(r["barrier"] for r in sel),
            "barrier_max": max(r["barrier"] for r in sel),
            "midpoint_accuracy_mean": statistics.mean(r["midpoint_accuracy"] for r in sel),
            "midpoint_gap_mean": statistics.mean(
                r["mean_endpoint_accuracy"] - r["midpoint_accuracy"] for r in sel
            ),
        }
    naive_reset = summary["none+reset"]["barrier_mean"]
    for method in ("weight", "activation"):
        entry = summary[f"{method}+reset"]
        entry["barrier_ratio_to_naive_reset"] = entry["barrier_mean"] / naive_reset
        entry["meets_target"] = (
            entry["barrier_ratio_to_naive_reset"] < 0.1 and entry["midpoint_gap_mean"] <= 0.015
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    train, test = wb.load_dataset("mnist-5k", "train"), wb.load_dataset("mnist-5k", "test")
    models = dict(zip(args.seeds, wb.load_quickstart_models(tuple(args.seeds)), strict=True))
    spec = permutation_spec(models[args.seeds[0]], example_input=torch.zeros(2, 1, 28, 28))
    rows = []
    for i, j in itertools.combinations(args.seeds, 2):
        rows += pair_rows(models[i], models[j], train, test, spec, f"{i}-{j}")
        print(f"pair {i}-{j} done", file=sys.stderr, flush=True)
    result = {
        "benchmark": "alignment_quality",
        "data": "mnist-5k test (statistics on train)",
        "alphas": ALPHAS,
        "test_accuracy": seed_accuracies(rows),
        "pairs": rows,
        "summary": summarize(rows),
    }
    print(json.dumps(result["summary"], indent=2), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
