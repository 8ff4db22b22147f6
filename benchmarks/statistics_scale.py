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

    python benchmarks/statistics_scale.py [--images 128] [--batch-size 32] [--quick]
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
        permutation_spec(models[0], example_input=example).save(spec_path)
        return {}
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


def measure(name: str, kind: str, images: int, batch_size: int, threads: int, spec: Path) -> dict:
    found = run_child(__file__, "--child", name, kind, "--spec", str(spec), "--images",
                      str(images), "--batch-size", str(batch_size), "--threads", str(threads))  # fmt: skip
    if "error" in found:
        raise RuntimeError(f"{name} {kind}: {found['error']}")
    return found


def compare(name: str, images: int, batch_size: int, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        spec = Path(folder) / "spec.json"
        measure(name, "spec", images, batch_size, threads, spec)
        runs = {kind: measure(name, kind, images, batch_size, threads, spec) for kind in KINDS}
    plain = runs["plain"]
    row = {"model": name, "images": images, "batch_size": batch_size, "runs": runs}
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
    parser.add_argument("--quick", action="store_true", help="32 images, for a smoke run")
    add_child_arguments(parser, "MODEL", "KIND")
    args = parse_or_run_child(parser, lambda a: child(*a.child, a.images, a.batch_size, a.spec))
    if args is None:
        return
    images = 32 if args.quick else args.images
    rows = [
        compare("tv:resnet50", images, args.batch_size, args.threads),
        compare("quickstart cnn", 4000, 500, args.threads),
    ]
    result = {
        "benchmark": "statistics_scale",
        "peak_memory": "max resident set size of a fresh subprocess per measurement",
        "threads": args.threads,
        "targets": "time and memory ratio <= 1.5 on tv:resnet50 at 224 px",
        "rows": rows,
    }
    print(json.dumps(result, indent=2))
    out = Path(__file__).parent / "results" / "statistics_scale.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
