"""How much a weight-matching merge depends on the seed of the descent, and whether the
objective tells the good answers from the bad.

Weight matching (Git Re-Basin's coordinate descent) visits the groups in a seeded random
order and ends at a local optimum of ``sum <A, permuted B>``; MergeMany (its N-model
merger) also visits the models in a seeded order. For two families of four models
(seeds 0..3), every pair is matched with descent seeds 0..7 and the four models are
merged by MergeMany with seeds 0..7; each merge is averaged and RESET on the training set
and scored on the test set. Per pair (and for the four): the objective (the sum over
pairs of models of their parameters' inner product, the quantity the descent maximizes)
and the test accuracy of every seed; their spread; the Spearman correlation between
objective and accuracy over the seeds; and the accuracy of the seed with the highest
objective among the first k (what ``restarts=k`` returns: no data, no test set, decides).

Families: the shipped quickstart CNNs (width 2, BatchNorm) and ResNet-20s with BatchNorm
at width 1 (16/32/64 channels) trained here by the recipe of ``benchmarks/methods.py
--families``.

    python benchmarks/weight_matching_seeds.py [--seeds 8] [--quick]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from methods import FAMILIES
from scipy.stats import spearmanr

import workbench as wb
from workbench.alignment.weight import merge_weight_matching, weight_matching, weight_objective
from workbench.graph import permutation_spec
from workbench.training import random_translate

RESTARTS = (1, 2, 4, 8)


def merged_accuracy(models, train, test, bn: str = "reset") -> float:
    merged = wb.merge_many(models, method="none", bn=bn, data=train, progress=False).model
    return wb.evaluate(merged, eval_data=test).accuracy


def summary(runs: list[dict]) -> dict:
    """Spread over the seeds, the correlation of objective and accuracy, and the accuracy
    that keeping the best objective of the first k seeds gives."""
    accuracies = [r["accuracy"] for r in runs]
    best = {
        str(k): max(runs[:k], key=lambda r: r["objective"])["accuracy"]
        for k in RESTARTS
        if k <= len(runs)
    }
    rho = spearmanr([r["objective"] for r in runs], accuracies).statistic
    return {
        "accuracy_min": min(accuracies),
        "accuracy_mean": statistics.fmean(accuracies),
        "accuracy_max": max(accuracies),
        "objective_relative_spread": (
            max(r["objective"] for r in runs) - min(r["objective"] for r in runs)
        )
        / abs(statistics.fmean(r["objective"] for r in runs)),
        "spearman_objective_accuracy": rho,
        "accuracy_at_best_objective_of_first": best,
    }


def family(name: str, models, train, test, seeds: int) -> dict:
    spec = permutation_spec(models[0], example_input=train.images[:2])
    endpoints = [wb.evaluate(m, eval_data=test).accuracy for m in models]
    pairs = []
    for i, j in itertools.combinations(range(len(models)), 2):
        runs = []
        for seed in range(seeds):
            perm = weight_matching(models[i], models[j], spec=spec, seed=seed)
            aligned = [models[i], wb.apply_permutation(models[j], spec=spec, perm=perm)]
            runs.append(
                {
                    "seed": seed,
                    "objective": weight_objective(aligned),
                    "accuracy": merged_accuracy(aligned, train, test),
                }
            )
        pairs.append({"pair": [i, j], "runs": runs, **summary(runs)})
        log(f"{name} pair {i},{j}: {[round(r['accuracy'], 3) for r in runs]}")
    runs = []
    for seed in range(seeds):
        aligned = merge_weight_matching(models, spec, seed=seed, progress=False)
        runs.append(
            {
                "seed": seed,
                "objective": weight_objective(aligned),
                "accuracy": merged_accuracy(aligned, train, test),
            }
        )
    log(f"{name} MergeMany: {[round(r['accuracy'], 3) for r in runs]}")
    pair_means = {
        key: statistics.fmean(p[key] for p in pairs)
        for key in ("accuracy_min", "accuracy_mean", "accuracy_max", "spearman_objective_accuracy")
    }
    pair_means["accuracy_at_best_objective_of_first"] = {
        k: statistics.fmean(p["accuracy_at_best_objective_of_first"][k] for p in pairs)
        for k in pairs[0]["accuracy_at_best_objective_of_first"]
    }
    return {
        "endpoints": endpoints,
        "pairs": pairs,
        "pairs_mean": pair_means,
        "merge_many": {"n_models": len(models), "runs": runs, **summary(runs)},
    }


def resnets(train, seeds=(0, 1, 2, 3)) -> list[torch.nn.Module]:
    """The ResNet-20 family of ``benchmarks/methods.py``, trained two at a time."""
    architecture, model_kwargs, recipe = FAMILIES["resnet20 (BatchNorm), width 1"]
    recipe = dict(recipe)
    epochs, translate = recipe.pop("epochs"), recipe.pop("translate")
    with ProcessPoolExecutor(2) as executor:
        return wb.train_models(
            architecture, seeds, train, epochs, model_kwargs=model_kwargs,
            augment=random_translate(translate), progress=False, executor=executor, **recipe,
        )  # fmt: skip


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=8, help="descent seeds per pair")
    parser.add_argument("--quick", action="store_true", help="2 seeds, shipped models only")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    train = wb.load_dataset("mnist-5k", "train")
    test = wb.load_dataset("mnist-5k", "test")
    seeds = 2 if args.quick else args.seeds
    families = {
        "quickstart cnn (shipped, width 2)": wb.load_quickstart_models((0, 1, 2, 3)),
    }
    if not args.quick:
        families["resnet20 (BatchNorm), width 1"] = resnets(train)
    result = {
        "benchmark": "weight_matching_seeds",
        "descent_seeds": seeds,
        "restarts": list(RESTARTS),
        "bn": "reset",
        "families": {
            name: family(name, [m.eval() for m in models], train, test, seeds)
            for name, models in families.items()
        },
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))
    if not args.quick:
        out = Path(__file__).parent / "results" / "weight_matching_seeds.json"
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
