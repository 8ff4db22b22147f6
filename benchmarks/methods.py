"""Every registered merging method on the same models: N = 2, 3, 4 of the shipped mnist-5k
models, and one pair trained on disjoint class splits.

For each N (the first N of seeds 0..3) and each method of :func:`workbench.methods`,
``merge_many(models, train, method, bn="reset")`` with its defaults: the hyperparameters
a method declares a grid for (CCA's ridge, OT's entropic regularization, ZipIt!'s alpha
and beta) are chosen on a validation split carved from the training data, never the test
set. Per row: test accuracy and loss, seconds, the chosen hyperparameters and their
validation scores. Next to them, per N, the endpoints' mean and the two output ensembles
of the same models (averaged logits, averaged probabilities): the ceiling a merge is
read against.

Other families (``--families``): four models (seeds 0..3) of a ResNet-20 with BatchNorm
(width 1: 16/32/64 channels) and of the quickstart CNN without normalization (a
VGG-style stack of conv-ReLU-pool blocks), trained here on the training split, merged at
N = 2 and 4 by the training-free methods (``--family-methods``); RESET where there is
BatchNorm, no BatchNorm handling otherwise.

The disjoint pair: two quickstart CNNs (the shipped recipe, seeds 10 and 11) trained on
the two halves of ``wb.partition(train, 2, "disjoint")`` (5 classes each); each row adds
the accuracy on the test set as each part sees it (its own classes).

One thread by default (a CPU shared with other jobs runs these small convolutions
faster on one); seconds are wall-clock on the machine named in the output.

    python benchmarks/methods.py [--sizes 2 3 4] [--methods ...] [--no-disjoint] \
        > benchmarks/results/methods.json
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import torch

import workbench as wb
from workbench.merging.ensemble import COMBINE
from workbench.training import random_translate

# The families trained here: (architecture, model kwargs, training kwargs).
FAMILIES = {
    "resnet20 (BatchNorm), width 1": (
        "resnet20",
        {"width": 1.0, "in_channels": 1},
        {"epochs": 8, "lr": 0.1, "batch_size": 128, "translate": 2},
    ),
    "cnn without normalization, width 1": (
        "cnn",
        {"width": 1.0, "in_channels": 1, "batch_norm": False},
        {"epochs": 15, "lr": 0.1, "batch_size": 32, "translate": 2},
    ),
}
FAMILY_METHODS = ("none", "weight", "activation", "cca", "ot")

# The shipped models' recipe (their checkpoint metadata), for the disjoint pair.
RECIPE = {"batch_size": 128, "lr": 0.2, "epochs": 15, "translate": 2}
DISJOINT_SEEDS = (10, 11)


def plain(value):
    """``value`` as JSON data (tuples as lists, tensors and other objects as text)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return str(value)


def metrics(model, test, parts=None) -> dict:
    found = wb.evaluate(model, eval_data=test)
    row = {"accuracy": found.accuracy, "loss": found.loss}
    if parts is not None:
        row["accuracy_parts"] = wb.per_part_accuracy(model, eval_data=test, parts=parts)
    return row


def merged_row(models, train, test, method: str, parts=None) -> dict:
    """``merge_many`` with RESET where the models have BatchNorm, else no BN handling."""
    started = time.perf_counter()
    bn = "reset" if wb.modules.has_batchnorm(models[0]) else None
    result = wb.merge_many(models, data=train, method=method, bn=bn, progress=False)
    seconds = time.perf_counter() - started
    report = result.report
    return {
        "method": method,
        "n_models": len(models),
        **metrics(result.model, test, parts),
        "seconds": round(seconds, 1),
        "hyperparameters": plain(report.hyperparameters),
        "validation": plain(report.validation),
    }


def reference_rows(models, test, parts=None) -> list[dict]:
    """The endpoints' mean and the two output ensembles of ``models``."""
    ends = [metrics(m, test, parts) for m in models]
    mean = {
        key: (
            sum(e[key] for e in ends) / len(ends)
            if key != "accuracy_parts"
            else [sum(p) / len(ends) for p in zip(*(e[key] for e in ends), strict=True)]
        )
        for key in ends[0]
    }
    rows = [{"method": "endpoints", "n_models": len(models), **mean}]
    for combine in COMBINE:
        rows.append(
            {
                "method": f"ensemble ({combine})",
                "n_models": len(models),
                **metrics(wb.ensemble(models, combine=combine), test, parts),
            }
        )
    return rows


def family_rows(name: str, train, test, methods, sizes) -> dict:
    """Four models of a family trained here, merged at each N by each method."""
    architecture, model_kwargs, recipe = FAMILIES[name]
    recipe = dict(recipe)
    epochs, translate = recipe.pop("epochs"), recipe.pop("translate")
    started = time.perf_counter()
    models = wb.train_models(
        architecture, (0, 1, 2, 3), train, epochs, model_kwargs=model_kwargs,
        augment=random_translate(translate), progress=False, **recipe,
    )  # fmt: skip
    rows = []
    for n in sizes:
        for method in methods:
            rows.append(merged_row(models[:n], train, test, method))
            log(f"{name} N={n} {method}: {rows[-1]['accuracy']:.4f}")
        rows.extend(reference_rows(models[:n], test))
    return {
        "architecture": architecture,
        "model_kwargs": model_kwargs,
        "recipe": FAMILIES[name][2],
        "training_seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
    }


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="*", default=[2, 3, 4])
    parser.add_argument("--methods", nargs="+", default=None, help="default: all registered")
    parser.add_argument("--no-disjoint", action="store_true")
    parser.add_argument("--families", nargs="*", default=[], help=f"of {list(FAMILIES)}")
    parser.add_argument("--family-methods", nargs="+", default=list(FAMILY_METHODS))
    parser.add_argument("--family-sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    torch.manual_seed(0)
    train = wb.load_dataset("mnist-5k", "train")
    test = wb.load_dataset("mnist-5k", "test")
    models = wb.load_quickstart_models((0, 1, 2, 3))
    methods = args.methods or wb.methods()

    rows = []
    for n in args.sizes:
        for method in methods:
            rows.append(merged_row(models[:n], train, test, method))
            log(f"N={n} {method}: {rows[-1]['accuracy']:.4f} in {rows[-1]['seconds']} s")
        rows.extend(reference_rows(models[:n], test))

    disjoint = None
    if not args.no_disjoint:
        parts = wb.partition(train, 2, "disjoint", seed=0)
        recipe = {k: v for k, v in RECIPE.items() if k not in ("epochs", "translate")}
        pair = wb.train_models(
            "cnn",
            DISJOINT_SEEDS,
            train,
            RECIPE["epochs"],
            model_kwargs={"width": 2.0, "in_channels": 1},
            partition="disjoint",
            augment=random_translate(RECIPE["translate"]),
            progress=False,
            **recipe,
        )
        pair_rows = [merged_row(pair, train, test, m, parts) for m in methods]
        for row in pair_rows:
            log(f"disjoint {row['method']}: {row['accuracy']:.4f} parts {row['accuracy_parts']}")
        disjoint = {
            "seeds": list(DISJOINT_SEEDS),
            "recipe": RECIPE,
            "parts_classes": [sorted(p.partition["classes"]) for p in parts],
            "rows": pair_rows + reference_rows(pair, test, parts),
        }

    families = {
        name: family_rows(name, train, test, args.family_methods, args.family_sizes)
        for name in args.families
    }

    result = {
        "benchmark": "methods",
        "models": "quickstart cnn (width 2, the shipped checkpoints), mnist-5k seeds 0..3, first N",
        "bn": "reset",
        "methods": methods,
        "sizes": args.sizes,
        "test_images": len(test),
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "rows": rows,
        "disjoint_pair": disjoint,
        "families": families,
        "seconds_total": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
