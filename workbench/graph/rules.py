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

import math
import operator
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torchvision.ops import stochastic_depth

from workbench.graph.labels import FIXED, GraphLabels, Label, Segment
from workbench.graph.norm_rules import (
    batchnorm,
    group_norm_call,
    groupnorm,
    layer_norm_call,
    layer_norm_module,
)
from workbench.graph.product_rules import conv_call, matmul
from workbench.graph.reshape_rules import reshape
from workbench.graph.shape_rules import (
    cat,
    expand,
    flatten_call,
    flatten_module,
    getitem,
    narrow,
    norm,
    pad,
    permute,
    reduce,
    split,
    squeeze,
    stack,
    transpose,
    unsqueeze,
)
from workbench.graph.spec import Axis
from workbench.graph.trace import shape_of

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
    channel ``c`` to input channel ``c`` (its filters follow the input's group); one with
    ``k`` filters per input channel ties outputs ``k c ... k c + k - 1`` to it, a block of
    ``k`` that moves with it (:meth:`~workbench.graph.labels.GraphLabels.expand` lets the
    channels that are added to them follow). Any other
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
        g = _output_group(b, module, name, out_channels)
        return Label(out_dim, (Segment(g, out_channels),))
    if inp is not None and module.in_channels == module.out_channels == groups:
        for param in ("weight", "bias", *_channel_parameters(module, groups)):
            if getattr(module, param) is not None:
                b.add_axes(inp, key + param, 0, name)
        return Label(out_dim, inp.segments)
    fixed = inp is None or any(s.group == FIXED for s in inp.segments)
    if not fixed and module.in_channels == groups:
        # k filters per input channel: its k outputs move with it, as one block
        k = module.out_channels // groups
        out = Label(out_dim, tuple(Segment(s.group, s.size, s.block * k) for s in inp.segments))
        for param in ("weight", "bias", *_channel_parameters(module, module.out_channels)):
            if getattr(module, param) is not None:
                b.add_axes(out, key + param, 0, name)
        return out
    if inp is not None and len(inp.segments) == 1 and inp.segments[0].block == 1:
        # output block j reads input block j only: both move within their blocks
        b.add_axes(inp, key + "weight", 1, name, role="in", grouped=groups)
        b.require_blocks(inp.segments[0].group, groups)
        g = _output_group(b, module, name, module.out_channels)
        b.require_blocks(g, groups)
        return Label(out_dim, (Segment(g, module.out_channels),))
    b.freeze(inp, f"{name}: grouped convolution ({groups} groups) on concatenated channels")
    b.untouched.setdefault(key + "weight", f"{name}: grouped convolution")
    return b.fixed(node)


def _output_group(b: GraphLabels, module: nn.Module, name: str, channels: int) -> int:
    """A new group for a layer's ``channels`` output channels: its weight's rows and its
    bias, and any other per-output-channel parameter (:func:`_channel_parameters`)."""
    g = b.new_group(channels, name)
    b.axes[g] += [Axis(f"{name}.weight", 0, role="out")]
    if module.bias is not None:
        b.axes[g].append(Axis(f"{name}.bias", 0, role="out"))
    b.axes[g] += [Axis(f"{name}.{p}", 0) for p in _channel_parameters(module, channels)]
    return g


def _channel_parameters(module: nn.Module, channels: int) -> list[str]:
    """A layer's parameters and buffers besides ``weight`` and ``bias`` with one entry per
    output channel: the gain of a scaled weight-standardized convolution (timm's
    ``ScaledStdConv2d``: ``W' = gain * (W - mean) / std`` per output row, over its fan-in,
    so it commutes with permuting the rows and with permuting the input columns). They
    follow the output channels; no general linear map passes them (role ``"channel"``)."""
    tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
    return [
        name
        for name, t in tensors
        if name not in ("weight", "bias") and t.ndim >= 1 and t.shape[0] == t.numel() == channels
    ]


def prelu(b: GraphLabels, node: fx.Node, module: nn.PReLU) -> Label | None:
    """PReLU: channelwise; a per-channel slope follows the input's group."""
    inp = b.input_label(node)
    if module.num_parameters > 1:
        b.add_axes(inp, f"{node.target}.weight", 0, str(node.target))
    return inp


def elementwise(b: GraphLabels, node: fx.Node, operands: list[Any]) -> Label | None:
    """An elementwise op of ``operands`` (broadcast): labelled tensors must be permuted
    alike, so their groups are united (a residual add); a scalar, a value without channels
    or a tensor broadcast along the channels leaves the label as it is; a per-channel
    parameter (:func:`_follow_parameter`) follows the group; any other per-channel
    operand is opaque."""
    shape = shape_of(node)
    labels = [b.label_of(x) for x in operands]
    labelled = [lab for lab in labels if lab is not None]
    if not labelled:
        return None  # parameters, scalars, values invariant to any permutation
    first = labelled[0]
    if not all(b.unite(first, lab, "residual joined with fixed channels") for lab in labelled[1:]):
        return b.opaque(node, "elementwise op between differently sliced channels")
    for other, label in zip(operands, labels, strict=True):
        other_shape = shape_of(other)
        if label is not None or other_shape is None:
            continue  # labelled (united above), or a scalar
        dim = first.dim - (len(shape) - len(other_shape))
        if dim < 0 or other_shape[dim] == 1:
            continue  # broadcast along the channels
        if not _follow_parameter(b, first, other, dim):
            return b.opaque(node, "elementwise op with an unlabelled per-channel tensor")
    return first


def _follow_parameter(b: GraphLabels, label: Label, other: fx.Node, dim: int) -> bool:
    """Let a parameter of the model that runs along the channels (axis ``dim`` of
    ``other``) follow ``label``'s groups: the parameter itself (``get_attr``), or a view of
    a parameter with one axis longer than 1 (``self.gamma.view(1, -1, 1, 1)``,
    ``self.weight[:, None, None]``: :attr:`GraphLabels.parameter_views`)."""
    if other.op == "get_attr" and other.target in b.params:
        b.add_axes(label, str(other.target), dim, str(other.target))
        return True
    if other not in b.parameter_views:
        return False
    key, param_shape = b.parameter_views[other]
    long_axes = [i for i, n in enumerate(param_shape) if n != 1]
    if len(long_axes) != 1 or [i for i, n in enumerate(shape_of(other)) if n != 1] != [dim]:
        return False
    b.add_axes(label, key, long_axes[0], key)
    return True


def binary(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``a + b``, ``a * b``, ``x ** 2``, ...: see :func:`elementwise`."""
    return elementwise(b, node, list(node.args[:2]))


def ternary(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``torch.addcmul(x, t1, t2)`` / ``addcdiv``: ``x + value * t1 * t2`` (or ``/``), see
    :func:`elementwise` (ConvNeXt-V2's global response normalization)."""
    return elementwise(b, node, list(node.args[:3]))


def binary_call(b: GraphLabels, node: fx.Node, target: Any) -> Label | None:
    """A binary function or method with both operands given: see :func:`binary`."""
    if len(node.args) < 2:
        return b.opaque(node, f"{getattr(target, '__name__', target)} with one operand")
    return binary(b, node, target)


def parameter_view(b: GraphLabels, node: fx.Node) -> bool:
    """Whether ``node`` is a parameter of the model or all of one, reshaped (``view``,
    ``reshape``, ``unsqueeze``, ``x[:, None, None]``, a cast, ...): recorded in
    :attr:`GraphLabels.parameter_views` with the parameter's key and shape, so that an
    elementwise op can let it follow a group (:func:`_follow_parameter`). Such a node has
    no label: a parameter does not depend on the input."""
    if node.op == "get_attr":
        if node.target in b.params and shape_of(node) is not None:
            b.parameter_views[node] = (str(node.target), shape_of(node))
        return True
    source = node.args[0] if node.args else None
    if not isinstance(source, fx.Node) or source not in b.parameter_views or shape_of(node) is None:
        return False
    reshaping = (node.op == "call_method" and node.target in _VIEW_METHODS) or (
        node.op == "call_function" and node.target in _VIEW_FUNCTIONS
    )
    key, shape = b.parameter_views[source]
    if not reshaping or math.prod(shape_of(node)) != math.prod(shape):
        return False
    b.parameter_views[node] = (key, shape)
    return True


# -- tables --------------------------------------------------------------------------------
_CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
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
    operator.truediv, operator.pow, torch.add, torch.sub, torch.mul, torch.div, torch.pow,
    torch.maximum, torch.minimum,
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
    F.group_norm: group_norm_call,
    F.pad: pad,
    torch.unsqueeze: unsqueeze,
    torch.squeeze: squeeze,
    **dict.fromkeys((torch.addcmul, torch.addcdiv), ternary),
    **dict.fromkeys((torch.norm, torch.linalg.vector_norm), norm),
    **dict.fromkeys((F.conv1d, F.conv2d, F.conv3d), conv_call),
    **dict.fromkeys((torch.matmul, operator.matmul, torch.bmm), matmul),
    **dict.fromkeys((torch.mean, torch.sum, torch.amax, torch.amin, torch.var, torch.std), reduce),
}

_CHANNELWISE_METHODS = (
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "abs", "neg", "exp", "clamp",
    "clamp_", "contiguous", "clone", "detach", "float", "double", "half", "to", "square",
    "sqrt",
)  # fmt: skip

METHOD_RULES: dict[str, Rule] = {
    **dict.fromkeys(_CHANNELWISE_METHODS, channelwise),
    **dict.fromkeys(
        ("add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_", "pow", "maximum", "minimum"),
        binary_call,
    ),
    "flatten": flatten_call,
    **dict.fromkeys(("view", "reshape"), reshape),
    **dict.fromkeys(("expand", "expand_as"), expand),
    "unsqueeze": unsqueeze,
    "squeeze": squeeze,
    "permute": permute,
    **dict.fromkeys(("transpose", "swapaxes", "swapdims"), transpose),
    "narrow": narrow,
    **dict.fromkeys(("softmax", "log_softmax"), softmax),
    **dict.fromkeys(("mean", "sum", "amax", "amin", "var", "std"), reduce),
    **dict.fromkeys(("addcmul", "addcdiv"), ternary),
    "norm": norm,
    **dict.fromkeys(("matmul", "bmm"), matmul),
}

# Reshapes and casts that keep a parameter whole (see parameter_view).
_VIEW_METHODS = frozenset(
    ("view", "reshape", "unsqueeze", "squeeze", "flatten", "permute", "transpose", "to",
     "float", "double", "half", "contiguous")
)  # fmt: skip
_VIEW_FUNCTIONS = frozenset(
    (torch.reshape, torch.unsqueeze, torch.squeeze, torch.flatten, torch.permute,
     torch.transpose, operator.getitem)
)  # fmt: skip

# Ops that return a tuple of tensors: keyed by function, or by method name.
TUPLE_RULES: dict[Callable | str, Callable[[GraphLabels, fx.Node, Any], None]] = {
    torch.split: split,
    torch.chunk: split,
    "split": split,
    "chunk": split,
}

# Where alignment observes a group: the outputs of nonlinearities.
_NONLINEAR_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.PReLU,
)  # fmt: skip
_NONLINEAR_FUNCTIONS = frozenset(
    (
        F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.gelu, F.silu, F.mish,
        F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, torch.relu, torch.relu_, torch.sigmoid,
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
