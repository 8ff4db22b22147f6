"""Optimal-transport fusion ("ot") against weight and activation matching, and between
models of different widths, on mnist-5k.

1. **equal widths** (the shipped quickstart pair, seeds 0 and 1, width 2): ``merge_many``
   with ``bn="reset"`` for "weight", "activation" and "ot" (its ``epsilon`` chosen by
   merge_many on a validation split it carves from the training data); test accuracy and
   loss of the merged model, and the test barrier (11 points, RESET on the training split)
   of the path from A to B aligned by each method.
2. **different widths**: a half-width model (width 1) trained here on the training split
   (the quickstart recipe, ``--epochs`` epochs, seed 10), fused by OT into the full-width
   shipped model (seed 0, the reference), and the other way round. Epsilon and the
   consumer-side matrix (the paper's ``n_A T^T``, kept, or ``n_B T^T``) are chosen on
   the validation split; the test accuracy of both endpoints, of B transported alone
   (RESET) and of the merged model (average + RESET) are reported.

    python benchmarks/ot.py [--epochs 5] [--threads 1]

prints the JSON document and writes it to ``benchmarks/results/ot.json``. The test set is
read only for the final numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import workbench as wb
from workbench.alignment import ot
from workbench.graph import permutation_spec
from workbench.graph.transforms import GroupMap

ALPHAS = 11
RESULT = Path(__file__).resolve().parent / "results" / "ot.json"
PASS = {"progress": False}


def _split_consumer(plan: torch.Tensor) -> GroupMap:
    """The alternative consumer side: ``into = n_B T^T`` (rows summing to 1)."""
    plan = torch.as_tensor(plan, dtype=torch.float64)
    out = plan / plan.sum(1, keepdim=True)
    return GroupMap(out, (plan / plan.sum(0, keepdim=True)).T.contiguous())


def _merged(model_a, aligned, data):
    return wb.reset_bn(wb.average([model_a, aligned]), data)


def equal_widths(a, b, spec, train, test) -> dict:
    rows = []
    for method in ("weight", "activation", "ot"):
        started = time.perf_counter()
        result = wb.merge_many([a, b], train, method, bn="reset", **PASS)
        seconds = time.perf_counter() - started
        point = result.report.hyperparameters
        aligned = wb.align(a, b, method, train, spec, **point, **PASS)
        curve = wb.lmc_curve(
            a,
            aligned,
            test,
            alphas=ALPHAS,
            bn="reset",
            bn_data=train,
            spec=spec,
            cache=False,
            **PASS,
        )
        metrics = wb.evaluate(result.model, test)
        rows.append(
            {
                "method": method,
                "merged_test_accuracy": metrics.accuracy,
                "merged_test_loss": metrics.loss,
                "test_barrier": curve.barrier,
                "chosen": point,
                "validation": result.report.validation,
                "merge_many_seconds": seconds,
            }
        )
        print(json.dumps(rows[-1]), flush=True, file=sys.stderr)
    return {"rows": rows}


def _fuse(model_a, model_b, train, test, fit, val) -> dict:
    """OT of B into A: the choice on validation, then the test numbers."""
    spec = permutation_spec(model_a, train.images[:2])
    spec_b = permutation_spec(model_b, train.images[:2])
    stats = wb.alignment.collect_statistics(
        [model_a, model_b], fit, spec, specs=[spec, spec_b], **PASS
    )
    scores, default_map = {}, ot.plan_map
    for consumer, plan_map in (
        ("n_A T^T (paper, kept)", default_map),
        ("n_B T^T", _split_consumer),
    ):
        ot.plan_map = plan_map
        try:
            for eps in ot.EPSILON_GRID:
                result = wb.match(model_a, model_b, "ot", fit, spec, epsilon=eps, statistics=stats)
                aligned = wb.alignment.apply_alignment(model_b, result, fit, model_a)
                merged = _merged(model_a, aligned, fit)
                scores[f"{consumer}, epsilon={eps:g}"] = wb.evaluate(merged, val).accuracy
        finally:
            ot.plan_map = default_map
    epsilons = {eps: scores[f"n_A T^T (paper, kept), epsilon={eps:g}"] for eps in ot.EPSILON_GRID}
    chosen = max(epsilons, key=epsilons.get)  # the first of equals: the smallest epsilon
    started = time.perf_counter()
    aligned = wb.align(model_a, model_b, "ot", train, spec, epsilon=chosen, **PASS)
    seconds = time.perf_counter() - started
    merged = _merged(model_a, aligned, train)
    return {
        "widths": {
            "reference_a": spec.groups["features.conv1"].size,
            "b": spec_b.groups["features.conv1"].size,
        },
        "validation": scores,
        "chosen_epsilon": chosen,
        "test_accuracy": {
            "a": wb.evaluate(model_a, test).accuracy,
            "b": wb.evaluate(model_b, test).accuracy,
            "b_transported_alone_reset": wb.evaluate(wb.reset_bn(aligned, train), test).accuracy,
            "merged": wb.evaluate(merged, test).accuracy,
        },
        "merged_test_loss": wb.evaluate(merged, test).loss,
        "ot_seconds": seconds,
    }


def different_widths(a, train, test, fit, val, epochs: int) -> dict:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(10)
        init = wb.create_model("cnn", width=1, in_channels=1)
    started = time.perf_counter()
    half = wb.train_model(
        init, train, epochs, 10, lr=0.2, augment=wb.random_translate(2), device="cpu", **PASS
    )
    train_seconds = time.perf_counter() - started
    return {
        "half_width_model": {"width": 1, "epochs": epochs, "seed": 10, "lr": 0.2, "translate": 2,
                             "train_seconds": train_seconds},
        "half_into_full": _fuse(a, half, train, test, fit, val),
        "full_into_half": _fuse(half, a, train, test, fit, val),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train, test = wb.load_dataset("mnist-5k", "train"), wb.load_dataset("mnist-5k", "test")
    fit, val = wb.train_val_split(train, 0.1, seed=0)
    a, b = wb.load_quickstart_models((0, 1))
    spec = permutation_spec(a, train.images[:2])
    result = {
        "benchmark": "ot",
        "models": "quickstart cnn (width 2), mnist-5k seeds 0 and 1; a width-1 cnn trained here",
        "alphas": ALPHAS,
        "threads": torch.get_num_threads(),
        "epsilon_grid": list(ot.EPSILON_GRID),
        "validation": "10% of mnist-5k train (train_val_split seed 0); the rest for statistics",
    }
    result["equal_widths"] = equal_widths(a, b, spec, train, test)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    result["different_widths"] = different_widths(a, train, test, fit, val, args.epochs)
    text = json.dumps(result, indent=2)
    RESULT.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
