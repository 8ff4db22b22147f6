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
from workbench.graph.shape_rules import (
    cat,
    flatten_call,
    flatten_module,
    getitem,
    narrow,
    permute,
    reduce,
    reshape,
    split,
    stack,
    transpose,
)
from workbench.graph.spec import Axis
from workbench.graph.trace import call_argument, shape_of

__all__ = [
    "FUNCTION_RULES",
    "LAYERS",
    "METHOD_RULES",
    "MODULE_RULES",
    "TUPLE_RULES",
    "Rule",
    "is_nonlinearity",
]

Rule = Callable[[GraphLabels, fx.Node, Any], Label | None]

LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


# -- rules ---------------------------------------------------------------------------------
def channelwise(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """Activations, pooling, dropout, padding, resizing, casts: output channel ``c`` is a
    function of input channel ``c`` alone, so the output carries the input's groups."""
    return b.input_label(node)


def softmax(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``softmax``/``log_softmax``/``softmin`` along any axis keep the label. Along another
    axis than the channels each channel is normalized on its own (channelwise); along the
    channel axis every output is its own input's exponential over a sum over all channels,
    a sum that a permutation leaves unchanged, so ``softmax(P x) = P softmax(x)``."""
    return b.input_label(node)


def layer(b: GraphLabels, node: fx.Node, module: nn.Module) -> Label | None:
    """Conv or linear layer: its input axis (weight axis 1) follows the input's groups; its
    output channels (weight axis 0, bias) start a new group. A depthwise conv ties output
    channel ``c`` to input channel ``c`` (its filters follow the input's group). Any other
    grouped conv with ``k`` groups mixes channels within blocks only: output block ``j``
    reads input block ``j``, so its input and output groups may move channels only within
    their ``k`` blocks (weight axis 1 is then permuted block by block). Channels on
    another axis than the one the layer mixes are frozen: their correspondence to the
    output is not followed."""
    name = str(node.target)
    key = f"{name}."
    inp = b.input_label(node)
    is_linear = isinstance(module, nn.Linear)
    in_dim = (len(shape_of(node.args[0])) - 1) if is_linear else 1
    if inp is not None and inp.dim != in_dim:  # its channels lie on an axis it does not mix
        b.freeze(inp, f"{name}: reads its input's channels on another axis")
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
    shape = call_argument(node, 1, "normalized_shape", None)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    params = []
    for index, name in ((2, "weight"), (3, "bias")):
        value = call_argument(node, index, name, None)
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
    ((nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d), softmax),
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
    torch.stack: stack,
    operator.getitem: getitem,
    torch.narrow: narrow,
    torch.permute: permute,
    **dict.fromkeys((torch.transpose, torch.swapaxes, torch.swapdims), transpose),
    **dict.fromkeys(
        (F.softmax, F.log_softmax, F.softmin, torch.softmax, torch.log_softmax), softmax
    ),
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
    **dict.fromkeys(("transpose", "swapaxes", "swapdims"), transpose),
    "narrow": narrow,
    **dict.fromkeys(("softmax", "log_softmax"), softmax),
    **dict.fromkeys(("mean", "sum", "amax", "amin"), reduce),
}

# Ops that return a tuple of tensors: keyed by function, or by method name.
TUPLE_RULES: dict[Callable | str, Callable[[GraphLabels, fx.Node, Any], None]] = {
    torch.split: split,
    torch.chunk: split,
    "split": split,
    "chunk": split,
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
