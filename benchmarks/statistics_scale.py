"""Time and peak memory of the statistics pass at scale, relative to plain forward passes.

Two randomly initialized models (seeds 0 and 1) of one architecture, the same random
images, the same batch size: plain ``model(x)`` forward passes of both models over the
images, against :func:`~workbench.alignment.collect_statistics` (``within=True``, the full
joint covariance that CCA and ZipIt! use; ``within=False``, what activation matching and
OT collect). Time is wall-clock and CPU time (all threads; the steadier of the two on a
shared machine). Every measurement runs in a fresh subprocess, and its peak memory is that
process's maximum resident set size (``resource.getrusage``: tracemalloc does not see
torch's allocations); the subprocess first builds the models and the data and reads the
spec (derived once, in a subprocess of its own), so every measurement starts from the
same resident baseline, reported too.

The spec's subprocess also counts floating-point operations per image: the plain forward
passes (``torch.utils.flop_counter``) and the products the statistics need at every
observation point (2 C_a C_b K for the cross block of channels C_a, C_b over K positions;
C^2 K more per model for the within blocks, the least a symmetric product can take). Their
ratio is the pass's time ratio at equal throughput of the products and the convolutions:
no exact pass can be faster than that by more than the throughput of its products.

    python benchmarks/statistics_scale.py [--images 128] [--batch-size 32] [--repeats 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from _subprocess import (
    add_child_arguments,
    cpu_seconds,
    parse_or_run_child,
    peak_bytes,
    run_child,
)
from torch.utils.data import TensorDataset

MODELS = {  # name -> (constructor, image size, channels)
    "tv:resnet50": ("resnet50", 224, 3),
    "quickstart cnn": ("quickstart", 28, 1),
}
KINDS = ("plain", "statistics", "statistics_cross")


def _models(name: str) -> tuple[list[torch.nn.Module], int, int]:
    import torchvision

    import workbench as wb

    constructor, size, channels = MODELS[name]
    if constructor == "quickstart":
        return list(wb.load_quickstart_models((0, 1))), size, channels
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(getattr(torchvision.models, constructor)().eval())
    return models, size, channels


def child(name: str, kind: str, images: int, batch_size: int, spec_path: Path) -> dict:
    """One measurement (run in its own process); ``kind="spec"`` derives the spec and
    saves it to ``spec_path``, where the others read it (its own peak memory is not
    theirs)."""
    from workbench.alignment import collect_statistics
    from workbench.batching import batches
    from workbench.graph import PermutationSpec, permutation_spec

    models, size, channels = _models(name)
    if kind == "spec":
        example = torch.zeros(2, channels, size, size)
        spec = permutation_spec(models[0], example_input=example)
        spec.save(spec_path)
        return flops_per_image(models, spec, example[:1])
    spec = PermutationSpec.load(spec_path)
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.randn(images, channels, size, size, generator=generator),
        torch.zeros(images, dtype=torch.long),
    )
    baseline = peak_bytes()
    cpu, started = cpu_seconds(), time.perf_counter()
    if kind == "plain":
        with torch.inference_mode():
            for inputs, _ in batches(data, batch_size):
                for model in models:
                    model(inputs)
    else:
        collect_statistics(
            models,
            data=data,
            spec=spec,
            within=kind == "statistics",
            batch_size=batch_size,
            progress=False,
        )
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu
    peak = peak_bytes()
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_bytes": peak, "baseline_bytes": baseline}


def flops_per_image(models: list[torch.nn.Module], spec, example: torch.Tensor) -> dict:
    """Operations per image of the plain forward passes and of the statistics' products
    (cross blocks; within blocks, symmetric), at every observation point of every group."""
    from torch.utils.flop_counter import FlopCounterMode

    from workbench.alignment.lockstep import lockstep
    from workbench.alignment.statistics import observation_points

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        for model in models:
            model(example)
    points = [p for g in spec.groups.values() for p in observation_points(g).items()]
    shapes: dict[str, torch.Size] = {}

    def record(node: str, outputs: list[torch.Tensor]) -> None:
        shapes[node] = outputs[0].shape

    runner = lockstep(models[:1], [spec], list(dict.fromkeys(n for n, _ in points)), record)
    with torch.inference_mode():
        runner(example)
    cross = within = 0
    for node, dim in points:
        width = shapes[node][dim]
        positions = shapes[node].numel() // width
        cross += 2 * width * width * positions
        within += 2 * width * width * positions  # C^2 K for each of the two models
    forward = counter.get_total_flops()
    return {"forward": forward, "cross_products": cross, "within_products": within}


def measure(name: str, kind: str, images: int, batch_size: int, threads: int, spec: Path) -> dict:
    found = run_child(__file__, "--child", name, kind, "--spec", str(spec), "--images",
                      str(images), "--batch-size", str(batch_size), "--threads", str(threads))  # fmt: skip
    if "error" in found:
        raise RuntimeError(f"{name} {kind}: {found['error']}")
    return found


def compare(name: str, images: int, batch_size: int, threads: int, repeats: int) -> dict:
    """Each kind measured ``repeats`` times, interleaved (plain, statistics, cross, plain,
    ...), so that a slow spell of a shared machine hits every kind alike; the median run
    of each kind (by wall time) is reported."""
    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "spec.json"
        flops = measure(name, "spec", images, batch_size, threads, spec)
        measured: dict[str, list[dict]] = {kind: [] for kind in KINDS}
        for _ in range(repeats):
            for kind in KINDS:
                measured[kind].append(measure(name, kind, images, batch_size, threads, spec))
    runs = {
        kind: sorted(found, key=lambda r: r["seconds"])[len(found) // 2]
        for kind, found in measured.items()
    }
    plain = runs["plain"]
    row = {"model": name, "images": images, "batch_size": batch_size, "runs": runs}
    row["flops_per_image"] = flops
    products = {
        "statistics": flops["cross_products"] + flops["within_products"],
        "statistics_cross": flops["cross_products"],
    }
    for kind, extra in products.items():
        row[f"{kind}_flops_ratio"] = (flops["forward"] + extra) / flops["forward"]
    for kind in KINDS[1:]:
        run = runs[kind]
        row[f"{kind}_time_ratio"] = run["seconds"] / plain["seconds"]
        row[f"{kind}_cpu_time_ratio"] = run["cpu_seconds"] / plain["cpu_seconds"]
        row[f"{kind}_memory_ratio"] = run["peak_bytes"] / plain["peak_bytes"]
        row[f"{kind}_memory_ratio_above_baseline"] = (run["peak_bytes"] - run["baseline_bytes"]) / (
            plain["peak_bytes"] - plain["baseline_bytes"]
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each kind (median)")
    parser.add_argument("--quick", action="store_true", help="32 images, once, for a smoke run")
    add_child_arguments(parser, "MODEL", "KIND")
    args = parse_or_run_child(parser, lambda a: child(*a.child, a.images, a.batch_size, a.spec))
    if args is None:
        return
    images = 32 if args.quick else args.images
    repeats = 1 if args.quick else args.repeats
    rows = [
        compare("tv:resnet50", images, args.batch_size, args.threads, repeats),
        compare("quickstart cnn", 4000, 500, args.threads, repeats),
    ]
    result = {
        "benchmark": "statistics_scale",
        "peak_memory": "max resident set size of a fresh subprocess per measurement",
        "threads": args.threads,
        "repeats": repeats,
        "targets": "time and memory ratio <= 1.5 on tv:resnet50 at 224 px",
        "rows": rows,
    }
    print(json.dumps(result, indent=2))
    if not args.quick:
        out = Path(__file__).parent / "results" / "statistics_scale.json"
        out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
