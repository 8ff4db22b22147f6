"""Permutation specs on torchvision's classification families: groups, coverage, exactness
and what self-verification costs.

For each model (random weights): the spec is traced and verified
(:func:`workbench.permutation_spec`); then, on a float32 copy whose BatchNorm statistics
and per-channel parameters are randomized, one random permutation of every group is
applied and the relative L2 error of the logits is measured. Coverage is the fraction of
hidden conv/linear output channels that some group permutes (within blocks for grouped
convolutions).

    python benchmarks/spec_coverage.py [--models resnet18 ...] > benchmarks/results/spec_coverage.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torchvision.models as tvm

import workbench as wb
from workbench.graph.transforms import apply_permutation, random_permutation
from workbench.graph.verify import randomized_copy

FAMILIES = {
    "resnet18": 64, "resnext50_32x4d": 64, "wide_resnet50_2": 64, "regnet_x_400mf": 64,
    "regnet_y_400mf": 64, "mobilenet_v2": 64, "mobilenet_v3_small": 64, "efficientnet_b0": 64,
    "efficientnet_v2_s": 64, "shufflenet_v2_x0_5": 64, "squeezenet1_0": 64, "mnasnet0_5": 64,
    "densenet121": 64, "googlenet": 64, "inception_v3": 96, "vgg11": 64, "alexnet": 64,
    "convnext_tiny": 64,
}  # fmt: skip
GROUPED = ("resnext50_32x4d", "regnet_x_400mf", "regnet_y_400mf")


def build(name: str) -> torch.nn.Module:
    kwargs = (
        {"aux_logits": False, "init_weights": False}
        if name in ("googlenet", "inception_v3")
        else {}
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return getattr(tvm, name)(weights=None, **kwargs).eval()


def measure(name: str, size: int) -> dict:
    return measure_model(name, build(name), size)


def measure_model(name: str, model: torch.nn.Module, size: int) -> dict:
    """One row: the spec of ``model`` on a ``2 x 3 x size x size`` input (traced and
    verified, timed), its coverage, and the relative error of the logits after a random
    permutation of every group on a randomized copy (what an unverified spec would get
    wrong), in the precision the spec was verified in. Shared with
    ``spec_coverage_timm.py``."""
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    started = time.perf_counter()
    spec = wb.permutation_spec(model, example_input=x)
    seconds = time.perf_counter() - started
    v = spec.verification
    # in the precision the spec was verified in: float64 where float32's own rounding
    # moves this model's outputs by more than a tenth of the tolerance
    dtype = getattr(torch, v["dtype"])
    work = randomized_copy(model, seed=5, dtype=dtype)
    permuted = apply_permutation(work, spec=spec, perm=random_permutation(spec, seed=1))
    with torch.no_grad():
        expected, got = work(x.to(dtype)), permuted(x.to(dtype))
    return {
        "model": name,
        "input": [2, 3, size, size],
        "dtype": v["dtype"],
        "groups": len(spec.groups),
        "blocked_groups": sum(g.blocks > 1 for g in spec.groups.values()),
        "coverage": spec.coverage(),
        "relative_error": float((got - expected).norm() / expected.norm()),
        "spec_seconds": seconds,
        "verification_seconds": v["seconds"],
        "verification_forward_passes": v["forward_passes"],
        "failed_verification": v["failed_groups"],
        "frozen": [line for line in spec.report if "reaches the model's output" not in line],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=list(FAMILIES))
    args = parser.parse_args()
    rows = []
    for name in args.models:
        rows.append(measure(name, FAMILIES[name]))
        print(f"{name}: coverage {rows[-1]['coverage']:.3f}", file=sys.stderr, flush=True)
    coverage = {r["model"]: r["coverage"] for r in rows}
    result = {
        "benchmark": "spec_coverage",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "models": rows,
        "summary": {
            "mean_coverage": statistics.mean(coverage.values()),
            "mean_coverage_grouped": statistics.mean(coverage[m] for m in GROUPED if m in coverage),
            "max_relative_error": max(r["relative_error"] for r in rows),
            "failed_verification": sum(len(r["failed_verification"]) for r in rows),
            "max_forward_passes": max(r["verification_forward_passes"] for r in rows),
        },
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
