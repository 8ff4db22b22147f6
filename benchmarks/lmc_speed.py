"""Cost of an LMC curve (and a loss plane) relative to the plain forward passes it needs.

A curve of K points over a dataset needs, at the least, K forward passes of the model over
the data in eval mode, and with RESET also K times the statistics passes of an exact
RESET: for each BatchNorm layer in order, an eval-mode pass up to that layer (the layers
before it already renormalized) that measures its input's mean and variance over all the
data. ``lmc_curve`` with the cache off is timed against exactly those plain passes of the
same model over the same data, in the same run, interleaved and repeated so that machine
noise hits both alike; the ratio of medians is reported (target: at most 1.2). The plane
through three models (R x R points) is timed the same way. The papers' RESET, one
train-mode pass with BatchNorm's cumulative averaging (``momentum=None``), is cheaper but
not exact (batch statistics normalize the layers after the first); the price of
exactness is reported as the ratio of the plain exact passes to it, and the curve with
(exact) RESET is also set beside K of these one-pass RESETs and K forward passes: the
least any curve with RESET does (``lmc_curve`` measures every layer's statistics in one
layer-major pass where the data's activations fit the memory budget:
:mod:`workbench.alignment.layer_major`).

    python benchmarks/lmc_speed.py [--repeats 3] [--alphas 11] [--resolution 4]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import time

import torch
from torch import nn

import workbench as wb
from workbench.batching import batches
from workbench.modules import default_device


def plain_forward(model: nn.Module, data, device) -> None:
    """One eval-mode pass over ``data``: the least any evaluation must do."""
    model.eval()
    with torch.inference_mode():
        for inputs, _ in batches(data, 500):
            model(inputs.to(device))


class _Stop(Exception):
    """Raised by a hook to end a pass at the layer it measured."""


def plain_exact_reset(model: nn.Module, data, device) -> None:
    """Exact RESET in plain PyTorch: each BatchNorm in turn gets the mean and variance of
    its input over all of ``data``, measured in eval mode with the layers before it
    already reset; the pass stops at the layer it measures."""
    model.eval()
    for layer in [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]:
        moments = {"count": 0, "sum": 0.0, "squares": 0.0}

        def measure(module, args, moments=moments):
            x = args[0].transpose(0, 1).flatten(1).double()  # channels x observations
            moments["count"] += x.shape[1]
            moments["sum"] = moments["sum"] + x.sum(1)
            moments["squares"] = moments["squares"] + x.square().sum(1)
            raise _Stop

        handle = layer.register_forward_pre_hook(measure)
        with torch.inference_mode():
            for inputs, _ in batches(data, 500):
                with contextlib.suppress(_Stop):
                    model(inputs.to(device))
        handle.remove()
        count = moments["count"]
        mean = moments["sum"] / count
        variance = (moments["squares"] / count - mean.square()) * count / (count - 1)
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(variance)


def plain_reset(model: nn.Module, data, device) -> None:
    """The papers' RESET: one train-mode pass with BatchNorm's cumulative averaging
    (momentum None)."""
    for layer in model.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.momentum = None
            layer.reset_running_stats()
    model.train()
    with torch.inference_mode():
        for inputs, _ in batches(data, 500):
            model(inputs.to(device))
    model.eval()


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--alphas", type=int, default=11)
    parser.add_argument("--resolution", type=int, default=4)
    args = parser.parse_args()
    device = default_device()
    data = wb.load_dataset("mnist-5k", "train")
    models = [m.to(device) for m in wb.load_quickstart_models((0, 1, 2))]
    a, b = models[:2]
    work = copy.deepcopy(a)
    k, points = args.alphas, args.resolution**2
    common = {"progress": False, "cache": False}

    def baseline(count: int, reset=None) -> None:
        for _ in range(count):
            if reset is not None:
                reset(work, data, device)
            plain_forward(work, data, device)

    runs = {
        "plain_k": lambda: baseline(k),
        "curve": lambda: wb.lmc_curve(a, b, eval_data=data, alphas=k, bn=None, **common),
        "plain_k_one_pass_reset": lambda: baseline(k, plain_reset),
        "plain_k_reset": lambda: baseline(k, plain_exact_reset),
        "curve_reset": lambda: wb.lmc_curve(a, b, eval_data=data, alphas=k, bn="reset", **common),
        "plain_plane_reset": lambda: baseline(points, plain_exact_reset),
        "plane_reset": lambda: wb.loss_plane(
            models, eval_data=data, resolution=args.resolution, bn="reset", **common
        ),
    }
    for fn in runs.values():  # warm-up: first-call costs (allocator, tracing) are not LMC's
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved, so that machine noise hits all alike
        for name, fn in runs.items():
            times[name].append(timed(fn))
    median = {name: statistics.median(t) for name, t in times.items()}
    result = {
        "benchmark": "lmc_speed",
        "models": "quickstart cnn (mnist-5k checkpoints), seeds 0, 1 (and 2 for the plane)",
        "images": len(data),
        "alphas": k,
        "plane_points": points,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "seconds_median": median,
        "seconds_all": times,
        "ratio_curve_to_plain": median["curve"] / median["plain_k"],
        "ratio_curve_reset_to_plain": median["curve_reset"] / median["plain_k_reset"],
        "ratio_plane_reset_to_plain": median["plane_reset"] / median["plain_plane_reset"],
        "ratio_exact_to_one_pass_reset": median["plain_k_reset"] / median["plain_k_one_pass_reset"],
        "ratio_curve_reset_to_one_pass_reset": (
            median["curve_reset"] / median["plain_k_one_pass_reset"]
        ),
        "target": "curve ratios <= 1.2",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
