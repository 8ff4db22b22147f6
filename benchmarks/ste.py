"""The straight-through estimator (STE) against weight matching on the shipped models.

Two parts, both on mnist-5k:

1. **choice of the defaults** (``--choose-pairs``): the training split is cut into a fit
   part and a validation part (``wb.train_val_split``, 10%); STE runs on the fit part for
   every learning rate of ``--lrs`` and the validation barrier (11 points, RESET on 1,200
   images of the fit part) of the permutation it would return is read at every step count of
   ``--steps`` (one run per learning rate: a run of n steps returns what a longer run
   with the same seed has chosen by step n). The test set is not read here.
2. **evaluation** (all pairs of ``--seeds``): weight matching and STE with the defaults of
   ``workbench/alignment/ste.py``, run on the whole training split; the test-set barrier
   (11 points, RESET on the training split) of each, STE's seconds and how many of B's
   channels it matches differently from weight matching.

    python benchmarks/ste.py [--seeds 0 1 2 3] [--choose-pairs 0-1 2-3] [--threads 1]

prints the JSON document and writes it to ``benchmarks/results/ste.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import workbench as wb
from workbench.alignment import ste
from workbench.graph import permutation_spec

ALPHAS = 11
RESET_IMAGES = 1000  # RESET statistics of the choice: every (fit // 1000)-th fit image
RESULT = Path(__file__).resolve().parent / "results" / "ste.json"


def barrier(model_a, model_b, spec, perm, data, bn_data) -> float:
    aligned = wb.apply_permutation(model_b, spec=spec, perm=perm)
    curve = wb.lmc_curve(
        model_a,
        aligned,
        eval_data=data,
        alphas=ALPHAS,
        bn="reset",
        data=bn_data,
        spec=spec,
        progress=False,
    )
    return curve.barrier


def choose(models, pairs, spec, train, lrs, steps) -> dict:
    """Validation barriers of STE by learning rate and step count (step 0: weight matching)."""
    fit, val = wb.train_val_split(train, 0.1, seed=0)
    reset_data = fit.subset(torch.arange(0, len(fit), len(fit) // RESET_IMAGES), "train")
    inner_fit, held_out = ste._split(fit, 0.1, 0)  # what ste_matching(fit, ...) holds out
    rows = []
    for (i, j), lr in itertools.product(pairs, lrs):
        run = ste._trajectory(
            models[i],
            models[j],
            spec,
            inner_fit,
            held_out,
            steps=max(steps),
            lr=lr,
            batch_size=ste.BATCH_SIZE,
            seed=0,
            progress=False,
        )
        seconds, points = 0.0, iter(run)
        while True:
            started = time.perf_counter()
            step, perm, held = next(points, (None, None, None))
            seconds += time.perf_counter() - started
            if step is None:
                break
            if step in steps or step == 0:
                rows.append(
                    {
                        "pair": f"{i}-{j}",
                        "lr": lr,
                        "steps": step,
                        "held_out_midpoint_loss": held,
                        "val_barrier": barrier(models[i], models[j], spec, perm, val, reset_data),
                        "ste_seconds_so_far": seconds,
                    }
                )
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    table = {}
    for lr, step in itertools.product(lrs, [0, *steps]):
        sel = [r["val_barrier"] for r in rows if r["lr"] == lr and r["steps"] == step]
        table[f"lr={lr:g} steps={step}"] = statistics.mean(sel)
    data = "mnist-5k train: 90% fit, 10% validation; RESET on 1,200 fit images (every 3rd)"
    return {"data": data, "rows": rows, "mean": table}


def evaluate(models, seeds, spec, train, test, save) -> dict:
    rows = []
    for i, j in itertools.combinations(seeds, 2):
        a, b = models[i], models[j]
        started = time.perf_counter()
        perm_wm = wb.weight_matching(a, b, spec=spec)
        wm_seconds = time.perf_counter() - started
        started = time.perf_counter()
        perm_ste = wb.ste_matching(a, b, data=train, spec=spec, progress=False)
        ste_seconds = time.perf_counter() - started
        rows.append(
            {
                "pair": f"{i}-{j}",
                "weight_barrier": barrier(a, b, spec, perm_wm, test, train),
                "ste_barrier": barrier(a, b, spec, perm_ste, test, train),
                "weight_seconds": wm_seconds,
                "ste_seconds": ste_seconds,
                "channels_moved_from_weight": {
                    g: int((perm_ste[g] != perm_wm[g]).sum()) for g in perm_wm
                },
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
        save({"data": "(partial: the run stopped before every pair was done)", "rows": rows})
    summary = {
        "weight_barrier_mean": statistics.mean(r["weight_barrier"] for r in rows),
        "ste_barrier_mean": statistics.mean(r["ste_barrier"] for r in rows),
        "ste_seconds_mean": statistics.mean(r["ste_seconds"] for r in rows),
        "pairs_ste_not_higher": sum(r["ste_barrier"] <= r["weight_barrier"] for r in rows),
        "pairs": len(rows),
    }
    return {"data": "mnist-5k test (STE and RESET on train)", "rows": rows, "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--choose-pairs", nargs="*", default=["0-1", "2-3"])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50, 100])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-evaluate", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train, test = wb.load_dataset("mnist-5k", "train"), wb.load_dataset("mnist-5k", "test")
    seeds = sorted({*args.seeds, *(int(s) for p in args.choose_pairs for s in p.split("-"))})
    models = dict(zip(seeds, wb.load_quickstart_models(tuple(seeds)), strict=True))
    spec = permutation_spec(models[seeds[0]], example_input=torch.zeros(2, 1, 28, 28))
    result = {
        "benchmark": "ste",
        "alphas": ALPHAS,
        "threads": torch.get_num_threads(),
        "defaults": {"steps": ste.STEPS, "lr": ste.LR, "batch_size": ste.BATCH_SIZE},
    }
    if args.choose_pairs:
        pairs = [tuple(int(s) for s in p.split("-")) for p in args.choose_pairs]
        result["choice"] = choose(models, pairs, spec, train, args.lrs, sorted(args.steps))
        RESULT.write_text(json.dumps(result, indent=2) + "\n")
    elif RESULT.is_file():  # --choose-pairs with no pairs: keep the last run's choice
        result["choice"] = json.loads(RESULT.read_text()).get("choice")
    if not args.no_evaluate:

        def save(partial: dict) -> None:
            RESULT.write_text(json.dumps({**result, "evaluation": partial}, indent=2) + "\n")

        result["evaluation"] = evaluate(models, args.seeds, spec, train, test, save)
    text = json.dumps(result, indent=2)
    RESULT.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
