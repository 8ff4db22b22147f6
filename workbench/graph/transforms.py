"""Transforming a model through its permutation spec: reorder the channels of every group
(and their consumers' input axes) without changing the function the model computes, or
map them by general invertible matrices (CCA Merge)."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from workbench.graph.spec import Axis, PermutationSpec

__all__ = [
    "LinearMaps",
    "Permutation",
    "apply_linear_maps",
    "apply_permutation",
    "axis_index",
    "channel_block",
    "check_linear_maps",
    "check_permutation",
    "compose",
    "identity_permutation",
    "inverse",
    "permute_state",
    "random_permutation",
    "transform_state",
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
        if p.is_floating_point() or p.is_complex() or p.dtype == torch.bool:
            raise ValueError(
                f"perm[{name!r}] holds {p.dtype} values; a permutation holds integer indices "
                "(a LongTensor)."
            )
        if p.shape != (group.size,) or not torch.equal(
            torch.sort(p.long().cpu()).values, torch.arange(group.size)
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


# ---------------------------------------------------------------------------------------
# General linear maps (CCA Merge)


LinearMaps = dict[str, torch.Tensor]  # group -> invertible (size x size) matrix


def channel_block(tensor: torch.Tensor, ax: Axis, size: int) -> tuple[torch.Tensor, slice]:
    """The group's slice of ``tensor`` as (size, block, rest) with the channel first."""
    moved = tensor.movedim(ax.axis, 0)
    span = slice(ax.offset, ax.offset + size * ax.block)
    return moved[span].reshape(size, ax.block, -1), span


def _write_block(tensor: torch.Tensor, ax: Axis, span: slice, block: torch.Tensor) -> torch.Tensor:
    moved = tensor.movedim(ax.axis, 0).clone()
    moved[span] = block.reshape(moved[span].shape)
    return moved.movedim(0, ax.axis)


def _is_permutation_matrix(matrix: torch.Tensor) -> torch.Tensor | None:
    """The permutation ``p`` with ``matrix[i, p[i]] == 1``, if ``matrix`` is one."""
    ones = matrix == 1
    if (
        not (ones | (matrix == 0)).all()
        or not (ones.sum(0) == 1).all()
        or not (ones.sum(1) == 1).all()
    ):
        return None
    return ones.float().argmax(1)


def check_linear_maps(spec: PermutationSpec, maps: Mapping[str, torch.Tensor]) -> None:
    """Raise ``ValueError`` unless every map belongs to a group of ``spec`` and is a
    square matrix of the group's size (groups without a map are left as they are)."""
    unknown = sorted(set(maps) - set(spec.groups))
    if unknown:
        raise ValueError(f"Unknown groups {unknown}; the spec has {list(spec.groups)}.")
    for name, matrix in maps.items():
        size = spec.groups[name].size
        shape = tuple(torch.as_tensor(matrix).shape)
        if shape != (size, size):
            raise ValueError(f"maps[{name!r}] must be {size}x{size}, got {shape}.")


def transform_state(
    state: Mapping[str, torch.Tensor], spec: PermutationSpec, maps: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A new state dict in which each group's channels ``x`` become ``maps[g] @ x``.

    Output rows and biases (role ``"out"``) are multiplied by the map, consumers' input
    columns (``"in"``) by its inverse, so that a network with no nonlinearity between a
    group's producers and consumers computes the same function. Per-channel parameters
    (``"channel"``: BatchNorm, depthwise filters) can only follow a permutation matrix;
    fold BatchNorm into the layers first (:func:`fold_batchnorm`).
    """
    check_linear_maps(spec, maps)
    out = dict(state)
    for name, matrix in maps.items():
        group = spec.groups[name]
        matrix = torch.as_tensor(matrix, dtype=torch.float64)
        inverse_matrix = torch.linalg.inv(matrix)
        perm = _is_permutation_matrix(matrix)
        for ax in group.axes:
            tensor = out[ax.key]
            if ax.role == "channel":
                if perm is None:
                    raise ValueError(
                        f"Group {name!r} has the per-channel tensor {ax.key}, which a general "
                        "linear map cannot transform exactly; fold BatchNorm into the layers "
                        "(fold_batchnorm) or use a permutation for this group."
                    )
                index = axis_index(ax, perm, tensor.shape[ax.axis]).to(tensor.device)
                out[ax.key] = tensor.index_select(ax.axis, index)
                continue
            block, span = channel_block(tensor.double(), ax, group.size)
            if ax.role == "out":
                new = torch.einsum("ij,jbr->ibr", matrix.to(tensor.device), block)
            else:
                new = torch.einsum("kj,kbr->jbr", inverse_matrix.to(tensor.device), block)
            out[ax.key] = _write_block(tensor.double(), ax, span, new).to(tensor.dtype)
    return out


def apply_linear_maps(
    model: nn.Module, spec: PermutationSpec, maps: Mapping[str, torch.Tensor]
) -> nn.Module:
    """A new model whose groups' channels are mapped by invertible matrices (see
    :func:`transform_state`). Groups not in ``maps`` are left as they are."""
    spec.check_model(model)
    transformed = copy.deepcopy(model)
    transformed.load_state_dict(transform_state(model.state_dict(), spec, maps))
    return transformed
