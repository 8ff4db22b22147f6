"""General linear maps through the spec (the machinery CCA Merge needs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import workbench as wb
from workbench.alignment import apply_permutation, random_permutation
from workbench.graph import permutation_spec
from workbench.graph.transforms import apply_linear_maps


def _orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=generator))[0]


def test_orthogonal_maps_preserve_a_linear_network() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Linear(8, 6), nn.Linear(6, 3))
    x = torch.randn(16, 5)
    spec = permutation_spec(model, x)
    generator = torch.Generator().manual_seed(1)
    maps = {name: _orthogonal(g.size, generator) for name, g in spec.groups.items()}
    mapped = apply_linear_maps(model, spec, maps)
    with torch.no_grad():
        assert (mapped(x) - model(x)).abs().max() < 1e-5
        assert not torch.allclose(mapped[0].weight, model[0].weight)


def test_a_general_invertible_map_is_undone_by_the_consumer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 1), nn.Flatten(), nn.Linear(64, 2))
    x = torch.randn(2, 3, 6, 6)
    spec = permutation_spec(model, x)
    generator = torch.Generator().manual_seed(2)
    maps = {
        name: torch.randn(g.size, g.size, generator=generator) + 3 * torch.eye(g.size)
        for name, g in spec.groups.items()
    }
    with torch.no_grad():
        assert (apply_linear_maps(model, spec, maps)(x) - model(x)).abs().max() < 1e-4


def test_maps_through_a_nonlinearity_change_the_function() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(16, 5)
    spec = permutation_spec(model, x)
    maps = {"0": _orthogonal(8, torch.Generator().manual_seed(3))}
    with torch.no_grad():
        assert (apply_linear_maps(model, spec, maps)(x) - model(x)).abs().max() > 1e-2


def test_permutation_matrices_equal_permutations() -> None:
    model = wb.create_model("cnn", in_channels=1)
    spec = permutation_spec(model, torch.zeros(2, 1, 28, 28))
    perm = random_permutation(spec, 4)
    as_matrices = {name: torch.eye(len(p))[p] for name, p in perm.items()}
    expected = apply_permutation(model, spec, perm).state_dict()
    got = apply_linear_maps(model, spec, as_matrices).state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value)


def test_batchnorm_blocks_a_general_map() -> None:
    model = wb.create_model("cnn", in_channels=1)
    spec = permutation_spec(model, torch.zeros(2, 1, 28, 28))
    maps = {"features.conv1": _orthogonal(16, torch.Generator().manual_seed(0))}
    with pytest.raises(ValueError, match=r"per-channel tensor features\.bn1\.weight"):
        apply_linear_maps(model, spec, maps)
    with pytest.raises(ValueError, match="must be 16x16"):
        apply_linear_maps(model, spec, {"features.conv1": torch.eye(3)})
