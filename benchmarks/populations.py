"""Populations kept in one basin while they train (WASH, PAPA) against independent models
aligned after training, N = 4 on mnist-5k at the shipped recipe.

Each population: ``wb.train_population("cnn", 4, data=train, method=..., seed=0)`` with
the shipped models' recipe (width 2, 15 epochs, SGD lr 0.2 one-cycle, batch 128, random
translations of 2 pixels), the recipes' defaults from their papers (WASH
``shuffle_probability=0.001`` with the linear per-layer decrease; PAPA ``strength=0.01``
every ``period=10`` steps) unless ``--variants`` adds others. Per population: the
members' mean test accuracy; the output ensemble (averaged logits); the weight average
of the members with RESET (``merge_many(members, train, "none", bn="reset")``), and for
the independent models also after activation matching (the best alignment on these
models in ``methods.json``) and weight matching; the mean over the six pairs of the
unaligned barrier between members (``pairwise_curves(..., method="none")``, test loss,
RESET on 1000 training images, 11 points) with its accuracy barrier; the training time
relative to the independent population's (the same N models trained side by side: the
time of training the N models independently).

    python benchmarks/populations.py [--epochs 15] [--variants wash:shuffle_probability=0.01] \
        > benchmarks/results/populations.json

The training times of the main run are wall-clock on a CPU shared with other work, one
population after another, so their ratios carry the load of the moment. ``--timing``
measures the ratios instead: one epoch of each population, the recipes interleaved, the
median of ``--repeats`` rounds (``populations_timing.json``).

    python benchmarks/populations.py --timing [--repeats 3] \
        > benchmarks/results/populations_timing.json
"""

from __future__ import annotations

import argparse
import ast
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import workbench as wb

RESULTS = Path(__file__).resolve().parent / "results" / "populations.json"
RECIPE = {"width": 2.0, "epochs": 15, "lr": 0.2, "batch_size": 128, "translate": 2}
RESET_IMAGES = 1000


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_variant(text: str) -> tuple[str, dict]:
    """``"wash:shuffle_probability=0.01,layer_schedule='constant'"`` -> (method, options)."""
    method, _, rest = text.partition(":")
    options = {}
    for item in filter(None, rest.split(",")):
        name, _, value = item.partition("=")
        options[name] = ast.literal_eval(value)
    return method, options


def accuracy(model, test) -> float:
    return wb.evaluate(model, eval_data=test).accuracy


def measure(population, train, test, reset_data, aligned: bool) -> dict:
    """Every number of one population (see the module docstring)."""
    members = population.members
    row = {
        "method": population.method,
        "options": population.recipe["options"],
        "train_seconds": round(population.seconds, 1),
        "members": [accuracy(m, test) for m in members],
        "ensemble": accuracy(wb.ensemble(members), test),
    }
    row["members_mean"] = float(np.mean(row["members"]))
    merges = ["none", "activation", "weight"] if aligned else ["none"]
    for method in merges:
        merged = wb.merge_many(members, data=train, method=method, bn="reset", progress=False).model
        row[f"average_{method}_reset"] = accuracy(merged, test)
    curves = wb.pairwise_curves(
        members,
        eval_data={"test": test},
        alphas=11,
        bn="reset",
        method="none",
        data=reset_data,
        progress=False,
    )
    row["barrier_unaligned"] = float(np.mean([c.barrier for c in curves]))
    row["accuracy_barrier_unaligned"] = float(np.mean([c.accuracy_barrier for c in curves]))
    row["ensemble_minus_average"] = row["ensemble"] - row["average_none_reset"]
    row["final_spread"] = population.spread[-1]
    return row


def timing(train, n: int, repeats: int) -> dict:
    """Median seconds of one epoch per recipe, the recipes interleaved in each round."""
    seconds: dict[str, list[float]] = {"independent": [], "wash": [], "papa": []}
    for _ in range(repeats):
        for method in seconds:
            population = wb.train_population(
                "cnn", n, data=train, method=method, epochs=1, seed=0,
                model_kwargs={"width": RECIPE["width"]}, lr=RECIPE["lr"],
                batch_size=RECIPE["batch_size"],
                augment=wb.random_translate(RECIPE["translate"]), progress=False,
            )  # fmt: skip
            seconds[method].append(population.seconds)
            log(f"{method}: {population.seconds:.1f} s")
    median = {method: float(np.median(times)) for method, times in seconds.items()}
    return {
        "benchmark": "populations timing",
        "epochs": 1,
        "n": n,
        "repeats": repeats,
        "seconds": {method: [round(t, 1) for t in times] for method, times in seconds.items()},
        "time_vs_independent": {
            method: round(median[method] / median["independent"], 3) for method in median
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    parser.add_argument("--variants", nargs="*", default=[])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    train, test = wb.load_dataset("mnist-5k", "train"), wb.load_dataset("mnist-5k", "test")
    if args.timing:
        text = json.dumps(
            {**timing(train, args.n, args.repeats), "arguments": sys.argv[1:]}, indent=2
        )
        RESULTS.with_name("populations_timing.json").write_text(text + "\n")
        print(text)
        return
    index = torch.linspace(0, len(train) - 1, RESET_IMAGES).long()
    reset_data = train.subset(index, "train")
    runs = [("independent", {}), ("wash", {}), ("papa", {})]
    runs += [parse_variant(v) for v in args.variants]
    rows = []
    for method, options in runs:
        population = wb.train_population(
            "cnn", args.n, data=train, method=method, epochs=args.epochs, seed=0,
            model_kwargs={"width": RECIPE["width"]}, lr=RECIPE["lr"],
            batch_size=RECIPE["batch_size"], augment=wb.random_translate(RECIPE["translate"]),
            progress=False, **options,
        )  # fmt: skip
        log(f"{method} {options}: trained in {population.seconds:.0f} s")
        rows.append(measure(population, train, test, reset_data, method == "independent"))
        log(json.dumps(rows[-1]))
    independent = rows[0]
    for row in rows:
        row["time_vs_independent"] = round(row["train_seconds"] / independent["train_seconds"], 2)
        row["barrier_vs_independent"] = row["barrier_unaligned"] / independent["barrier_unaligned"]
    result = {
        "benchmark": "populations",
        "arguments": sys.argv[1:],
        "dataset": f"mnist-5k ({len(train)} train / {len(test)} test)",
        "recipe": {**RECIPE, "epochs": args.epochs, "n": args.n},
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s)",
        "populations": rows,
        "seconds": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(result, indent=2, default=float)
    RESULTS.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
