"""Rules for products written as functions: ``F.conv2d`` with a filter the model holds,
and matrix products (``@``, ``torch.matmul``, ``torch.bmm``).

Modules (``nn.Conv2d``, ``nn.Linear``) are :func:`workbench.graph.rules.layer`'s. These
are the same operations called on tensors in a module's ``forward``: an anti-aliasing
blur (timm's ``BlurPool2d``: one fixed filter for every channel, ``groups=channels``) and
the context pooling of global-context attention (timm's ``GlobalContext``: the channels
times a softmax over the positions).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx

from workbench.graph.labels import GraphLabels, Label
from workbench.graph.trace import call_argument, shape_of

__all__ = ["conv_call", "matmul"]

# Ops a filter may pass through between the model's tensor and the convolution while
# every channel keeps its own filter: views, casts and repeats of whole channels.
_FILTER_METHODS = frozenset(
    ("expand", "expand_as", "repeat", "view", "reshape", "to", "float", "double", "half",
     "contiguous", "type_as")
)  # fmt: skip


def _held_tensor(b: GraphLabels, arg: Any) -> tuple[str, torch.Tensor, bool] | None:
    """``(key, tensor, direct)`` when ``arg`` is a parameter or buffer of the model
    (``direct``) or one passed through :data:`_FILTER_METHODS` only; else None."""
    direct = True
    while isinstance(arg, fx.Node) and arg.op == "call_method" and arg.target in _FILTER_METHODS:
        arg, direct = arg.args[0], False
    if not isinstance(arg, fx.Node) or arg.op != "get_attr" or arg.target not in b.params:
        return None
    owner, _, leaf = str(arg.target).rpartition(".")
    tensor = getattr(b.gm.get_submodule(owner), leaf)
    return str(arg.target), tensor, direct


def conv_call(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``F.conv1d/2d/3d(x, weight, bias, ..., groups)``, depthwise (``groups`` equal to
    the channels, one input channel per filter), with a filter the model holds: output
    channel ``c`` is input channel ``c`` filtered by filter ``c``. A buffer that gives
    every channel the same filter (a fixed blur) makes it channelwise; a filter in the
    state dict, taken as it is, follows the input's groups. Any other functional
    convolution mixes channels by a filter the rules cannot follow: opaque."""
    inp = b.input_label(node)
    weight = call_argument(node, 1, "weight", None)
    bias = call_argument(node, 2, "bias", None)
    shape, x_shape = shape_of(weight), shape_of(node.args[0])
    held = _held_tensor(b, weight)
    # one input channel per filter and a filter per input channel: groups = channels
    # (read from the shapes, as ``groups`` may be computed from the input's shape)
    depthwise = (
        shape is not None and x_shape is not None and shape[1] == 1 and shape[0] == x_shape[1]
    )
    if held is None or not depthwise or (inp is not None and inp.dim != 1):
        return b.opaque(node, "convolution by a filter the model computes")
    if inp is None:
        return None  # the input has no channels that move
    key, tensor, direct = held
    if tensor.dim() != len(shape) or tensor.shape[0] not in (1, shape[0]):
        return b.opaque(node, "depthwise convolution by a filter the model reshapes")
    saved = b.gm.state_dict()
    # one filter for every channel: broadcast from one, or a fixed buffer with equal rows
    # (a parameter or a saved buffer may hold other values after training or loading)
    fixed = key not in saved and bool((tensor == tensor[:1]).all())
    if bias is None and (tensor.shape[0] == 1 or fixed):
        return inp
    bias_held = None if bias is None else _held_tensor(b, bias)
    followed = direct and key in saved
    if bias is not None:
        followed = followed and bias_held is not None and bias_held[2] and bias_held[0] in saved
    if not followed:
        return b.opaque(node, "depthwise convolution by a filter the state dict does not hold")
    for name in (key, *([bias_held[0]] if bias_held else [])):
        b.add_axes(inp, name, 0, name)
    return inp


def matmul(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``x @ y`` of tensors of at least two axes. Channels along the rows of ``x`` become
    the rows of the product (each row is its own row of ``x`` times ``y``), channels along
    the columns of ``y`` its columns; channels along the axis the product sums over must be
    permuted alike in both operands, and the product then does not move. A label of a
    single channel permutes nothing and is ignored. Channels on a batch axis, or in both
    operands otherwise, are opaque."""
    x, y = node.args[:2]
    xs, ys, out = shape_of(x), shape_of(y), shape_of(node)
    if xs is None or ys is None or out is None or len(xs) < 2 or len(ys) < 2:
        return b.opaque(node, "matrix product with a vector")
    xl, yl = (
        None if label is None or label.width == 1 else label
        for label in (b.label_of(x), b.label_of(y))
    )
    if yl is None and xl is not None and xl.dim == len(xs) - 2:
        return Label(len(out) - 2, xl.segments)
    if xl is None and yl is not None and yl.dim == len(ys) - 1:
        return Label(len(out) - 1, yl.segments)
    contracted = (
        xl is not None and yl is not None and (xl.dim, yl.dim) == (len(xs) - 1, len(ys) - 2)
    )
    if contracted and b.unite(xl, yl, "matrix product over differently sliced channels"):
        return None
    if xl is None and yl is None:
        return None
    return b.opaque(node, "matrix product that mixes the channels' axis")
