"""Cost of the streaming activation-statistics pass relative to plain forward passes.

The statistics pass runs both models over the data and accumulates, at every permutation
group, the joint mean and covariance of their activations. Its cost is compared, in the
same run, with plain ``model(x)`` forward passes of both models over the same batches
(several repeats each, interleaved; the ratio of the fastest runs, and of the medians).

    python benchmarks/statistics_pass.py [--repeats 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

import workbench as wb
from workbench.alignment import collect_statistics
from workbench.batching import batches
from workbench.graph import permutation_spec


def plain_forward(models, data) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for inputs, _ in batches(data, 500):
            for model in models:
                model(inputs)
    return time.perf_counter() - started


def statistics_pass(models, data, spec) -> float:
    started = time.perf_counter()
    collect_statistics(models, data=data, spec=spec, batch_size=500, progress=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    train = wb.load_dataset("mnist-5k", "train")
    models = wb.load_quickstart_models((0, 1))
    spec = permutation_spec(models[0], example_input=torch.zeros(2, 1, 28, 28))
    plain, stats = [], []
    for _ in range(args.repeats):  # interleaved, so that machine noise hits both alike
        plain.append(plain_forward(models, train))
        stats.append(statistics_pass(models, train, spec))
    result = {
        "benchmark": "statistics_pass",
        "models": "2 x quickstart cnn (mnist-5k checkpoints)",
        "images": len(train),
        "groups": {name: g.size for name, g in spec.groups.items()},
        "plain_forward_seconds_median": statistics.median(plain),
        "statistics_pass_seconds_median": statistics.median(stats),
        "ratio_statistics_to_plain_median": statistics.median(stats) / statistics.median(plain),
        "plain_forward_seconds_min": min(plain),
        "statistics_pass_seconds_min": min(stats),
        # noise on a shared machine only adds time: the fastest runs are the steadiest
        "ratio_statistics_to_plain": min(stats) / min(plain),
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
