"""Local speed-up of the executors: the same 8 jobs run here one after another, and on a
process pool of 1 and of 2 workers (``workbench.jobs``; each worker runs its jobs with its
share of the cores, ``torch.set_num_threads(cores // workers)``).

The jobs: ``wb.train_models("cnn", seeds 0..7, ...)`` with ``executor=``, one model per
job (width 0.5, 2 epochs on 1000 mnist-5k training images), the result cache turned off
(``WORKBENCH_CACHE=off``) so that every run computes everything. Serial is the same call
without ``executor`` (torch's default thread count). Each timing is wall-clock, pool start
included; the load average of the machine is printed with them, since other work on the
same cores slows the workers down.

    python benchmarks/executors.py [--jobs 8] [--epochs 2] > benchmarks/results/executors.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

import workbench as wb

RESULTS = Path(__file__).resolve().parent / "results" / "executors.json"


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    os.environ["WORKBENCH_CACHE"] = "off"  # every run computes every job
    train = wb.load_dataset("mnist-5k", "train")
    train = train.subset(torch.linspace(0, len(train) - 1, args.images).long(), "train")
    seeds = list(range(args.jobs))

    def run(executor=None) -> None:
        wb.train_models("cnn", seeds, train, args.epochs, model_kwargs={"width": 0.5, "in_channels": 1},
                        executor=executor, progress=False)  # fmt: skip

    def pool(workers: int) -> None:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context) as executor:
            run(executor)

    load = [os.getloadavg()[0]]
    seconds = {"serial": timed(run)}
    load.append(os.getloadavg()[0])
    for workers in (1, 2):
        seconds[f"{workers} worker{'s' * (workers > 1)}"] = timed(lambda w=workers: pool(w))
        load.append(os.getloadavg()[0])
    result = {
        "benchmark": "executors",
        "arguments": sys.argv[1:],
        "jobs": f"{args.jobs} x train_models job (cnn width 0.5, {args.epochs} epochs, "
        f"{args.images} images)",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch default "
        f"{torch.get_num_threads()} threads",
        "load_average_at_start_and_after_each_run": [round(v, 1) for v in load],
        "seconds": seconds,
        "speedup_vs_serial": {k: round(seconds["serial"] / v, 2) for k, v in seconds.items()},
    }
    text = json.dumps(result, indent=2)
    RESULTS.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
