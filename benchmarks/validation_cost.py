"""What the input checks cost, as a share of the calls they guard.

Every public entry point checks its data, models and arguments before work, and every
batch is checked finite as it streams (``workbench.validation``). This measures, inside
real calls on the shipped models, the seconds spent in those checks against the call's
own seconds: ``lmc_curve`` (11 points, RESET, training and test data, no cache) and
``align`` (weight matching; activation matching on the training data). The check
functions are wrapped with timers where the calls look them up, so the ratio is measured
in the same run as the call (target: under 2%).

    python benchmarks/validation_cost.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import workbench as wb
from workbench import batching, validation

# The checks, and every module that looks one of them up by name.
CHECKS = (
    "check_data",
    "check_models",
    "check_labels",
    "check_logits",
    "check_int",
    "check_number",
    "check_pass",
    "check_inputs",
)


def _instrument(spent: list[float]) -> Callable[[], None]:
    """Wrap every check (in every module that imported it) with a timer adding to
    ``spent[0]``, counting only the outermost check of a nested chain; returns the undo."""
    depth = [0]
    undo = []

    def timed(function: Callable) -> Callable:
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            depth[0] += 1
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:
                    spent[0] += time.perf_counter() - started

        return wrapper

    originals = {name: getattr(validation, name, None) for name in CHECKS}
    originals["check_inputs"] = batching.check_inputs
    for module in list(sys.modules.values()):
        if not getattr(module, "__name__", "").startswith("workbench"):
            continue
        for name, original in originals.items():
            if original is not None and getattr(module, name, None) is original:
                setattr(module, name, timed(original))
                undo.append((module, name, original))

    def restore() -> None:
        for module, name, original in undo:
            setattr(module, name, original)

    return restore


def _share(call: Callable[[], object], repeats: int) -> dict[str, float]:
    shares, totals = [], []
    for _ in range(repeats):
        spent = [0.0]
        restore = _instrument(spent)
        try:
            started = time.perf_counter()
            call()
            total = time.perf_counter() - started
        finally:
            restore()
        shares.append(spent[0] / total)
        totals.append(total)
    return {
        "seconds": statistics.median(totals),
        "check_seconds": statistics.median(s * t for s, t in zip(shares, totals, strict=True)),
        "check_share": statistics.median(shares),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    train, test = wb.load_dataset("mnist-5k", "train"), wb.load_dataset("mnist-5k", "test")
    model_a, model_b = wb.load_quickstart_models(seeds=(0, 1))
    calls = {
        "lmc_curve (11 points, RESET, train + test)": lambda: wb.lmc_curves(
            model_a, model_b, eval_data={"train": train, "test": test}, alphas=11, bn="reset", cache=False,
            progress=False,
        ),
        "align (weight matching)": lambda: wb.align(model_a, model_b, method="weight"),
        "align (activation matching)": lambda: wb.align(
            model_a, model_b, method="activation", data=train, progress=False
        ),
    }  # fmt: skip
    result = {
        "benchmark": "validation_cost",
        "threads": torch.get_num_threads(),
        "target_share": 0.02,
        "calls": {name: _share(call, args.repeats) for name, call in calls.items()},
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "validation_cost.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
