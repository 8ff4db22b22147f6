"""ZipIt! (full, and partial at an early and a middle group) against MergeMany + RESET and
the logit ensemble of the same models, N = 2 and N = 4, and on a pair trained on disjoint
class splits (where within-model merges are supposed to pay).

On the shipped mnist-5k models (seeds 0..3, the first N); statistics, RESET and the
hyperparameter search on the training split, whose stratified 10% is held out as the
validation split of the search (``merge_many``'s default), never the test split. The full
zip searches ``within_weight`` x ``within_budget`` (the paper's alpha and beta) over the
registered grid; the partial zips reuse the
chosen point (one build each). The disjoint pair: two quickstart CNNs (width 1) trained
``--epochs`` epochs on the two halves of the classes of mnist-5k train
(``wb.train_models(..., split="disjoint")``), merged with statistics on the whole
training split. Test accuracy and loss on mnist-5k test; seconds; the within-model merges
made per group.

    python benchmarks/zipit.py [--sizes 2 4] [--epochs 8] [--no-disjoint] [--threads 1] \
        > benchmarks/results/zipit.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import workbench as wb

RESULTS = Path(__file__).resolve().parent / "results" / "zipit.json"


def metrics(model, test, seconds: float | None = None) -> dict:
    found = wb.evaluate(model, eval_data=test)
    row = {"accuracy": found.accuracy, "loss": round(found.loss, 4)}
    if seconds is not None:
        row["seconds"] = round(seconds, 1)
    return row


def compare(models, train, test, log) -> dict:
    """Every merge of ``models``: ensemble, MergeMany + RESET, ZipIt! full and partial."""
    groups = list(wb.permutation_spec(models[0], example_input=train.images[:2]).groups)
    stops = {"early": groups[0], "middle": groups[len(groups) // 2 - 1]}
    rows = {"models": [metrics(m, test)["accuracy"] for m in models]}
    rows["ensemble"] = metrics(wb.ensemble(models), test)
    started = time.perf_counter()
    weight = wb.merge_many(models, data=train, method="weight", bn="reset", progress=False)
    rows["weight_reset"] = metrics(weight.model, test, time.perf_counter() - started)
    started = time.perf_counter()
    full = wb.zipit(models, data=train, progress=False)
    rows["zipit"] = metrics(full.model, test, time.perf_counter() - started)
    point = full.report.hyperparameters
    rows["zipit"].update(
        chosen=point,
        validation=full.report.validation,
        within_merges=full.report.details.within,
    )
    log(f"N={len(models)} full: {rows['zipit']['accuracy']} {point}")
    for where, stop in stops.items():
        started = time.perf_counter()
        partial = wb.zipit(models, data=train, stop=stop, progress=False, **point)
        rows[f"zipit_partial_{where}"] = {
            "stop": stop,
            **metrics(partial.model, test, time.perf_counter() - started),
        }
        log(f"N={len(models)} stop={stop}: {rows[f'zipit_partial_{where}']['accuracy']}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--no-disjoint", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    train, test = wb.load_dataset("mnist-5k", "train"), wb.load_dataset("mnist-5k", "test")
    shipped = wb.load_quickstart_models(tuple(range(max(args.sizes))))
    result = {
        "benchmark": "zipit",
        "arguments": sys.argv[1:],
        "dataset": f"mnist-5k ({len(train)} train, 10% of it validation / {len(test)} test)",
        "within_weight_grid": list(wb.alignment.get_method("zipit").search["within_weight"]),
        "within_budget_grid": list(wb.alignment.get_method("zipit").search["within_budget"]),
        "threads": torch.get_num_threads(),
        "same_task": {str(n): compare(shipped[:n], train, test, log) for n in args.sizes},
    }
    if not args.no_disjoint:
        t = time.perf_counter()
        pair = wb.train_models(
            "cnn", (0, 1), train, args.epochs, partition="disjoint",
            model_kwargs={"in_channels": 1}, progress=False,
        )  # fmt: skip
        log(f"disjoint pair trained in {time.perf_counter() - t:.0f} s")
        result["disjoint"] = {
            "epochs": args.epochs,
            "classes": [m.workbench_split["classes"] for m in pair],
            **compare(pair, train, test, log),
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(result, indent=2, default=float)
    RESULTS.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
