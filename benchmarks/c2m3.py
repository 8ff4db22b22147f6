"""C2M3 against MergeMany: the same objective, two optimizers, N = 2, 3 and 4 models.

C2M3 (Crisostomi et al., 2024) and MergeMany (Ainsworth et al., 2023) both permute N
models to maximize the sum over pairs of their parameters' inner product, data free;
C2M3 moves every group of every model at once (Frank-Wolfe over doubly stochastic
matrices, models mapped to a universe order), MergeMany one model's groups at a time. For
two families of four models (seeds 0..3: the shipped quickstart CNNs and ResNet-20s with
BatchNorm at width 1 trained by the recipe of ``benchmarks/methods.py --families``), the
first N models are merged by

* MergeMany, descent seeds 0..S-1 (its answer depends on the seed:
  ``weight_matching_seeds.py``);
* C2M3 as the workbench runs it (model 0's order is the universe), start seeds 0..S-1;
* C2M3 with every model moving, as the paper's procedure does (``anchor=False``), seed 0;

each averaged, its BatchNorm statistics RESET on the training set, or REPAIRed towards
the aligned models (the renormalization the paper pairs C2M3 with), and scored on the
test set. Per run: the objective (:func:`~workbench.alignment.weight.weight_objective` of
the models in one order), the test accuracy with RESET and with REPAIR, the seconds, and for C2M3 its steps and whether the
Frank-Wolfe gap closed. And the cycle error that motivates C2M3: for the first three
models, the share of channels that pairwise weight matching A->B, B->C, C->A does not
bring back to where they started (C2M3's maps compose to the identity by construction;
checked here too).

    python benchmarks/c2m3.py [--seeds 4] [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from weight_matching_seeds import merged_accuracy, resnets

import workbench as wb
from workbench.alignment.c2m3 import match_to_universe
from workbench.alignment.weight import merge_weight_matching, weight_matching, weight_objective
from workbench.graph import permutation_spec
from workbench.graph.transforms import compose


def run(models, train, test, merge) -> dict:
    """One merge: ``merge()`` returns the models in one order and extra fields."""
    started = time.perf_counter()
    aligned, extra = merge()
    seconds = time.perf_counter() - started
    return {
        "objective": weight_objective(aligned),
        "accuracy": merged_accuracy(aligned, train, test, "reset"),
        "accuracy_repair": merged_accuracy(aligned, train, test, "repair"),
        "seconds": round(seconds, 2),
        **extra,
    }


def c2m3(models, spec, **options):
    def merge():
        found = match_to_universe(models, spec=spec, progress=False, **options)
        aligned = [
            wb.apply_permutation(m, spec=spec, perm=p)
            for m, p in zip(models, found.permutations, strict=True)
        ]
        return aligned, {"steps": found.steps, "converged": found.converged}

    return merge


def merge_many(models, spec, seed):
    def merge():
        return merge_weight_matching(models, spec, seed=seed, progress=False), {}

    return merge


def cycle_error(models, spec) -> dict:
    """Share of channels not brought back by A->B->C->A: pairwise weight matching and C2M3."""

    def share(ab, bc, ca) -> float:
        # channels of A, into B's order, into C's, back into A's (compose: first, then)
        loop = compose(compose(ca, bc), ab)
        moved = sum(int((p != torch.arange(len(p))).sum()) for p in loop.values())
        return moved / sum(len(p) for p in loop.values())

    a, b, c = models[:3]
    pairwise = share(
        weight_matching(a, b, spec=spec),  # B into A's order
        weight_matching(b, c, spec=spec),  # C into B's order
        weight_matching(c, a, spec=spec),  # A into C's order
    )
    found = match_to_universe([a, b, c], spec=spec, progress=False)
    universe = share(found.pairwise(0, 1), found.pairwise(1, 2), found.pairwise(2, 0))
    return {"weight_matching_pairwise": pairwise, "c2m3": universe}


def summary(runs: list[dict]) -> dict:
    values = [r["accuracy"] for r in runs]
    repaired = [r["accuracy_repair"] for r in runs]
    return {
        "accuracy_mean": statistics.fmean(values),
        "accuracy_min": min(values),
        "accuracy_max": max(values),
        "accuracy_repair_mean": statistics.fmean(repaired),
        "accuracy_repair_min": min(repaired),
        "accuracy_repair_max": max(repaired),
        "objective_mean": statistics.fmean(r["objective"] for r in runs),
        "seconds_mean": statistics.fmean(r["seconds"] for r in runs),
    }


def family(name: str, models, train, test, seeds: int, sizes) -> dict:
    spec = permutation_spec(models[0], example_input=train.images[:2])
    rows = []
    for n in sizes:
        subset = models[:n]
        schemes = {
            "MergeMany": [
                run(subset, train, test, merge_many(subset, spec, s)) for s in range(seeds)
            ],
            "C2M3": [run(subset, train, test, c2m3(subset, spec, seed=s)) for s in range(seeds)],
            "C2M3, every model moving (paper)": [
                run(subset, train, test, c2m3(subset, spec, anchor=False))
            ],
        }
        for scheme, runs in schemes.items():
            rows.append({"n_models": n, "scheme": scheme, "runs": runs, **summary(runs)})
            log(
                f"{name} N={n} {scheme}: {[round(r['accuracy'], 3) for r in runs]} "
                f"REPAIR {[round(r['accuracy_repair'], 3) for r in runs]}"
            )
    return {
        "endpoints": [wb.evaluate(m, eval_data=test).accuracy for m in models],
        "rows": rows,
        "cycle_error": cycle_error(models, spec),
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=4, help="seeds per scheme")
    parser.add_argument("--quick", action="store_true", help="1 seed, shipped models, N = 2, 3")
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.perf_counter()
    train = wb.load_dataset("mnist-5k", "train")
    test = wb.load_dataset("mnist-5k", "test")
    seeds = 1 if args.quick else args.seeds
    sizes = (2, 3) if args.quick else (2, 3, 4)
    families = {"quickstart cnn (shipped, width 2)": wb.load_quickstart_models((0, 1, 2, 3))}
    if not args.quick:
        families["resnet20 (BatchNorm), width 1"] = resnets(train)
    result = {
        "benchmark": "c2m3 quick" if args.quick else "c2m3",
        "seeds": seeds,
        "bn": ["reset", "repair"],
        "families": {
            name: family(name, [m.eval() for m in models], train, test, seeds, sizes)
            for name, models in families.items()
        },
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))
    if not args.quick:
        out = Path(__file__).parent / "results" / "c2m3.json"
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
