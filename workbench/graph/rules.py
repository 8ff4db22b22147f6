"""One documented rule per op: how each node's output channels relate to its inputs'.

A rule is called as ``rule(builder, node, target)`` (``target``: the module of a
``call_module`` node, else the function or method name) and returns the node's
:class:`~workbench.graph.labels.Label` (which groups run along which axis of its output),
or ``None`` for a value without channels. Rules record what they learn on the builder:
axes that follow a group (``add_axes``), groups that must move together (``unite``) and
groups that must not move (``freeze``, ``opaque``). The builder looks a node up in three
tables: :data:`MODULE_RULES` (first ``isinstance`` match), :data:`FUNCTION_RULES` and
:data:`METHOD_RULES`; a node that no table knows is opaque: its inputs and its output are
frozen, so an unknown op can make a spec smaller but never wrong.

Adding support for an op is one rule and one table entry here.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.ops import stochastic_depth

from workbench.graph.labels import GraphLabels, Label, Segment
from workbench.graph.spec import Axis
from workbench.graph.trace import shape_of

__all__ = [
    "FUNCTION_RULES",
    "LAYERS",
    "METHOD_RULES",
    "MODULE_RULES",
    "Rule",
    "is_nonlinearity",
]

Rule = Callable[[GraphLabels, fx.Node, Any], Label | None]

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    """Argument ``index`` of a call, whether passed by position or as ``name=``."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


# -- rules ---------------------------------------------------------------------------------
def channelwise(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """Activations, pooling, dropout, padding, resizing, casts: output channel ``c`` is a
    function of input channel ``c`` alone, so the output carries the input's groups."""
    return b.input_label(node)


def layer(b: GraphLabels, node: fx.Node, module: nn.Module) -> Label | None:
    """Conv or linear layer: its input axis (weight axis 1) follows the input's groups; its
    output channels (weight axis 0, bias) start a new group. A depthwise conv ties output
    channel ``c`` to input channel ``c`` (its filters follow the input's group). Any other
    grouped conv with ``k`` groups mixes channels within blocks only: output block ``j``
    reads input block ``j``, so its input and output groups may move channels only within
    their ``k`` blocks (weight axis 1 is then permuted block by block)."""
    name = str(node.target)
    key = f"{name}."
    inp = b.input_label(node)
    is_linear = isinstance(module, nn.Linear)
    in_dim = (len(shape_of(node.args[0])) - 1) if is_linear else 1
    if inp is not None and inp.dim != in_dim:
        inp = None
    out_dim = len(shape_of(node)) - 1 if is_linear else 1
    groups = 1 if is_linear else module.groups
    if groups == 1:
        if inp is None:
            b.untouched.setdefault(key + "weight", f"{name}: input channels unknown")
        else:
            b.add_axes(inp, key + "weight", 1, name, role="in")
        out_channels = module.out_features if is_linear else module.out_channels
        g = b.new_group(out_channels, name)
        b.axes[g] += [Axis(key + "weight", 0, role="out")]
        if module.bias is not None:
            b.axes[g].append(Axis(key + "bias", 0, role="out"))
        return Label(out_dim, (Segment(g, out_channels),))
    if inp is not None and module.in_channels == module.out_channels == groups:
        b.add_axes(inp, key + "weight", 0, name)
        if module.bias is not None:
            b.add_axes(inp, key + "bias", 0, name)
        return Label(out_dim, inp.segments)
    if inp is not None and len(inp.segments) == 1 and inp.segments[0].block == 1:
        # output block j reads input block j only: both move within their blocks
        b.add_axes(inp, key + "weight", 1, name, role="in", grouped=groups)
        b.require_blocks(inp.segments[0].group, groups)
        g = b.new_group(module.out_channels, name)
        b.axes[g] += [Axis(key + "weight", 0, role="out")]
        if module.bias is not None:
            b.axes[g].append(Axis(key + "bias", 0, role="out"))
        b.require_blocks(g, groups)
        return Label(out_dim, (Segment(g, module.out_channels),))
    b.freeze(inp, f"{name}: grouped convolution ({groups} groups) on concatenated channels")
    b.untouched.setdefault(key + "weight", f"{name}: grouped convolution")
    return b.fixed(node)


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


def groupnorm(b: GraphLabels, node: fx.Node, module: nn.GroupNorm) -> Label | None:
    """GroupNorm with one group (normalizes over all channels: permutation invariant) or one
    group per channel (InstanceNorm-like): channelwise, affine parameters follow the group.
    Other group counts normalize blocks of channels together and are opaque."""
    name = str(node.target)
    inp = b.input_label(node)
    if inp is None or inp.dim != 1 or module.num_groups not in (1, module.num_channels):
        return b.opaque(node, f"{name}: GroupNorm with {module.num_groups} groups")
    if module.affine:
        b.add_axes(inp, f"{name}.weight", 0, name)
        b.add_axes(inp, f"{name}.bias", 0, name)
    return inp


def permute(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``x.permute(...)`` / ``torch.permute``: the channels move with their axis (to the
    position the axis takes in the output)."""
    inp = b.input_label(node)
    if inp is None:
        return b.fixed(node)
    dims = _arg(node, 1, "dims", None)
    if isinstance(dims, int):  # x.permute(0, 2, 3, 1): the dims as separate arguments
        dims = node.args[1:]
    ndim = len(shape_of(node))
    dims = [d % ndim for d in dims]
    return Label(dims.index(inp.dim), inp.segments)


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
    params = {
        f"{node.target}.{p}": 0 for p in ("weight", "bias") if getattr(module, p, None) is not None
    }
    return _layer_norm(b, node, tuple(module.normalized_shape), params)


def layer_norm_call(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``F.layer_norm(x, shape, weight, bias)`` with weight and bias parameters of the
    model (``get_attr`` nodes): see :func:`_layer_norm`; other weights are opaque."""
    shape = _arg(node, 1, "normalized_shape", None)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    params = []
    for index, name in ((2, "weight"), (3, "bias")):
        value = _arg(node, index, name, None)
        if isinstance(value, fx.Node):
            if value.op != "get_attr" or value.target not in b.params:
                return b.opaque(node, "layer norm with a computed weight")
            params.append(str(value.target))
    return _layer_norm(b, node, shape, params)


def prelu(b: GraphLabels, node: fx.Node, module: nn.PReLU) -> Label | None:
    """PReLU: channelwise; a per-channel slope follows the input's group."""
    inp = b.input_label(node)
    if module.num_parameters > 1:
        b.add_axes(inp, f"{node.target}.weight", 0, str(node.target))
    return inp


def flatten_module(b: GraphLabels, node: fx.Node, module: nn.Flatten) -> Label | None:
    """``nn.Flatten``: see :func:`flatten`."""
    return flatten(b, node, b.input_label(node), module.start_dim, module.end_dim)


def flatten_call(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``torch.flatten`` / ``x.flatten``: see :func:`flatten`."""
    start, end = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
    return flatten(b, node, b.input_label(node), start, end)


def flatten(b: GraphLabels, node: fx.Node, inp: Label | None, start: int, end: int) -> Label | None:
    """Flattening from the channel axis on expands each channel into a block of
    consecutive entries (its spatial positions); flattening axes before or after the
    channel axis only moves it. Merging the channel axis with earlier axes is opaque."""
    in_shape = shape_of(node.args[0])
    ndim = len(in_shape)
    start, end = start % ndim, end % ndim
    if inp is None:
        return b.fixed(node)
    if start > inp.dim or end < inp.dim:
        return Label(inp.dim - max(0, end - start) * (inp.dim > end), inp.segments)
    if start != inp.dim:
        return b.opaque(node, "flatten that merges the channel axis with earlier axes")
    block = 1
    for size in in_shape[inp.dim + 1 : end + 1]:
        block *= size
    return Label(inp.dim, tuple(Segment(s.group, s.size, s.block * block) for s in inp.segments))


def binary(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``a + b``, ``a * b``, ...: two labelled tensors must be permuted alike, so their
    groups are united (a residual add); a scalar or a tensor broadcast along the channels
    leaves the label as it is; a per-channel parameter (``get_attr``) follows the group;
    any other per-channel operand is opaque."""
    a, c = node.args[0], node.args[1]
    la, lc = b.label_of(a), b.label_of(c)
    shape = shape_of(node)
    if la is not None and lc is not None:
        if b.unite(la, lc, "residual joined with fixed channels"):
            return la
        return b.opaque(node, "elementwise op between differently sliced channels")
    labelled, other = (la, c) if la is not None else (lc, a)
    if labelled is None:
        return b.fixed(node) if shape is not None else None
    other_shape = shape_of(other)
    if other_shape is None:
        return labelled  # scalar operand
    channel_dim_in_other = labelled.dim - (len(shape) - len(other_shape))
    if channel_dim_in_other < 0 or other_shape[channel_dim_in_other] == 1:
        return labelled  # broadcast along the channels
    if other.op == "get_attr" and other.target in b.params:
        b.add_axes(labelled, str(other.target), channel_dim_in_other, str(other.target))
        return labelled
    return b.opaque(node, "elementwise op with an unlabelled per-channel tensor")


def binary_call(b: GraphLabels, node: fx.Node, target: Any) -> Label | None:
    """A binary function or method with both operands given: see :func:`binary`."""
    if len(node.args) < 2:
        return b.opaque(node, f"{getattr(target, '__name__', target)} with one operand")
    return binary(b, node, target)


def cat(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``torch.cat`` along the channel axis concatenates the inputs' groups (a consumer's
    input axis is then split into slices, one per group); along another axis the inputs'
    groups are united. An unlabelled input freezes the others."""
    tensors = list(node.args[0])
    dim = _arg(node, 1, "dim", 0) % len(shape_of(node))
    labels = [b.label_of(t) for t in tensors]
    if any(lab is None for lab in labels):
        for lab in labels:
            b.freeze(lab, "concatenated with an unlabelled tensor")
        return b.fixed(node)
    if all(lab.dim == dim for lab in labels):
        return Label(dim, tuple(seg for lab in labels for seg in lab.segments))
    first = labels[0]
    if all(lab.dim == first.dim for lab in labels) and all(
        b.unite(first, lab, "cat along another axis") for lab in labels[1:]
    ):
        return first
    return b.opaque(node, "cat of differently labelled tensors")


def reduce(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``mean``/``sum``/``amax``/``amin``: reducing over other axes keeps the channels
    (their axis index shifts when dims are dropped); reducing over the channel axis or
    everything gives a permutation-invariant value."""
    inp = b.input_label(node)
    if inp is None:
        return b.fixed(node)
    dims = _arg(node, 1, "dim", None)
    in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
    if dims is None:
        return None  # full reduction: a scalar, invariant to any permutation
    dims = {d % len(in_shape) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
    if inp.dim in dims:
        return b.fixed(node)
    if any(s.block != 1 for s in inp.segments):
        return b.opaque(node, "reduction over a flattened channel block")
    kept = len(out_shape) == len(in_shape)
    new_dim = inp.dim if kept else inp.dim - sum(d < inp.dim for d in dims)
    return Label(new_dim, inp.segments)


def reshape(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``view``/``reshape``: the same shape keeps the label; flattening everything from the
    channel axis on is :func:`flatten`; any other reshape is opaque."""
    inp = b.input_label(node)
    in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
    if inp is None:
        return b.fixed(node)
    if out_shape == in_shape:
        return inp
    if len(out_shape) == inp.dim + 1 and out_shape[: inp.dim] == in_shape[: inp.dim]:
        return flatten(b, node, inp, inp.dim, -1)
    return b.opaque(node, f"reshape {in_shape} -> {out_shape}")


# -- tables --------------------------------------------------------------------------------
_CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
    nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)  # fmt: skip

MODULE_RULES: tuple[tuple[type | tuple[type, ...], Rule], ...] = (
    (LAYERS, layer),
    (nn.modules.batchnorm._BatchNorm, batchnorm),
    (nn.GroupNorm, groupnorm),
    (nn.PReLU, prelu),
    (nn.LayerNorm, layer_norm_module),
    (_CHANNELWISE_MODULES, channelwise),
    (nn.Flatten, flatten_module),
)

_CHANNELWISE_FUNCTIONS = (
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.softplus, F.dropout, F.dropout1d, F.dropout2d,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.abs, torch.neg, torch.exp,
    torch.clamp, torch.square, torch.sqrt, operator.neg,
    stochastic_depth,  # drops whole samples (or the batch): a per-sample scalar
)  # fmt: skip
_BINARY_FUNCTIONS = (
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, torch.add, torch.sub, torch.mul, torch.div,
)  # fmt: skip

FUNCTION_RULES: dict[Callable, Rule] = {
    **dict.fromkeys(_CHANNELWISE_FUNCTIONS, channelwise),
    **dict.fromkeys(_BINARY_FUNCTIONS, binary_call),
    torch.flatten: flatten_call,
    torch.cat: cat,
    torch.permute: permute,
    F.layer_norm: layer_norm_call,
    **dict.fromkeys((torch.mean, torch.sum, torch.amax, torch.amin), reduce),
}

_CHANNELWISE_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "abs", "neg", "exp", "clamp",
    "clamp_", "contiguous", "clone", "detach", "float", "double", "half", "to", "square",
    "sqrt",
)  # fmt: skip

METHOD_RULES: dict[str, Rule] = {
    **dict.fromkeys(_CHANNELWISE_METHODS, channelwise),
    **dict.fromkeys(("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"), binary_call),
    "flatten": flatten_call,
    **dict.fromkeys(("view", "reshape"), reshape),
    "permute": permute,
    **dict.fromkeys(("mean", "sum", "amax", "amin"), reduce),
}

# Where alignment observes a group: the outputs of nonlinearities.
_NONLINEAR_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.PReLU,
)  # fmt: skip
_NONLINEAR_FUNCTIONS = frozenset(
    (
        F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, F.hardswish,
        F.hardsigmoid, F.hardtanh, F.softplus, torch.relu, torch.relu_, torch.sigmoid,
        torch.tanh,
    )
)  # fmt: skip
_NONLINEAR_METHODS = frozenset(("relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"))


def is_nonlinearity(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` is the output of an activation function."""
    if node.op == "call_module":
        return isinstance(modules[node.target], _NONLINEAR_MODULES)
    if node.op == "call_function":
        return node.target in _NONLINEAR_FUNCTIONS
    return node.op == "call_method" and node.target in _NONLINEAR_METHODS
