"""Moving BatchNorm into the layer before it, so that general linear maps can pass
through a group exactly.

A BatchNorm layer scales and shifts each channel on its own, which commutes with a
permutation of the channels but not with a general matrix. Folding rewrites
``bn(conv(x))`` as ``conv'(x) + b`` (the normalization and scale go into the conv
weights, everything additive into the BatchNorm bias; the BatchNorm itself becomes the
identity plus that bias), after which the channels are an affine function of the input
that any invertible map can transform exactly: applied to the folded model
(:func:`~workbench.graph.transforms.apply_linear_maps`), it keeps the function.

The alignment methods do not take this path: a linear method's maps carry BatchNorm
along (:func:`~workbench.alignment.map_model`), as CCA Merge's authors do, because
mapping the folded pre-activations lets the maps' whitening inflate channels that
BatchNorm would have renormalized (on the shipped pair, CCA Merge reached 63% this way
against 95% carrying BatchNorm along; ``tests/test_merge_invariants.py``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from workbench.graph import LayerPoint, PermutationSpec
from workbench.modules import clone
from workbench.vocabulary import keyword_only

__all__ = ["fold_batchnorm", "foldable_points"]

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


@keyword_only(("spec",))
def fold_batchnorm(
    model: nn.Module,
    *,
    spec: PermutationSpec,
) -> tuple[nn.Module, PermutationSpec]:
    """A copy of ``model`` with every foldable BatchNorm folded into its layer, and the spec
    of the folded model, in which those BatchNorms' biases transform like the layer's
    outputs and their constant weight and statistics are left out of the groups.

    The folded model computes the same function in eval mode.
    """
    spec.check_model(model)
    folded = clone(model)
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
