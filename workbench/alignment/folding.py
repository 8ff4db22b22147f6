"""Moving BatchNorm into the layer before it, and back, so that general linear maps can
pass through a group.

A BatchNorm layer scales and shifts each channel on its own, which commutes with a
permutation of the channels but not with a general matrix. Folding rewrites
``bn(conv(x))`` as ``conv'(x) + b`` (the normalization and scale go into the conv
weights, everything additive into the BatchNorm bias; the BatchNorm itself becomes the
identity plus that bias), after which the channels are an affine function of the input
that any invertible map can transform exactly. Unfolding writes the same function back in
the usual form, with running statistics measured on data, so that the result behaves
like any trained network under RESET.

:func:`map_through_batchnorm` is the whole path for a method that returns general linear
maps (``kind="linear"`` in the registry): fold, map, unfold.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from workbench.alignment.statistics import channel_moments
from workbench.data import DataLike
from workbench.graph import LayerPoint, PermutationSpec
from workbench.graph.transforms import transform_state

__all__ = [
    "fold_batchnorm",
    "foldable_points",
    "general_groups",
    "map_through_batchnorm",
    "unfold_batchnorm_",
]

_BN_CONSTANTS = ("weight", "running_mean", "running_var")


def foldable_points(model: nn.Module, spec: PermutationSpec) -> list[LayerPoint]:
    """The layers followed directly by a BatchNorm that can absorb them: affine, with
    running statistics, the layer's output channels on its weight's first axis."""
    modules = dict(model.named_modules())
    points = []
    for p in spec.layers:
        bn = modules.get(p.point)
        if (
            p.point != p.layer
            and isinstance(bn, _BatchNorm)
            and bn.affine
            and bn.track_running_stats
            and modules[p.layer].weight.shape[0] == bn.num_features
        ):
            points.append(p)
    return points


def fold_batchnorm(model: nn.Module, spec: PermutationSpec) -> tuple[nn.Module, PermutationSpec]:
    """A copy of ``model`` with every foldable BatchNorm folded into its layer, and the spec
    of the folded model, in which those BatchNorms' biases transform like the layer's
    outputs and their constant weight and statistics are left out of the groups.

    The folded model computes the same function in eval mode.
    """
    spec.check_model(model)
    folded = copy.deepcopy(model)
    modules = dict(folded.named_modules())
    points = foldable_points(folded, spec)
    with torch.no_grad():
        for p in points:
            layer, bn = modules[p.layer], modules[p.point]
            scale = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()
            bias = layer.bias.double() if layer.bias is not None else 0.0
            shift = bn.bias.double() + (bias - bn.running_mean.double()) * scale
            layer.weight.mul_(scale.to(layer.weight.dtype).view(-1, *[1] * (layer.weight.ndim - 1)))
            if layer.bias is not None:
                layer.bias.zero_()
            bn.bias.copy_(shift)
            bn.weight.fill_(1.0)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
    return folded, _folded_spec(spec, [p.point for p in points])


def general_groups(model: nn.Module, spec: PermutationSpec) -> list[str]:
    """The groups of ``model`` whose every tensor a general linear map can transform once
    its BatchNorm layers are folded (no per-channel parameters left, no grouped
    convolution); a linear method must give the other groups permutation matrices."""
    folded = _folded_spec(spec, [p.point for p in foldable_points(model, spec)])
    return [
        name
        for name, group in folded.groups.items()
        if group.blocks == 1 and all(ax.role != "channel" for ax in group.axes)
    ]


def _folded_spec(spec: PermutationSpec, folded: Sequence[str]) -> PermutationSpec:
    constants = {f"{name}.{attr}" for name in folded for attr in _BN_CONSTANTS}
    biases = {f"{name}.bias" for name in folded}
    groups = {}
    for name, group in spec.groups.items():
        axes = []
        for ax in group.axes:
            if ax.key in constants:
                continue
            if ax.key in biases:
                ax = ax.with_role("out")
            axes.append(ax)
        groups[name] = dataclasses.replace(group, axes=axes)
    return dataclasses.replace(spec, groups=groups)


def _is_folded(bn: _BatchNorm) -> bool:
    """Whether ``bn`` is exactly as :func:`fold_batchnorm` leaves it (identity but a bias)."""
    return bool(
        torch.all(bn.weight == 1)
        and torch.all(bn.running_mean == 0)
        and torch.all(bn.running_var == torch.tensor(1.0 - bn.eps, dtype=bn.running_var.dtype))
    )


def _scale(bn: _BatchNorm) -> torch.Tensor:
    """The factor by which ``bn`` multiplies its (centered) input, per channel."""
    return bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()


def unfold_batchnorm_(
    model: nn.Module,
    spec: PermutationSpec,
    data: DataLike,
    reference: nn.Module | None = None,
    batch_size: int = 500,
    max_batches: int | None = None,
) -> nn.Module:
    """In place: write every folded BatchNorm of ``model`` (identity but its bias) back in
    the usual form, without changing the function: running statistics measured on
    ``data``, and the layer's weights divided by ``reference``'s BatchNorm scale (default
    1) so that they are on the same scale as the reference's and can be averaged with
    them. Returns ``model``."""
    modules = dict(model.named_modules())
    points = [p for p in foldable_points(model, spec) if _is_folded(modules[p.point])]
    if not points:
        return model
    inputs = [LayerPoint(p.layer, p.layer, p.dim, p.final) for p in points]
    moments = channel_moments(model, data, inputs, batch_size, max_batches)
    references = dict(reference.named_modules()) if reference is not None else {}
    with torch.no_grad():
        for p in points:
            layer, bn = modules[p.layer], modules[p.point]
            scale = torch.ones(bn.num_features, dtype=torch.float64, device=bn.weight.device)
            if p.point in references:
                scale = _scale(references[p.point]).to(scale.device)
                scale = torch.where(scale.abs() > 1e-8 * scale.abs().max(), scale, 1.0)
            mean, std = moments[p.layer]
            mean, var = mean / scale, (std / scale).square()
            layer.weight.div_(scale.to(layer.weight.dtype).view(-1, *[1] * (layer.weight.ndim - 1)))
            bn.running_mean.copy_(mean)
            bn.running_var.copy_(var)
            bn.weight.copy_(scale * (var + bn.eps).sqrt())
            bn.bias.add_((mean * scale).to(bn.bias.dtype))
    return model


def map_through_batchnorm(
    model: nn.Module,
    spec: PermutationSpec,
    maps: dict[str, torch.Tensor],
    data: DataLike,
    reference: nn.Module | None = None,
    batch_size: int = 500,
    max_batches: int | None = None,
) -> nn.Module:
    """A copy of ``model`` whose groups' channels ``x`` become ``maps[g] @ x`` (groups
    without a map keep theirs), through its BatchNorm layers: folded into the layers
    before them, mapped, written back with running statistics measured on ``data`` and
    ``reference``'s BatchNorm scales (see :func:`unfold_batchnorm_`).

    Groups outside :func:`general_groups` take permutation matrices only.
    """
    folded, folded_spec = fold_batchnorm(model, spec)
    state = transform_state(folded.state_dict(), folded_spec, maps)
    if not all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()):
        raise FloatingPointError(
            "The linear maps produced non-finite weights (nearly singular maps); for CCA, "
            "increase gamma or use more data."
        )
    folded.load_state_dict(state)
    return unfold_batchnorm_(folded, spec, data, reference, batch_size, max_batches)
