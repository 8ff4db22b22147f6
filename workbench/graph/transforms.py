"""Transforming a model through its permutation spec: reorder the channels of every group
(and their consumers' input axes) without changing the function the model computes, or
map them by general invertible matrices (CCA Merge)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from workbench.graph.spec import Axis, PermutationSpec
from workbench.modules import clone, tied_keys
from workbench.vocabulary import keyword_only

__all__ = [
    "GroupMap",
    "LinearMaps",
    "Permutation",
    "apply_linear_maps",
    "apply_permutation",
    "axis_index",
    "block_permutation",
    "channel_block",
    "check_linear_maps",
    "check_permutation",
    "compose",
    "general_groups",
    "identity_permutation",
    "inverse",
    "is_permutation_map",
    "permute_axis",
    "permute_state",
    "random_permutation",
    "transform_state",
]

Permutation = dict[str, torch.Tensor]


def identity_permutation(spec: PermutationSpec) -> Permutation:
    """The permutation that changes nothing."""
    return {name: torch.arange(g.size) for name, g in spec.groups.items()}


def block_permutation(local: torch.Tensor) -> torch.Tensor:
    """The permutation of ``blocks x block_size`` channels that reorders block ``b`` by
    ``local[b]`` (a permutation of ``range(block_size)``) and never moves a channel out of
    its block."""
    blocks, size = local.shape
    return (local + size * torch.arange(blocks)[:, None]).reshape(-1)


def random_permutation(spec: PermutationSpec, seed: int = 0) -> Permutation:
    """A uniformly random permutation of every group (within its blocks, for a group with
    blocks), reproducible from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    perm = {}
    for name, g in spec.groups.items():
        local = [torch.randperm(g.block_size, generator=generator) for _ in range(g.blocks)]
        perm[name] = block_permutation(torch.stack(local))
    return perm


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
        if group.blocks > 1:
            block_of = torch.arange(group.size) // group.block_size
            if not torch.equal(block_of[p.long().cpu()], block_of):
                raise ValueError(
                    f"perm[{name!r}] moves channels between blocks; group {name!r} feeds a "
                    f"grouped convolution and may only reorder channels within its "
                    f"{group.blocks} blocks of {group.block_size}."
                )


def _copy_state(state: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """A shallow copy of a state dict that keeps its ``_metadata`` (module versions, which
    some modules' loading code requires)."""
    out = OrderedDict(state)
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        out._metadata = metadata
    return out


def permute_axis(tensor: torch.Tensor, ax: Axis, perm: torch.Tensor) -> torch.Tensor:
    """``tensor`` reordered along ``ax`` by a group's ``perm``: ``new[..., i, ...] =
    old[..., perm[i], ...]``; on the input axis of a grouped convolution, each part of the
    rows by its own block's order."""
    perm = perm.to(tensor.device)
    if ax.grouped == 1:
        return tensor.index_select(ax.axis, axis_index(ax, perm, tensor.shape[ax.axis]))
    if ax.axis != 1 or ax.offset or ax.block != 1:
        raise ValueError(f"{ax!r}: a grouped axis must be the weight's whole axis 1.")
    parts = tensor.unflatten(0, (ax.grouped, -1))  # (groups, rows per group, local, ...)
    local = perm.view(ax.grouped, -1)
    local = local - local.min(1, keepdim=True).values  # the block's own order
    shape = [ax.grouped, 1, local.shape[1]] + [1] * (parts.ndim - 3)
    index = local.view(shape).expand(-1, parts.shape[1], -1, *parts.shape[3:])
    return parts.gather(2, index).flatten(0, 1)


def permute_state(
    state: Mapping[str, torch.Tensor], spec: PermutationSpec, perm: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """A new state dict with every group's axes reordered: ``new[..., i, ...] =
    old[..., perm[i], ...]`` along each axis the group owns."""
    out = _copy_state(state)
    for name, group in spec.groups.items():
        p = torch.as_tensor(perm[name]).long().cpu()
        for ax in group.axes:
            out[ax.key] = permute_axis(out[ax.key], ax, p)
    return out


def inverse(perm: Mapping[str, torch.Tensor]) -> Permutation:
    """The permutation that undoes ``perm``."""
    return {name: torch.argsort(torch.as_tensor(p)) for name, p in perm.items()}


def compose(first: Mapping[str, torch.Tensor], then: Mapping[str, torch.Tensor]) -> Permutation:
    """Applying ``first`` and then ``then`` equals applying ``compose(first, then)``."""
    return {name: torch.as_tensor(first[name])[torch.as_tensor(p)] for name, p in then.items()}


@keyword_only(("spec", "perm"))
def apply_permutation(
    model: nn.Module,
    *,
    spec: PermutationSpec,
    perm: Mapping[str, torch.Tensor],
) -> nn.Module:
    """A new model whose channels are reordered by ``perm``; it computes the same function.

    Parameters and buffers (BatchNorm running statistics) are permuted alike. A tensor
    shared by two layers (tied weights) must come out the same under both of its names,
    else ``ValueError``: permuting one use and not the other would change the function
    (a verified spec, the default of ``permutation_spec``, freezes such groups).
    """
    spec.check_model(model)
    check_permutation(spec, perm)
    state = permute_state(model.state_dict(), spec, perm)
    for keys in tied_keys(model):
        if any(not torch.equal(state[keys[0]], state[k]) for k in keys[1:]):
            raise ValueError(
                f"{' and '.join(keys)} are one shared tensor (tied weights), and this spec "
                "permutes its uses differently, which would change the model's function. "
                "Build the spec with permutation_spec(model, example_input) (verify=True, "
                "the default): verification freezes the groups that tied weights couple."
            )
    permuted = clone(model)
    permuted.load_state_dict(state)
    return permuted


# ---------------------------------------------------------------------------------------
# General linear maps (CCA Merge)


class GroupMap(NamedTuple):
    """A group's channels mapped by two matrices that need be neither square nor each
    other's inverse: the map of a merge (ZipIt!'s merge and unmerge matrices, a transport
    plan between models of different widths), not of an exact reparametrization.

    ``out`` (``m x n``, ``n`` the group's channels in this model, ``m`` in the target)
    multiplies the producers' output rows and biases (role ``"out"``) and the per-channel
    parameters and statistics (``"channel"``: each new channel's BatchNorm parameters are
    the same combination of the old ones as the channel itself; running variances by
    ``|out|``, so that they stay positive under a map with negative entries); ``into`` (``n x m``)
    multiplies the consumers' input columns (``"in"``). The function is kept only when
    ``out`` is a permutation matrix and ``into`` its transpose; otherwise reset the
    BatchNorm statistics of what is built from it (RESET).
    """

    out: torch.Tensor
    into: torch.Tensor


# group -> invertible (size x size) matrix, or a GroupMap (possibly rectangular)
LinearMaps = dict[str, torch.Tensor | GroupMap]


def channel_block(tensor: torch.Tensor, ax: Axis, size: int) -> tuple[torch.Tensor, slice]:
    """The group's slice of ``tensor`` as (size, block, rest) with the channel first."""
    moved = tensor.movedim(ax.axis, 0)
    span = slice(ax.offset, ax.offset + size * ax.block)
    return moved[span].reshape(size, ax.block, -1), span


def _write_block(tensor: torch.Tensor, ax: Axis, span: slice, block: torch.Tensor) -> torch.Tensor:
    """``tensor`` with the group's slice replaced by ``block`` (``(size, block, rest)``),
    which may hold another number of channels."""
    moved = tensor.movedim(ax.axis, 0)
    rows = block.reshape(-1, *moved.shape[1:]).to(moved.dtype)
    return torch.cat([moved[: span.start], rows, moved[span.stop :]]).movedim(0, ax.axis)


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


_SINGULAR = 1e-7  # smallest/largest singular value of a map too singular to invert in float32


def check_linear_maps(spec: PermutationSpec, maps: Mapping[str, torch.Tensor | GroupMap]) -> None:
    """Raise ``ValueError`` unless every map belongs to a group of ``spec`` and is a
    finite, invertible square matrix of the group's size, or a :class:`GroupMap` of
    finite matrices whose ``out`` is ``m x size`` and ``into`` ``size x m`` (groups
    without a map are left as they are)."""
    unknown = sorted(set(maps) - set(spec.groups))
    if unknown:
        raise ValueError(f"Unknown groups {unknown}; the spec has {list(spec.groups)}.")
    for name, matrix in maps.items():
        size = spec.groups[name].size
        parts = tuple(map(torch.as_tensor, matrix if isinstance(matrix, GroupMap) else [matrix]))
        if isinstance(matrix, GroupMap):
            out, into = (tuple(m.shape) for m in parts)
            if len(out) != 2 or out[1] != size or into != (size, out[0]):
                raise ValueError(
                    f"maps[{name!r}] must be a GroupMap of an (m x {size}) out and a "
                    f"({size} x m) into, got {out} and {into}."
                )
        elif tuple(parts[0].shape) != (size, size):
            raise ValueError(f"maps[{name!r}] must be {size}x{size}, got {tuple(parts[0].shape)}.")
        if not all(torch.isfinite(m).all() for m in parts):
            raise ValueError(f"maps[{name!r}] holds NaN or infinite values.")
        if not isinstance(matrix, GroupMap):
            values = torch.linalg.svdvals(parts[0].double())
            if (ratio := values.min().item() / max(values.max().item(), 1e-300)) <= _SINGULAR:
                raise ValueError(
                    f"maps[{name!r}] is singular (smallest/largest singular value {ratio:.1e}): "
                    "B's consumers need its inverse. Return an invertible map (a ridge on the "
                    "covariances keeps one so), or a GroupMap with an explicit `into`."
                )


def _pair(matrix: torch.Tensor | GroupMap) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(out, into, merge)``: a square map's inverse is its ``into``; ``merge`` is whether
    per-channel parameters follow ``out`` (a :class:`GroupMap`) or need a permutation."""
    if isinstance(matrix, GroupMap):
        return matrix.out.double(), matrix.into.double(), True
    matrix = torch.as_tensor(matrix, dtype=torch.float64)
    return matrix, torch.linalg.inv(matrix), False


def _permutation_of(out: torch.Tensor, into: torch.Tensor, merge: bool) -> torch.Tensor | None:
    """The permutation the map amounts to, if ``out`` is a permutation matrix (and, for
    a :class:`GroupMap`, ``into`` its inverse: its transpose)."""
    perm = _is_permutation_matrix(out) if out.shape[0] == out.shape[1] else None
    return perm if perm is not None and (not merge or torch.equal(into, out.T)) else None


def is_permutation_map(matrix: torch.Tensor | GroupMap, atol: float = 0.0) -> bool:
    """Whether a group's map only reorders its channels (a permutation matrix, and for a
    :class:`GroupMap` its transpose as ``into``), to within ``atol`` per entry:
    per-channel statistics carried along with it stay exact (to that tolerance)."""
    out, into, merge = _pair(matrix)
    snap = lambda m: torch.where((m - m.round()).abs() <= atol, m.round(), m)  # noqa: E731
    return _permutation_of(snap(out), snap(into), merge) is not None


def transform_state(
    state: Mapping[str, torch.Tensor],
    spec: PermutationSpec,
    maps: Mapping[str, torch.Tensor | GroupMap],
) -> dict[str, torch.Tensor]:
    """A new state dict in which each group's channels ``x`` become ``maps[g] @ x``.

    Output rows and biases (role ``"out"``) are multiplied by the map, consumers' input
    columns (``"in"``) by its inverse, so that a network with no nonlinearity between a
    group's producers and consumers computes the same function. Per-channel parameters
    (``"channel"``: BatchNorm, depthwise filters) and grouped convolutions can only follow
    a permutation matrix; fold BatchNorm into the layers first (:func:`fold_batchnorm`).
    A :class:`GroupMap` gives the inputs' matrix itself, may change the group's number
    of channels (the tensors change shape) and carries per-channel parameters along
    with ``out``; grouped convolutions and block-structured groups still take only
    permutations.
    """
    check_linear_maps(spec, maps)
    out = _copy_state(state)
    items = [(name, ax) for name in maps for ax in spec.groups[name].axes]
    # Highest offset first, so that a group that changes size leaves the offsets of the
    # groups before it on the same axis (a concatenation's consumer) valid.
    items.sort(key=lambda item: -item[1].offset)
    pairs = {name: _pair(matrix) for name, matrix in maps.items()}
    for name, ax in items:
        group, (matrix, into, merge) = spec.groups[name], pairs[name]
        perm = _permutation_of(matrix, into, merge)
        tensor = out[ax.key]
        if perm is not None and (ax.role == "channel" or ax.grouped != 1 or group.blocks != 1):
            out[ax.key] = permute_axis(tensor, ax, perm)
            continue
        if ax.grouped != 1 or group.blocks != 1 or (ax.role == "channel" and not merge):
            kind = "per-channel" if ax.role == "channel" else "grouped-convolution"
            raise ValueError(
                f"Group {name!r} has the {kind} tensor {ax.key}, which a general linear "
                "map cannot transform exactly; fold BatchNorm into the layers "
                "(fold_batchnorm), pass a GroupMap (which carries per-channel parameters "
                "along) or use a permutation for this group."
            )
        block, span = channel_block(tensor.double(), ax, group.size)
        if ax.role == "channel" and ax.key.endswith("running_var"):
            new = torch.einsum("ij,jbr->ibr", matrix.abs().to(tensor.device), block)
        elif ax.role == "in":
            new = torch.einsum("kj,kbr->jbr", into.to(tensor.device), block)
        else:
            new = torch.einsum("ij,jbr->ibr", matrix.to(tensor.device), block)
        out[ax.key] = _write_block(tensor, ax, span, new)
    return out


@keyword_only(("spec", "maps", "like"))
def apply_linear_maps(
    model: nn.Module,
    *,
    spec: PermutationSpec,
    maps: Mapping[str, torch.Tensor | GroupMap],
    like: nn.Module | None = None,
) -> nn.Module:
    """A new model whose groups' channels are mapped by invertible matrices or
    :class:`GroupMap` pairs (see :func:`transform_state`); groups not in ``maps`` are
    left as they are. Maps that change a group's width need ``like``: a model of the
    target widths (the reference), whose architecture the result copies."""
    spec.check_model(model)
    state = transform_state(model.state_dict(), spec, maps)
    transformed = clone(model if like is None else like)
    try:
        transformed.load_state_dict(state)
    except RuntimeError as error:
        hint = "pass like=<a model of the target widths>" if like is None else "check like="
        raise ValueError(
            f"The mapped weights do not fit {type(transformed).__name__}: {hint}. ({error})"
        ) from error
    return transformed


@keyword_only(("spec",))
def general_groups(
    model: nn.Module,
    *,
    spec: PermutationSpec,
) -> list[str]:
    """The groups of ``model`` that a general linear map (a :class:`GroupMap`) can
    transform: one block, no grouped convolution, and no per-channel tensors but
    BatchNorm's (which the map carries along); a linear method must give the other
    groups (depthwise filters, grouped convolutions) permutation matrices."""
    modules = dict(model.named_modules())

    def carried(ax: Axis) -> bool:
        owner = modules.get(ax.key.rpartition(".")[0])
        return ax.role != "channel" or isinstance(owner, _BatchNorm)

    return [
        name
        for name, group in spec.groups.items()
        if group.blocks == 1 and all(ax.grouped == 1 and carried(ax) for ax in group.axes)
    ]
