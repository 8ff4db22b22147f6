"""Transforming a model through its permutation spec: reorder the channels of every group
(and their consumers' input axes) without changing the function the model computes."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from workbench.graph import Axis, PermutationSpec

__all__ = [
    "Permutation",
    "apply_permutation",
    "axis_index",
    "check_permutation",
    "compose",
    "identity_permutation",
    "inverse",
    "permute_state",
    "random_permutation",
]

Permutation = dict[str, torch.Tensor]


def identity_permutation(spec: PermutationSpec) -> Permutation:
    """The permutation that changes nothing."""
    return {name: torch.arange(g.size) for name, g in spec.groups.items()}


def random_permutation(spec: PermutationSpec, seed: int = 0) -> Permutation:
    """A uniformly random permutation of every group, reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randperm(g.size, generator=generator) for name, g in spec.groups.items()}


def axis_index(ax: Axis, perm: torch.Tensor, length: int) -> torch.Tensor:
    """Indices that reorder axis ``ax`` (of ``length`` entries) by the group's ``perm``."""
    index = torch.arange(length, device=perm.device)
    block = torch.arange(ax.block, device=perm.device)
    moved = (perm[:, None] * ax.block + block[None, :]).reshape(-1) + ax.offset
    index[ax.offset : ax.offset + len(moved)] = moved
    return index


def check_permutation(spec: PermutationSpec, perm: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` unless ``perm`` has a valid permutation for every group."""
    missing = sorted(set(spec.groups) - set(perm))
    unknown = sorted(set(perm) - set(spec.groups))
    if missing or unknown:
        raise ValueError(
            f"Permutation does not match the spec: missing groups {missing[:5]}, unknown "
            f"groups {unknown[:5]}."
        )
    for name, group in spec.groups.items():
        p = torch.as_tensor(perm[name])
        if p.shape != (group.size,) or not torch.equal(
            torch.sort(p).values, torch.arange(group.size)
        ):
            raise ValueError(
                f"perm[{name!r}] is not a permutation of range({group.size}) "
                f"(shape {tuple(p.shape)})."
            )


def permute_state(
    state: Mapping[str, torch.Tensor], spec: PermutationSpec, perm: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A new state dict with every group's axes reordered: ``new[..., i, ...] =
    old[..., perm[i], ...]`` along each axis the group owns."""
    out = dict(state)
    for name, group in spec.groups.items():
        p = torch.as_tensor(perm[name]).long().cpu()
        for ax in group.axes:
            tensor = out[ax.key]
            index = axis_index(ax, p, tensor.shape[ax.axis]).to(tensor.device)
            out[ax.key] = tensor.index_select(ax.axis, index)
    return out


def inverse(perm: Mapping[str, torch.Tensor]) -> Permutation:
    """The permutation that undoes ``perm``."""
    return {name: torch.argsort(torch.as_tensor(p)) for name, p in perm.items()}


def compose(first: Mapping[str, torch.Tensor], then: Mapping[str, torch.Tensor]) -> Permutation:
    """Applying ``first`` and then ``then`` equals applying ``compose(first, then)``."""
    return {name: torch.as_tensor(first[name])[torch.as_tensor(p)] for name, p in then.items()}


def apply_permutation(
    model: nn.Module, spec: PermutationSpec, perm: Mapping[str, torch.Tensor]
) -> nn.Module:
    """A new model whose channels are reordered by ``perm``; it computes the same function.

    Parameters and buffers (BatchNorm running statistics) are permuted alike.
    """
    spec.check_model(model)
    check_permutation(spec, perm)
    permuted = copy.deepcopy(model)
    permuted.load_state_dict(permute_state(model.state_dict(), spec, perm))
    return permuted
