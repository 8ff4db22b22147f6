"""Permutation specs on every torchvision classification family that traces: exact after
a random permutation, and covering at least the share of channels measured when the rule
table was written (`benchmarks/results/spec_coverage.json` has the full table).

A spec that froze everything would be exact; the coverage floor is what makes this test
able to fail on a spec that gives up."""

from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm

import workbench as wb
from workbench.graph.transforms import apply_permutation, random_permutation
from workbench.graph.verify import randomized_copy

# model -> input size; floors below 1.0 are written down with the reason
FAMILIES = {
    "resnet18": 64, "resnext50_32x4d": 64, "wide_resnet50_2": 64, "regnet_x_400mf": 64,
    "regnet_y_400mf": 64, "mobilenet_v2": 64, "mobilenet_v3_small": 64, "efficientnet_b0": 64,
    "efficientnet_v2_s": 64, "shufflenet_v2_x0_5": 64, "squeezenet1_0": 64, "mnasnet0_5": 64,
    "densenet121": 64, "googlenet": 64, "inception_v3": 96, "vgg11": 64, "alexnet": 64,
    "convnext_tiny": 64,
}  # fmt: skip
FLOORS = {
    # repeated channel shuffles: each block passes half its channels on and shuffles them
    # again, which a slice of an axis cannot express (graph.reshape_rules.reshape)
    "shufflenet_v2_x0_5": 0.91,
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_torchvision_family_is_exact_and_covered(name: str) -> None:
    kwargs = (
        {"aux_logits": False, "init_weights": False}
        if name in ("googlenet", "inception_v3")
        else {}
    )
    torch.manual_seed(0)
    model = getattr(tvm, name)(weights=None, **kwargs).eval()
    size = FAMILIES[name]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    spec = wb.permutation_spec(model, example_input=x)
    assert spec.coverage() >= FLOORS.get(name, 1.0), spec.summary()
    assert spec.verification["failed_groups"] == []
    assert spec.verification["forward_passes"] == 2
    work = randomized_copy(model, seed=5, dtype=torch.float32)
    perm = random_permutation(spec, seed=1)
    permuted = apply_permutation(work, spec=spec, perm=perm)
    with torch.no_grad():
        expected, got = work(x), permuted(x)
    assert float((got - expected).norm() / expected.norm()) < 1e-5
    moved = [g for g in spec.groups if not torch.equal(perm[g], torch.arange(len(perm[g])))]
    assert len(moved) >= len(spec.groups) // 2  # the permutation really moved channels
