"""Which training recipe of the quickstart CNN leaves aligned models connected at the midpoint.

For each recipe: four models (seeds 0..3) trained on mnist-5k, then for all six pairs the
midpoint of the linear path after weight matching and after activation matching, with
RESET (statistics and matching on the training set, accuracy on the test set). The gap is
the mean endpoint accuracy minus the midpoint accuracy, in points; the shipped checkpoints
use the recipe whose gap is under 1.5 points for both matchings.

    python benchmarks/recipe_study.py [--recipes width1 width2 ...]
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

BASE = {"width": 1.0, "epochs": 15, "lr": 0.2, "weight_decay": 5e-4, "translate": 2}
RECIPES = {
    "width1": BASE,
    "width1-30ep": {**BASE, "epochs": 30},
    "width1-lr0.4": {**BASE, "lr": 0.4},
    "width1-wd2e-3": {**BASE, "weight_decay": 2e-3},
    "width1-30ep-wd2e-3": {**BASE, "epochs": 30, "weight_decay": 2e-3},
    "width2": {**BASE, "width": 2.0},
}
METHODS = ("weight", "activation")


def study(name: str, train, test, seeds: list[int]) -> dict:
    recipe = RECIPES[name]
    started = time.perf_counter()
    models = wb.train_models(
        "cnn",
        seeds,
        train,
        recipe["epochs"],
        model_kwargs={"width": recipe["width"], "in_channels": 1},
        lr=recipe["lr"],
        weight_decay=recipe["weight_decay"],
        augment=wb.random_translate(recipe["translate"]) if recipe["translate"] else None,
        progress=False,
    )
    seconds = (time.perf_counter() - started) / len(models)
    gaps = {method: [] for method in METHODS}
    endpoints = []
    for a, b in itertools.combinations(models, 2):
        for method in METHODS:
            aligned = wb.align(a, b, method=method, data=train)
            curve = wb.lmc_curve(
                a,
                aligned,
                eval_data=test,
                alphas=[0.0, 0.5, 1.0],
                bn="reset",
                data=train,
                progress=False,
            )
            mean_end = float(curve.accuracy[[0, -1]].mean())
            gaps[method].append(100 * (mean_end - curve.midpoint_accuracy))
            endpoints.append(mean_end)
    return {
        "recipe": name,
        **recipe,
        "train_seconds_per_model": seconds,
        "endpoint_accuracy_mean": statistics.mean(endpoints),
        **{f"midpoint_gap_{m}_points": statistics.mean(gaps[m]) for m in METHODS},
        **{f"midpoint_gap_{m}_points_max": max(gaps[m]) for m in METHODS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    train, test = wb.load_dataset("mnist-5k", "train"), wb.load_dataset("mnist-5k", "test")
    rows = []
    for name in args.recipes:
        rows.append(study(name, train, test, args.seeds))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    result = {
        "benchmark": "recipe_study",
        "data": "mnist-5k: trained and matched on train, accuracy on test, RESET",
        "seeds": args.seeds,
        # Training sums in the order of the CPU's kernels: another CPU, other models.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "recipes": rows,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
