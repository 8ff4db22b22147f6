"""Rules for normalization layers: how BatchNorm, GroupNorm and LayerNorm over channels
constrain the groups they normalize. Same contract as :mod:`workbench.graph.rules`, whose
tables list them.

* BatchNorm, and GroupNorm with one group per channel (InstanceNorm), normalize each
  channel on its own: any permutation passes, the affine parameters follow it.
* LayerNorm over the channel axis (ConvNeXt's ``LayerNorm2d``: a permute to channels-last,
  ``F.layer_norm`` over the last axis, a permute back; or ``nn.LayerNorm`` there), and
  GroupNorm with one group (a LayerNorm over channels and positions), take a mean and a
  variance over all channels, which any permutation leaves unchanged.
* GroupNorm with ``G`` groups of ``C / G`` consecutive channels takes them per group: a
  permutation that keeps every channel in its group passes, so the group's channels move
  within ``G`` blocks (:meth:`GraphLabels.require_blocks`, the one mechanism that also
  constrains the groups a grouped convolution reads and writes, and that every alignment
  method honours). A label of several groups (after a ``cat``) is constrained group by
  group, when the GroupNorm's groups do not straddle them.
"""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from workbench.graph.labels import FIXED, GraphLabels, Label
from workbench.graph.trace import call_argument, shape_of

__all__ = [
    "batchnorm",
    "group_norm_call",
    "groupnorm",
    "layer_norm_call",
    "layer_norm_module",
]


def batchnorm(b: GraphLabels, node: fx.Node, module: nn.Module) -> Label | None:
    """BatchNorm: per-channel affine parameters and running statistics follow the input's
    group along axis 0; the output carries the input's groups."""
    name = str(node.target)
    inp = b.input_label(node)
    if inp is None or inp.dim != 1:
        return b.opaque(node, f"{name}: BatchNorm on an unlabelled input")
    for p in ("weight", "bias", "running_mean", "running_var"):
        if getattr(module, p, None) is not None:
            b.add_axes(inp, f"{name}.{p}", 0, name)
    return inp


def _group_norm(
    b: GraphLabels, node: fx.Node, num_groups: int, params: list[str], name: str
) -> Label | None:
    """GroupNorm with ``num_groups`` groups over axis 1 (see the module docstring);
    ``params``: the state-dict keys of its per-channel weight and bias."""
    inp = b.input_label(node)
    if inp is None or inp.dim != 1:
        return b.opaque(node, f"{name}: GroupNorm on an unlabelled input")
    width = inp.width
    if width % num_groups:
        return b.opaque(node, f"{name}: GroupNorm of {num_groups} groups on {width} channels")
    span = width // num_groups  # consecutive entries normalized together
    if 1 < num_groups < width:
        for seg, start in zip(inp.segments, inp.bounds(), strict=False):
            extent = seg.size * seg.block
            if start % span or extent % span or (span % seg.block and seg.block % span):
                return b.opaque(node, f"{name}: GroupNorm groups straddle channel boundaries")
            if seg.group != FIXED and span > seg.block:  # else whole GroupNorm groups move
                b.require_blocks(seg.group, extent // span)
    for key in params:
        b.add_axes(inp, key, 0, name)
    return inp


def groupnorm(b: GraphLabels, node: fx.Node, module: nn.GroupNorm) -> Label | None:
    """``nn.GroupNorm`` (and subclasses, such as timm's ``GroupNorm1``): see
    :func:`_group_norm`."""
    name = str(node.target)
    params = [f"{name}.{p}" for p in ("weight", "bias") if getattr(module, p, None) is not None]
    return _group_norm(b, node, module.num_groups, params, name)


def _parameters(b: GraphLabels, node: fx.Node, first: int) -> list[str] | None:
    """The state-dict keys of a functional norm's ``weight`` and ``bias`` (arguments
    ``first`` and ``first + 1``), when they are parameters of the model; None when one is
    computed."""
    params = []
    for index, name in ((first, "weight"), (first + 1, "bias")):
        value = call_argument(node, index, name, None)
        if isinstance(value, fx.Node):
            if value.op != "get_attr" or value.target not in b.params:
                return None
            params.append(str(value.target))
    return params


def group_norm_call(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``F.group_norm(x, num_groups, weight, bias)`` with weight and bias parameters of
    the model: see :func:`_group_norm`; other weights are opaque."""
    params = _parameters(b, node, 2)
    if params is None:
        return b.opaque(node, "group norm with a computed weight")
    return _group_norm(b, node, call_argument(node, 1, "num_groups", 1), params, node.name)


def _layer_norm(
    b: GraphLabels, node: fx.Node, shape: tuple[int, ...], params: list[str]
) -> Label | None:
    """Layer normalization over the last ``len(shape)`` axes: a mean and variance over the
    channel axis are invariant to permuting it, and the elementwise weight and bias
    (``params``: their state-dict keys, shaped like ``shape``) follow the group along the
    channel axis."""
    inp = b.input_label(node)
    if inp is None:
        return b.fixed(node)
    first = len(shape_of(node)) - len(shape)
    if inp.dim >= first:
        for key in params:
            b.add_axes(inp, key, inp.dim - first, key)
    return inp


def layer_norm_module(b: GraphLabels, node: fx.Node, module: nn.LayerNorm) -> Label | None:
    """``nn.LayerNorm``: see :func:`_layer_norm`."""
    params = [
        f"{node.target}.{p}" for p in ("weight", "bias") if getattr(module, p, None) is not None
    ]
    return _layer_norm(b, node, tuple(module.normalized_shape), params)


def layer_norm_call(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``F.layer_norm(x, shape, weight, bias)`` with weight and bias parameters of the
    model (``get_attr`` nodes): see :func:`_layer_norm`; other weights are opaque."""
    shape = call_argument(node, 1, "normalized_shape", None)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    params = _parameters(b, node, 2)
    if params is None:
        return b.opaque(node, "layer norm with a computed weight")
    return _layer_norm(b, node, shape, params)
