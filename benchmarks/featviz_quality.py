"""Feature visualization quality against optimization steps and learning rate, and what a
whole layer costs in the NeuronExplorer dashboard.

For conv1, conv2 and conv3 of the quickstart model (seed 0), the first 8 channels are
rendered after 8 ... 256 steps with each learning rate (`wb.featviz.steps_tradeoff`,
uncached). Quality is the channel's own objective (mean activation) on the picture, on the
training data's scale: 1 = as strong as the best mnist-5k training image, 0 = as strong as
an average one (`wb.featviz.render_quality`); "noise" is the starting image (0 steps).
For each layer and learning rate: the smallest step count whose mean quality is within 10%
of the 256-step quality (of the same learning rate, and of the best learning rate), and
the smallest that brings 90% of the gain from the starting noise to 256 steps (the noise
is not at 0: a flat grey image is no average digit).

The dashboard renders every unit of a layer in four models (A, B matched, merged, merged +
RESET); four quickstart models of the same architecture stand in for them here: all 64
conv2 channels of each, uncached, per step count and torch thread count.

Seconds are wall-clock and process CPU time (all threads). On a machine shared with other
jobs, a 2-thread run waits for both cores at every step and its wall time balloons; a
1-thread run's wall time stays close to its CPU time, hence --threads 1 for the tables.

    nice -n 10 python benchmarks/featviz_quality.py --threads 1 > benchmarks/results/featviz_quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

import workbench as wb
from workbench.featviz import render_quality, steps_tradeoff
from workbench.featviz.render import channel_count, resolve_layer

LAYERS = ("features.conv1", "features.conv2", "features.conv3")


def smallest(quality: dict[str, float], floor: float) -> int | None:
    """The smallest step count whose mean quality reaches ``floor``."""
    return min((int(s) for s, q in quality.items() if q >= floor), default=None)


def tradeoff(model, layer: str, train, channels, steps, lr: float) -> dict:
    found = steps_tradeoff(
        model, layer=layer, data=train, channels=channels, steps=steps, lr=lr, progress=False
    )
    quality = found.mean_quality()
    return {
        str(s): {
            "seconds": found.seconds[s],
            "cpu_seconds": found.cpu_seconds[s],
            "mean_quality": float(quality[i]),
            "min_quality": float(found.quality[i].min()),
            "mean_contrast": float(found.contrast[i].mean()),
        }
        for i, s in enumerate(found.steps)
    }


def layer_study(model, layer: str, train, channels, steps, lrs) -> dict:
    """Quality and seconds per step count for each learning rate, the quality of the
    starting noise, and the smallest step counts within 10% of the longest run."""
    start = wb.render_channels(
        model, layer=layer, channels=channels, steps=0, cache=False, progress=False
    )
    noise = float(
        render_quality(model, layer=layer, channels=channels, images=start, data=train).mean()
    )
    by_lr = {str(lr): {"steps": tradeoff(model, layer, train, channels, steps, lr)} for lr in lrs}
    final = str(max(steps))
    best = max(run["steps"][final]["mean_quality"] for run in by_lr.values())
    for run in by_lr.values():
        quality = {s: row["mean_quality"] for s, row in run["steps"].items()}
        end = quality[final]
        run["steps_within_10pct_of_own_final"] = smallest(quality, 0.9 * end)
        run["steps_within_10pct_of_best_final"] = smallest(quality, 0.9 * best)
        run["steps_to_90pct_of_gain_from_noise"] = smallest(quality, noise + 0.9 * (end - noise))
    return {"noise_mean_quality": noise, "final_steps": int(final), "lrs": by_lr}


def dashboard_cost(models, layer: str, steps, lr: float, threads: int) -> dict:
    """Seconds to render every channel of ``layer`` in each model, as the dashboard does."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = {}
    try:
        for count in steps:
            wall = cpu = 0.0
            for model in models:
                channels = range(channel_count(resolve_layer(model, layer=layer)))
                started, cpu_started = time.perf_counter(), time.process_time()
                wb.render_channels(
                    model,
                    layer=layer,
                    channels=channels,
                    steps=count,
                    lr=lr,
                    cache=False,
                    progress=False,
                )
                wall += time.perf_counter() - started
                cpu += time.process_time() - cpu_started
            rows[str(count)] = {"seconds": wall, "cpu_seconds": cpu}
            progress = {"dashboard_steps": count, "threads": threads, **rows[str(count)]}
            print(json.dumps(progress), file=sys.stderr, flush=True)
    finally:
        torch.set_num_threads(saved)
    return {"threads": threads, "models": len(models), "steps": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", nargs="+", default=list(LAYERS))
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    parser.add_argument("--lrs", type=float, nargs="+", default=[0.05, 0.1, 0.2])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dashboard-layer", default="features.conv2")
    parser.add_argument("--dashboard-steps", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--dashboard-lr", type=float, default=0.2)
    parser.add_argument("--dashboard-threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    models = wb.load_quickstart_models((0, 1, 2, 3))
    train = wb.load_dataset("mnist-5k", "train")
    channels = list(range(args.channels))
    layers = {}
    for layer in args.layers:
        layers[layer] = layer_study(models[0], layer, train, channels, args.steps, args.lrs)
        print(json.dumps({layer: layers[layer]}), file=sys.stderr, flush=True)
    dashboard = [
        dashboard_cost(models, args.dashboard_layer, args.dashboard_steps, args.dashboard_lr, t)
        for t in args.dashboard_threads
    ]
    result = {
        "benchmark": "featviz_quality",
        "model": "quickstart cnn (seed 0); dashboard: seeds 0-3",
        "data": "mnist-5k train (the quality reference)",
        "quality": "(objective(render) - mean over data) / (max over data - mean over data), "
        "objective = the channel's mean activation (lucent's channel objective)",
        "channels": channels,
        "threads": args.threads,
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "layers": layers,
        "dashboard": {"layer": args.dashboard_layer, "lr": args.dashboard_lr, "runs": dashboard},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
