"""Merging 2, 3 and 4 of the shipped mnist-5k models with the training-free methods (none,
weight, activation, CCA; benchmarks/methods.py has all of them), after RESET, and a
look inside CCA's maps.

For N = 2, 3, 4 (the first N of seeds 0..3) and each method, the merged model's test
accuracy and loss (CCA's ridge chosen on a validation split of the training data), next
to the mean accuracy of the N models. The diagnostics then look at a pair: how well each
alignment preserves model B's own function (test accuracy of B mapped into A's space, on
its own; CCA's with its BatchNorm statistics measured on the training split), how close CCA's maps are to permutations (mean share of each row's largest
entry: 1 for a permutation, 1/C for a uniform mix), and the canonical correlations.

    python benchmarks/merge_quality.py [--sizes 2 3 4]
"""

from __future__ import annotations

import argparse
import json

import torch

import workbench as wb
from workbench.alignment import cca_align, cca_maps, collect_statistics, general_groups
from workbench.graph import permutation_spec

# The training-free methods this benchmark has always compared (methods.py compares all).
CLASSIC = ("none", "weight", "activation", "cca")


def diagnostics(models, train, test, gammas) -> dict:
    model_a, model_b = models[:2]
    fit, _ = wb.train_val_split(train, 0.1)
    spec = permutation_spec(model_a, example_input=train.images[:2])
    stats = collect_statistics([model_a, model_b], data=fit, spec=spec, progress=False)
    out = {
        "b_alone_test_accuracy": {
            "original": wb.evaluate(model_b, eval_data=test).accuracy,
            "weight": wb.evaluate(
                wb.align(model_a, model_b, method="weight"), eval_data=test
            ).accuracy,
            "activation": wb.evaluate(
                wb.align(model_a, model_b, method="activation", data=fit), eval_data=test
            ).accuracy,
        },
        "cca": {},
    }
    for gamma in gammas:
        image = cca_align(model_a, model_b, data=fit, spec=spec, gamma=gamma, statistics=stats)
        found = cca_maps(stats, gamma, spec, general_groups(model_b, spec=spec))
        out["cca"][str(gamma)] = {
            "b_alone_test_accuracy": wb.evaluate(image, eval_data=test).accuracy,
            "row_max_share": {
                name: round((t.abs().max(1).values / t.abs().sum(1)).mean().item(), 3)
                for name, t in found.maps.items()
            },
            "mean_canonical_correlation": {
                name: round(rho.mean().item(), 3) for name, rho in found.correlations.items()
            },
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 3, 4])
    args = parser.parse_args()
    torch.manual_seed(0)
    train = wb.load_dataset("mnist-5k", "train")
    test = wb.load_dataset("mnist-5k", "test")
    models = wb.load_quickstart_models((0, 1, 2, 3))
    table = wb.compare_methods(
        models,
        data=train,
        eval_data=test,
        methods=CLASSIC,
        sizes=args.sizes,
        bn="reset",
        progress=False,
    )
    rows = table.to_dict(orient="records")
    merged = table[table["method"] != "endpoints"].set_index(["method", "n_models"])["accuracy"]
    ceiling = table[table["method"] == "endpoints"].set_index("n_models")["accuracy"]
    drop = {
        label: {int(n): round(100 * (ceiling[n] - merged[label, n]), 2) for n in args.sizes}
        for label in map(wb.figures.method_label, CLASSIC)
    }
    result = {
        "benchmark": "merge_quality",
        "models": "quickstart cnn (width 2, the shipped checkpoints), mnist-5k seeds 0..3, first N",
        "bn": "reset",
        "table": rows,
        "accuracy_drop_points_vs_endpoints": drop,
        "diagnostics_pair_0_1": diagnostics(models, train, test, (0.01, 0.3, 1.0)),
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main()
