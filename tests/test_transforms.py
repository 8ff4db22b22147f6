"""General linear maps through the spec (the machinery CCA Merge needs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import workbench as wb
from workbench.alignment import apply_permutation, random_permutation
from workbench.graph import permutation_spec
from workbench.graph.transforms import GroupMap, apply_linear_maps, transform_state


def _orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, generator=generator))[0]


def test_orthogonal_maps_preserve_a_linear_network() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Linear(8, 6), nn.Linear(6, 3))
    x = torch.randn(16, 5)
    spec = permutation_spec(model, example_input=x)
    generator = torch.Generator().manual_seed(1)
    maps = {name: _orthogonal(g.size, generator) for name, g in spec.groups.items()}
    mapped = apply_linear_maps(model, spec=spec, maps=maps)
    with torch.no_grad():
        assert (mapped(x) - model(x)).abs().max() < 1e-5
        assert not torch.allclose(mapped[0].weight, model[0].weight)


def test_a_general_invertible_map_is_undone_by_the_consumer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.Conv2d(6, 4, 1), nn.Flatten(), nn.Linear(64, 2))
    x = torch.randn(2, 3, 6, 6)
    spec = permutation_spec(model, example_input=x)
    generator = torch.Generator().manual_seed(2)
    maps = {
        name: torch.randn(g.size, g.size, generator=generator) + 3 * torch.eye(g.size)
        for name, g in spec.groups.items()
    }
    with torch.no_grad():
        assert (apply_linear_maps(model, spec=spec, maps=maps)(x) - model(x)).abs().max() < 1e-4


def test_maps_through_a_nonlinearity_change_the_function() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(16, 5)
    spec = permutation_spec(model, example_input=x)
    maps = {"0": _orthogonal(8, torch.Generator().manual_seed(3))}
    with torch.no_grad():
        assert (apply_linear_maps(model, spec=spec, maps=maps)(x) - model(x)).abs().max() > 1e-2


def test_permutation_matrices_equal_permutations() -> None:
    model = wb.create_model("cnn", in_channels=1)
    spec = permutation_spec(model, example_input=torch.zeros(2, 1, 28, 28))
    perm = random_permutation(spec, 4)
    as_matrices = {name: torch.eye(len(p))[p] for name, p in perm.items()}
    expected = apply_permutation(model, spec=spec, perm=perm).state_dict()
    got = apply_linear_maps(model, spec=spec, maps=as_matrices).state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value)


def test_batchnorm_blocks_a_general_map() -> None:
    model = wb.create_model("cnn", in_channels=1)
    spec = permutation_spec(model, example_input=torch.zeros(2, 1, 28, 28))
    maps = {"features.conv1": _orthogonal(16, torch.Generator().manual_seed(0))}
    with pytest.raises(ValueError, match=r"per-channel tensor features\.bn1\.weight"):
        apply_linear_maps(model, spec=spec, maps=maps)
    with pytest.raises(ValueError, match="must be 16x16"):
        apply_linear_maps(model, spec=spec, maps={"features.conv1": torch.eye(3)})


def _cnn(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(width * 16, 10),
    ).eval()


def _widened(model: nn.Module, extra: int, perm: torch.Tensor) -> nn.Module:
    """``model`` with its channels reordered by ``perm`` (both groups) and ``extra`` dead
    channels per group: random weights in, nothing out (their consumers ignore them)."""
    width = model[0].out_channels
    wide = _cnn(width + extra)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in wide.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
        wide[1].running_var.uniform_(0.5, 2.0, generator=generator)
        for source, target in ((0, 0), (1, 1), (3, 3)):
            for name, tensor in model[source].state_dict().items():
                if tensor.ndim == 0:
                    continue
                rows = tensor[perm]
                if source == 3 and name == "weight":
                    rows = rows[:, perm]
                    wide[target].state_dict()[name][:width, width:] = 0.0
                    wide[target].state_dict()[name][:width, :width] = rows
                else:
                    wide[target].state_dict()[name][:width] = rows
        blocks = model[6].weight.unflatten(1, (width, 16))[:, perm]
        weight = torch.zeros(10, width + extra, 16)
        weight[:, :width] = blocks
        wide[6].weight.copy_(weight.flatten(1))
        wide[6].bias.copy_(model[6].bias)
    return wide


def test_a_rectangular_group_map_narrows_a_model_to_the_reference_width() -> None:
    torch.manual_seed(0)
    narrow = _cnn(6)
    with torch.no_grad():
        narrow[1].running_var.uniform_(0.5, 2.0)
        narrow[1].running_mean.normal_()
    perm = torch.randperm(6)
    wide = _widened(narrow, 3, perm)
    x = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        assert (wide(x) - narrow(x)).abs().max() < 1e-4  # the dead channels change nothing
    spec = permutation_spec(wide, example_input=x)
    select = torch.zeros(6, 9, dtype=torch.float64)
    select[perm, torch.arange(6)] = 1.0  # narrow's channel perm[i] is wide's channel i
    maps = {name: GroupMap(select, select.T) for name in spec.groups}
    mapped = apply_linear_maps(wide, spec=spec, maps=maps, like=narrow)
    assert mapped[0].weight.shape == narrow[0].weight.shape
    for key, value in narrow.state_dict().items():
        torch.testing.assert_close(mapped.state_dict()[key], value)
    with pytest.raises(ValueError, match="pass like="):
        apply_linear_maps(wide, spec=spec, maps=maps)
    with pytest.raises(ValueError, match=r"an \(m x 9\) out and a \(9 x m\) into"):
        apply_linear_maps(wide, spec=spec, maps={"0": GroupMap(select, select)}, like=narrow)


def test_a_group_map_carries_batchnorm_with_its_out_matrix() -> None:
    """A merge of channels 0 and 1: their producers' rows and BatchNorm entries are
    averaged by ``out``, and the consumer reads the merged channel for both (``into``)."""
    torch.manual_seed(0)
    model = _cnn(4)
    with torch.no_grad():
        model[1].running_mean.normal_()
    spec = permutation_spec(model, example_input=torch.zeros(2, 1, 4, 4))
    merge = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    unmerge = merge.T.ceil()
    state = transform_state(model.state_dict(), spec, {"0": GroupMap(merge, unmerge)})
    torch.testing.assert_close(state["1.running_mean"], merge @ model[1].running_mean)
    torch.testing.assert_close(state["1.weight"], merge @ model[1].weight)
    torch.testing.assert_close(
        state["0.weight"], torch.einsum("ij,jchw->ichw", merge, model[0].weight)
    )
    torch.testing.assert_close(
        state["3.weight"], torch.einsum("ojhw,jk->okhw", model[3].weight, unmerge)
    )
    assert state["3.weight"].shape == (4, 3, 3, 3)
