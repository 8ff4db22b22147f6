"""Does aligning every model to one reference lose more at N = 4 than MergeMany?

``merge_many`` aligns N models either by a method's N-model merger (MergeMany for weight
matching: each model matched to the average of the others, no reference) or by aligning
every other model to a reference (activation matching, CCA, OT). The two differ in the
scheme *and* in the matching, so this script separates them on four models of the CNN
family without normalization of ``benchmarks/methods.py --families`` (same recipe, trained
here, one thread): weight matching by MergeMany and weight matching to model 0 (the same
matching, both schemes), and activation matching to model 0, merged at N = 4 with no
BatchNorm handling (none to handle) and with REPAIR. The weight-matching rows run with
descent seeds 0..3 (their answers depend on the seed: ``weight_matching_seeds.py``).

Seeds are trained in order from 0 until four have learned; a run that did not
(``wb.DidNotLearnWarning``: the recipe's learning rate can leave every ReLU dead) is
listed and left out.

    python benchmarks/reference_scheme.py [--descent-seeds 4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
from methods import FAMILIES

import workbench as wb
from workbench.alignment.weight import merge_weight_matching, weight_matching
from workbench.graph import permutation_spec
from workbench.training import random_translate

FAMILY = "cnn without normalization, width 1"
BN = ("none", "repair")


def learned_models(train, count: int = 4, tries: int = 8) -> tuple[list, list[dict]]:
    """The first ``count`` seeds of the family that learned, and the seeds that did not."""
    architecture, model_kwargs, recipe = FAMILIES[FAMILY]
    recipe = dict(recipe)
    epochs, translate = recipe.pop("epochs"), recipe.pop("translate")
    models, dead = [], []
    for seed in range(tries):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", wb.DidNotLearnWarning)
            (model,) = wb.train_models(
                architecture, [seed], train, epochs, model_kwargs=model_kwargs,
                augment=random_translate(translate), progress=False, **recipe,
            )  # fmt: skip
        unlearned = [str(w.message) for w in caught if w.category is wb.DidNotLearnWarning]
        if unlearned:
            dead.append({"seed": seed, "message": unlearned[0]})
            log(f"seed {seed} did not learn")
            continue
        model.workbench_seed = seed
        models.append(model.eval())
        if len(models) == count:
            return models, dead
    raise RuntimeError(f"only {len(models)} of {tries} seeds learned")


def scored(aligned, train, test) -> dict:
    row = {}
    for bn in BN:
        merged = wb.merge_many(aligned, method="none", bn=bn, data=train, progress=False).model
        row[bn] = wb.evaluate(merged, eval_data=test).accuracy
    return row


def spread(runs: list[dict]) -> dict:
    return {
        bn: {
            "mean": statistics.fmean(r[bn] for r in runs),
            "min": min(r[bn] for r in runs),
            "max": max(r[bn] for r in runs),
        }
        for bn in BN
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--descent-seeds", type=int, default=4)
    args = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(1)  # the recipe's models as methods.py trains them
    torch.manual_seed(0)
    train = wb.load_dataset("mnist-5k", "train")
    test = wb.load_dataset("mnist-5k", "test")
    models, dead = learned_models(train)
    torch.set_num_threads(2)
    spec = permutation_spec(models[0], example_input=train.images[:2])
    schemes: dict[str, list[dict]] = {"mergemany_weight": [], "weight_to_model_0": []}
    for seed in range(args.descent_seeds):
        aligned = merge_weight_matching(models, spec, seed=seed, progress=False)
        schemes["mergemany_weight"].append({"seed": seed, **scored(aligned, train, test)})
        to_first = [models[0]] + [
            wb.apply_permutation(
                m, spec=spec, perm=weight_matching(models[0], m, spec=spec, seed=seed)
            )
            for m in models[1:]
        ]
        schemes["weight_to_model_0"].append({"seed": seed, **scored(to_first, train, test)})
        log(
            f"descent seed {seed}: {schemes['mergemany_weight'][-1]} {schemes['weight_to_model_0'][-1]}"
        )
    to_first = [models[0]] + [
        wb.align(models[0], m, method="activation", data=train, progress=False) for m in models[1:]
    ]
    activation = scored(to_first, train, test)
    result = {
        "benchmark": "reference_scheme",
        "family": FAMILY,
        "recipe": FAMILIES[FAMILY][2],
        "model_seeds": [m.workbench_seed for m in models],
        "did_not_learn": dead,
        "endpoints": [wb.evaluate(m, eval_data=test).accuracy for m in models],
        "n_models": len(models),
        "bn": list(BN),
        "runs": {**schemes, "activation_to_model_0": activation},
        "summary": {
            "mergemany_weight": spread(schemes["mergemany_weight"]),
            "weight_to_model_0": spread(schemes["weight_to_model_0"]),
            "activation_to_model_0": activation,
        },
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "reference_scheme.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
