"""Permutation specs derived from the traced graph of any ``nn.Module``.

A *permutation group* is a set of channel axes that must be permuted together for the
network to compute the same function: the output channels of a convolution, the matching
BatchNorm parameters and statistics, and the input axis of every layer that consumes them.
Git Re-Basin and ZipIt! write these tables by hand per architecture; here they come from
``torch.fx``:

* a conv or linear layer starts a new group on its output channels;
* BatchNorm, activations, pooling, dropout and other channel-wise ops carry their input's
  group through unchanged (their per-channel parameters join it);
* a residual ``add`` (or ``mul``) of two tensors unites their groups;
* ``cat`` along channels concatenates groups, so a consumer's input axis is split in slices;
* ``flatten`` expands a channel group into blocks of spatial positions;
* a depthwise convolution ties its output channels to its input channels.

Whatever cannot be proven safe (a grouped convolution, channel slicing, an unknown op, a
group that reaches the model's output) is left unpermuted and listed in ``spec.report``;
it is never silently broken.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from workbench.data import DataLike, batches, dataset_info
from workbench.device import model_device
from workbench.evaluation import eval_mode

__all__ = [
    "Axis",
    "GraphTraceError",
    "LayerPoint",
    "PermutationGroup",
    "PermutationSpec",
    "example_input_for",
    "permutation_spec",
    "resolve_spec",
]


class GraphTraceError(RuntimeError):
    """``torch.fx`` could not trace a model; the message names the op and what to do."""


class Axis(tuple):
    """A ``(state_dict key, axis)`` pair that a group permutes, with three refinements.

    ``offset``: the group covers the slice starting there (a consumer of a ``cat``).
    ``block``: each channel spans ``block`` consecutive entries (a linear layer after a
    ``flatten``: channel ``c`` owns entries ``c * block ... c * block + block - 1``).
    ``role``: how the tensor uses the channels: ``"out"`` (a layer's output rows and
    bias), ``"in"`` (a consumer's input columns) or ``"channel"`` (a per-channel
    parameter or statistic: BatchNorm, depthwise filters). Permutations treat all alike;
    a general linear map needs the role (and cannot pass a ``"channel"`` axis exactly).
    Unpacks and compares like the plain pair.
    """

    offset: int
    block: int
    role: str

    def __new__(
        cls, key: str, axis: int, offset: int = 0, block: int = 1, role: str = "channel"
    ) -> Axis:
        if role not in ("out", "in", "channel"):
            raise ValueError(f"role must be 'out', 'in' or 'channel', got {role!r}.")
        self = super().__new__(cls, (key, axis))
        self.offset = offset
        self.block = block
        self.role = role
        return self

    @property
    def key(self) -> str:
        return self[0]

    @property
    def axis(self) -> int:
        return self[1]

    def __repr__(self) -> str:
        extra = (f", offset={self.offset}" if self.offset else "") + (
            f", block={self.block}" if self.block != 1 else ""
        )
        return f"Axis({self[0]!r}, {self[1]}{extra}, role={self.role!r})"

    def __reduce__(self):
        return (Axis, (self[0], self[1], self.offset, self.block, self.role))

    def identity(self) -> tuple[str, int, int, int]:
        """Everything that tells this axis apart, including slice and block."""
        return (self[0], self[1], self.offset, self.block)


@dataclass
class PermutationGroup:
    """Channel axes permuted together: ``size`` channels, the ``axes`` they index, the
    modules that produce them (``producers``), the graph nodes whose output channels are
    exactly this group with the axis they lie on (``nodes``: node name -> axis), and the
    subset of those that are outputs of a nonlinearity (``activations``), where alignment
    observes the group."""

    name: str
    size: int
    axes: list[Axis] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    nodes: dict[str, int] = field(default_factory=dict)
    activations: dict[str, int] = field(default_factory=dict)

    def __repr__(self) -> str:
        return f"PermutationGroup({self.name!r}, size={self.size}, {len(self.axes)} axes)"


@dataclass(frozen=True)
class LayerPoint:
    """A conv or linear layer and the module whose output is its normalized result (the
    BatchNorm right after it, else the layer itself): where REPAIR corrects statistics.
    ``dim`` is the channel axis of that output; ``final`` marks layers whose channels
    reach the model's output (logits), which are never corrected."""

    layer: str
    point: str
    dim: int
    final: bool


@dataclass
class PermutationSpec:
    """Permutation groups of one architecture, derived from its graph.

    ``groups`` maps a group name (its first producing module) to the group; ``report``
    lists what was left unpermuted and why; ``state_shapes`` records the state-dict shapes
    the spec was built for, so it can check that a model fits it.
    """

    groups: dict[str, PermutationGroup]
    report: list[str]
    state_shapes: dict[str, tuple[int, ...]]
    graph_module: fx.GraphModule = field(repr=False)
    layers: list[LayerPoint] = field(default_factory=list)

    def check_model(self, model: nn.Module, role: str = "model") -> None:
        """Raise ``ValueError`` unless ``model``'s state dict has the keys and shapes of
        the model this spec was built for."""
        shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if shapes == self.state_shapes:
            return
        missing = sorted(set(self.state_shapes) - set(shapes))[:3]
        extra = sorted(set(shapes) - set(self.state_shapes))[:3]
        wrong = [
            f"{k} {shapes[k]} vs {v}"
            for k, v in self.state_shapes.items()
            if k in shapes and shapes[k] != v
        ][:3]
        raise ValueError(
            f"The spec was built for another architecture than this {role} "
            f"({type(model).__name__}): missing {missing}, unexpected {extra}, "
            f"different shapes {wrong}. Build it with permutation_spec(model, example_input)."
        )

    def summary(self) -> str:
        """One line per group (name, size, number of axes) and the report."""
        lines = [f"{len(self.groups)} permutation groups:"]
        lines += [
            f"  {g.name}: {g.size} channels, {len(g.axes)} axes" for g in self.groups.values()
        ]
        if self.report:
            lines.append("Left unpermuted:")
            lines += [f"  {line}" for line in self.report]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Tracing


_FIXED = -1  # the "group" of channels that must never move (inputs, logits, unknown ops)


@dataclass(frozen=True)
class _Segment:
    group: int
    size: int
    block: int = 1


@dataclass(frozen=True)
class _Label:
    """Which groups run along axis ``dim`` of a tensor, in order (more than one after cat)."""

    dim: int
    segments: tuple[_Segment, ...]

    @property
    def width(self) -> int:
        return sum(s.size * s.block for s in self.segments)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.frozen: dict[int, str] = {}

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        if g == _FIXED:
            return _FIXED
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, reason: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if _FIXED in (ra, rb):
            self.freeze(rb if ra == _FIXED else ra, reason)
            return _FIXED
        root, child = min(ra, rb), max(ra, rb)
        self.parent[child] = root
        if child in self.frozen:
            self.frozen.setdefault(root, self.frozen.pop(child))
        return root

    def freeze(self, g: int, reason: str) -> None:
        root = self.find(g)
        if root != _FIXED:
            self.frozen.setdefault(root, reason)


_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.PReLU,
    nn.Dropout, nn.Dropout2d, nn.Dropout1d, nn.AlphaDropout, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)  # fmt: skip

_ELEMENTWISE_FUNCTIONS = {
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.softplus, F.dropout, F.dropout1d, F.dropout2d,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.abs, torch.neg, torch.exp,
    torch.clamp, torch.square, torch.sqrt, operator.neg,
}  # fmt: skip

_ELEMENTWISE_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "abs", "neg", "exp", "clamp",
    "clamp_", "contiguous", "clone", "detach", "float", "double", "half", "to", "square",
    "sqrt",
}  # fmt: skip

_BINARY_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, operator.mul,
                     operator.imul, operator.truediv, torch.add, torch.sub, torch.mul,
                     torch.div}  # fmt: skip
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}

_NONLINEAR_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.PReLU,
)  # fmt: skip
_NONLINEAR_FUNCTIONS = {
    F.relu, F.relu_, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.softplus, torch.relu, torch.relu_, torch.sigmoid, torch.tanh,
}  # fmt: skip
_NONLINEAR_METHODS = {"relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_"}
_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)

_CHANNEL_LEAVES = (nn.modules.batchnorm._BatchNorm, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class _Tracer(fx.Tracer):
    def __init__(self, leaves: tuple[type, ...]) -> None:
        super().__init__()
        self._leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self._leaves) or super().is_leaf_module(m, qualname)


def _trace(model: nn.Module, example_input: Any, leaf_modules: tuple[type, ...]) -> fx.GraphModule:
    tracer = _Tracer(leaf_modules)
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GraphTraceError(
            f"torch.fx cannot trace {type(model).__name__}: {first}. This usually means "
            "Python control flow that depends on tensor values; pass the module class that "
            "contains it as leaf_modules=(TheModule,) so it is treated as one opaque op "
            "(its channels then stay unpermuted)."
        ) from None
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    try:
        with eval_mode(gm), torch.no_grad():  # eval: no BatchNorm statistics are touched
            ShapeProp(gm).propagate(*inputs)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(
            f"{type(model).__name__} cannot run on the example input of shape "
            f"{[tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor)]}: {first}."
        ) from None
    return gm


def _arg(node: fx.Node, index: int, name: str, default: Any) -> Any:
    """Argument ``index`` of a call, whether passed by position or as ``name=``."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


class _Builder:
    """Walks the traced graph once, labelling every tensor with its channel groups."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.params = {k for k, _ in gm.named_parameters()} | {k for k, _ in gm.named_buffers()}
        self.uf = _UnionFind()
        self.sizes: dict[int, int] = {}
        self.axes: dict[int, list[Axis]] = {}
        self.producers: dict[int, list[str]] = {}
        self.module_groups: dict[str, int] = {}
        self.labels: dict[fx.Node, _Label | None] = {}
        self.untouched: dict[str, str] = {}
        self.output_groups: list[int] = []

    # -- groups and axes ---------------------------------------------------------------
    def new_group(self, size: int, producer: str) -> int:
        if producer in self.module_groups:  # a module called twice shares its output group
            return self.module_groups[producer]
        g = self.uf.new()
        self.sizes[g], self.axes[g], self.producers[g] = size, [], [producer]
        self.module_groups[producer] = g
        return g

    def add_axes(
        self, label: _Label | None, key: str, axis: int, why: str, role: str = "channel"
    ) -> None:
        """Register ``key``'s ``axis`` as following ``label``'s groups, slice by slice."""
        if label is None:
            self.untouched.setdefault(key, why)
            return
        offset = 0
        for seg in label.segments:
            if seg.group != _FIXED:
                self.axes[seg.group].append(Axis(key, axis, offset, seg.block, role))
            offset += seg.size * seg.block

    def freeze(self, label: _Label | None, reason: str) -> None:
        if label is not None:
            for seg in label.segments:
                self.uf.freeze(seg.group, reason)

    def fixed(self, node: fx.Node, dim: int = 1) -> _Label | None:
        shape = _shape(node)
        if shape is None or len(shape) <= dim:
            return None
        return _Label(dim, (_Segment(_FIXED, shape[dim]),))

    def unite(self, a: _Label, b: _Label, reason: str) -> bool:
        """Unite two labels slice by slice; False if their slicing differs."""
        if [(s.size, s.block) for s in a.segments] != [(s.size, s.block) for s in b.segments]:
            return False
        for sa, sb in zip(a.segments, b.segments, strict=True):
            self.uf.union(sa.group, sb.group, reason)
        return True

    # -- node rules --------------------------------------------------------------------
    def label_of(self, arg: Any) -> _Label | None:
        return self.labels.get(arg) if isinstance(arg, fx.Node) else None

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
        return [n for n in found if _shape(n) is not None]

    def opaque(self, node: fx.Node, why: str) -> _Label | None:
        """An op we cannot see through: its inputs' groups and its output stay fixed."""
        for arg in self.tensor_inputs(node):
            self.freeze(self.labels.get(arg), why)
        return self.fixed(node)

    def run(self) -> None:
        for node in self.gm.graph.nodes:
            self.labels[node] = self.visit(node)

    def visit(self, node: fx.Node) -> _Label | None:
        shape = _shape(node)
        if node.op == "placeholder":
            return self.fixed(node)
        if node.op == "get_attr":
            return None
        if node.op == "output":
            for arg in self.tensor_inputs(node):
                label = self.labels.get(arg)
                if label is not None:
                    self.output_groups += [s.group for s in label.segments]
                self.freeze(label, "reaches the model's output")
            return None
        if shape is None:
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target])
        if node.op == "call_function":
            return self.visit_function(node, node.target)
        if node.op == "call_method":
            return self.visit_method(node, node.target)
        return self.opaque(node, f"unsupported node {node.op}")

    def input_label(self, node: fx.Node) -> _Label | None:
        return self.label_of(node.args[0]) if node.args else None

    def visit_module(self, node: fx.Node, module: nn.Module) -> _Label | None:
        name = str(node.target)
        inp = self.input_label(node)
        key = f"{name}." if name else ""
        if isinstance(module, _LAYERS):
            return self.visit_layer(node, module, key, inp)
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            if inp is None or inp.dim != 1:
                return self.opaque(node, f"{name}: BatchNorm on an unlabelled input")
            for p in ("weight", "bias", "running_mean", "running_var"):
                if getattr(module, p, None) is not None:
                    self.add_axes(inp, key + p, 0, name)
            return inp
        if isinstance(module, nn.GroupNorm) and inp is not None and inp.dim == 1:
            if module.num_groups in (1, module.num_channels):
                if module.affine:
                    self.add_axes(inp, key + "weight", 0, name)
                    self.add_axes(inp, key + "bias", 0, name)
                return inp
            return self.opaque(node, f"{name}: GroupNorm with {module.num_groups} groups")
        if isinstance(module, nn.PReLU) and module.num_parameters > 1:
            self.add_axes(inp, key + "weight", 0, name)
            return inp
        if isinstance(module, _ELEMENTWISE_MODULES):
            return inp
        if isinstance(module, nn.Flatten):
            return self.flatten(node, inp, module.start_dim, module.end_dim)
        for param in module.state_dict():
            self.untouched.setdefault(key + param, f"inside {type(module).__name__} {name}")
        return self.opaque(node, f"{name}: {type(module).__name__} is opaque")

    def visit_layer(
        self, node: fx.Node, module: nn.Module, key: str, inp: _Label | None
    ) -> _Label | None:
        name = key.rstrip(".")
        in_shape = _shape(node.args[0])
        is_linear = isinstance(module, nn.Linear)
        in_dim = (len(in_shape) - 1) if is_linear else 1
        if inp is not None and inp.dim != in_dim:
            inp = None
        out_shape = _shape(node)
        out_dim = len(out_shape) - 1 if is_linear else 1
        groups = 1 if is_linear else module.groups
        if groups == 1:
            if inp is None:
                self.untouched.setdefault(key + "weight", f"{name}: input channels unknown")
            else:
                self.add_axes(inp, key + "weight", 1, name, role="in")
            out_channels = module.out_features if is_linear else module.out_channels
            g = self.new_group(out_channels, name)
            self.axes[g] += [Axis(key + "weight", 0, role="out")]
            if module.bias is not None:
                self.axes[g].append(Axis(key + "bias", 0, role="out"))
            return _Label(out_dim, (_Segment(g, out_channels),))
        if inp is not None and module.in_channels == module.out_channels == groups:
            # depthwise: output channel c is a function of input channel c only
            self.add_axes(inp, key + "weight", 0, name)
            if module.bias is not None:
                self.add_axes(inp, key + "bias", 0, name)
            return _Label(out_dim, inp.segments)
        self.freeze(inp, f"{name}: grouped convolution ({groups} groups)")
        self.untouched.setdefault(key + "weight", f"{name}: grouped convolution")
        return self.fixed(node)

    def flatten(self, node: fx.Node, inp: _Label | None, start: int, end: int) -> _Label | None:
        in_shape = _shape(node.args[0])
        ndim = len(in_shape)
        start, end = start % ndim, end % ndim
        if inp is None:
            return self.fixed(node)
        if start > inp.dim or end < inp.dim:
            return _Label(inp.dim - max(0, end - start) * (inp.dim > end), inp.segments)
        if start != inp.dim:
            return self.opaque(node, "flatten that merges the channel axis with earlier axes")
        block = 1
        for size in in_shape[inp.dim + 1 : end + 1]:
            block *= size
        segments = tuple(_Segment(s.group, s.size, s.block * block) for s in inp.segments)
        return _Label(inp.dim, segments)

    def binary(self, node: fx.Node, a: Any, b: Any) -> _Label | None:
        la, lb = self.label_of(a), self.label_of(b)
        shape = _shape(node)
        a_tensor = isinstance(a, fx.Node) and _shape(a) is not None
        b_tensor = isinstance(b, fx.Node) and _shape(b) is not None
        if la is not None and lb is not None:
            if self.unite(la, lb, "residual joined with fixed channels"):
                return la
            return self.opaque(node, "elementwise op between differently sliced channels")
        labelled, other = (la, b) if la is not None else (lb, a)
        other_is_tensor = b_tensor if la is not None else a_tensor
        if labelled is None:
            return self.fixed(node) if shape is not None else None
        if not other_is_tensor:
            return labelled  # scalar operand
        other_shape = _shape(other)
        aligned = len(shape) - len(other_shape)
        channel_dim_in_other = labelled.dim - aligned
        if channel_dim_in_other < 0 or other_shape[channel_dim_in_other] == 1:
            return labelled  # broadcast along the channels
        if other.op == "get_attr" and other.target in self.params:
            self.add_axes(labelled, str(other.target), channel_dim_in_other, str(other.target))
            return labelled
        return self.opaque(node, "elementwise op with an unlabelled per-channel tensor")

    def visit_function(self, node: fx.Node, fn: Any) -> _Label | None:
        inp = self.input_label(node)
        if fn in _ELEMENTWISE_FUNCTIONS:
            return inp
        if fn in _BINARY_FUNCTIONS and len(node.args) >= 2:
            return self.binary(node, node.args[0], node.args[1])
        if fn is torch.flatten:
            return self.flatten(
                node, inp, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
            )
        if fn is torch.cat:
            tensors = node.args[0]
            return self.cat(node, list(tensors), _arg(node, 1, "dim", 0))
        if fn in (torch.mean, torch.sum, torch.amax, torch.amin):
            return self.reduce(node, inp)
        return self.opaque(node, f"unsupported function {getattr(fn, '__name__', fn)}")

    def visit_method(self, node: fx.Node, method: str) -> _Label | None:
        inp = self.input_label(node)
        if method in _ELEMENTWISE_METHODS:
            return inp
        if method in _BINARY_METHODS and len(node.args) >= 2:
            return self.binary(node, node.args[0], node.args[1])
        if method == "flatten":
            return self.flatten(
                node, inp, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
            )
        if method in ("view", "reshape"):
            return self.reshape(node, inp)
        if method in ("mean", "sum", "amax", "amin"):
            return self.reduce(node, inp)
        return self.opaque(node, f"unsupported method .{method}()")

    def reshape(self, node: fx.Node, inp: _Label | None) -> _Label | None:
        in_shape, out_shape = _shape(node.args[0]), _shape(node)
        if inp is None:
            return self.fixed(node)
        if out_shape == in_shape:
            return inp
        if (
            len(out_shape) == inp.dim + 1 and out_shape[: inp.dim] == in_shape[: inp.dim]
        ):  # flatten everything from the channel axis on
            return self.flatten(node, inp, inp.dim, -1)
        return self.opaque(node, f"reshape {in_shape} -> {out_shape}")

    def reduce(self, node: fx.Node, inp: _Label | None) -> _Label | None:
        if inp is None:
            return self.fixed(node)
        dims = _arg(node, 1, "dim", None)
        in_shape, out_shape = _shape(node.args[0]), _shape(node)
        if dims is None:
            return None  # full reduction: a scalar, invariant to any permutation
        dims = {d % len(in_shape) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
        if inp.dim in dims:
            return self.fixed(node)  # summing over channels is permutation invariant
        if any(s.block != 1 for s in inp.segments):
            return self.opaque(node, "reduction over a flattened channel block")
        kept = len(out_shape) == len(in_shape)
        new_dim = inp.dim if kept else inp.dim - sum(d < inp.dim for d in dims)
        return _Label(new_dim, inp.segments)

    def cat(self, node: fx.Node, tensors: list[Any], dim: int) -> _Label | None:
        labels = [self.label_of(t) for t in tensors]
        ndim = len(_shape(node))
        dim %= ndim
        if any(lab is None for lab in labels):
            for lab in labels:
                self.freeze(lab, "concatenated with an unlabelled tensor")
            return self.fixed(node)
        if all(lab.dim == dim for lab in labels):
            return _Label(dim, tuple(seg for lab in labels for seg in lab.segments))
        first = labels[0]
        if all(lab.dim == first.dim for lab in labels) and all(
            self.unite(first, lab, "cat along another axis") for lab in labels[1:]
        ):
            return first
        return self.opaque(node, "cat of differently labelled tensors")

    # -- result ------------------------------------------------------------------------
    def build(self, state_shapes: dict[str, tuple[int, ...]]) -> PermutationSpec:
        self.run()
        # The same axis reached through two groups (a module reused on two inputs) ties them.
        owner: dict[tuple, int] = {}
        for g in self.sizes:
            for ax in self.axes[g]:
                previous = owner.setdefault(ax.identity(), g)
                if self.uf.find(previous) != self.uf.find(g):
                    self.uf.union(previous, g, f"{ax[0]} shared by two groups")
        roots = {}
        for g in self.sizes:
            roots.setdefault(self.uf.find(g), []).append(g)
        node_groups: dict[int, dict[str, int]] = {}
        activation_groups: dict[int, dict[str, int]] = {}
        for node, label in self.labels.items():
            if label is not None and len(label.segments) == 1 and label.segments[0].block == 1:
                root = self.uf.find(label.segments[0].group)
                node_groups.setdefault(root, {})[node.name] = label.dim
                if self.is_nonlinearity(node):
                    activation_groups.setdefault(root, {})[node.name] = label.dim
        groups: dict[str, PermutationGroup] = {}
        report = []
        for root, members in roots.items():
            producers = [p for g in members for p in self.producers[g]]
            name = producers[0] or "input"
            sizes = {self.sizes[g] for g in members}
            if root == _FIXED or root in self.uf.frozen or len(sizes) != 1:
                reason = self.uf.frozen.get(root, "sizes differ") if root != _FIXED else "fixed"
                joined = f" (with {', '.join(producers[1:])})" if len(producers) > 1 else ""
                report.append(f"{name}{joined}: {reason}")
                continue
            seen: set[tuple] = set()
            axes = []
            for g in members:
                for ax in self.axes[g]:
                    if ax.identity() not in seen:
                        seen.add(ax.identity())
                        axes.append(ax)
            groups[name] = PermutationGroup(
                name,
                sizes.pop(),
                axes,
                producers,
                node_groups.get(root, {}),
                activation_groups.get(root, {}),
            )
        for key, why in sorted(self.untouched.items()):
            if key in state_shapes:
                report.append(f"{key}: not permuted ({why})")
        return PermutationSpec(groups, report, state_shapes, self.gm, self.layer_points())

    def is_nonlinearity(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.modules[node.target], _NONLINEAR_MODULES)
        if node.op == "call_function":
            return node.target in _NONLINEAR_FUNCTIONS
        return node.op == "call_method" and node.target in _NONLINEAR_METHODS

    def layer_points(self) -> list[LayerPoint]:
        final_roots = {self.uf.find(g) for g in self.output_groups}
        points = []
        for node, label in self.labels.items():
            if node.op != "call_module" or not isinstance(self.modules[node.target], _LAYERS):
                continue
            point, point_node = str(node.target), node
            users = list(node.users)
            if (
                len(users) == 1
                and users[0].op == "call_module"
                and isinstance(self.modules[users[0].target], nn.modules.batchnorm._BatchNorm)
            ):
                point, point_node = str(users[0].target), users[0]
            point_label = self.labels.get(point_node)
            final = label is None or any(
                self.uf.find(s.group) in final_roots for s in label.segments
            )
            dim = point_label.dim if point_label is not None else 1
            points.append(LayerPoint(str(node.target), point, dim, final))
        return points


def permutation_spec(
    model: nn.Module,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    leaf_modules: Iterable[type] = (),
) -> PermutationSpec:
    """Derive the permutation groups of ``model`` from its ``torch.fx`` graph.

    ``example_input`` (a batch, e.g. ``torch.zeros(2, 3, 32, 32)``) fixes the shapes, which
    decide how ``flatten`` expands channels. ``leaf_modules`` lists module classes to treat
    as opaque (for code that fx cannot trace). The model runs once, in eval mode, on
    ``example_input`` (on the model's device); it is not modified.
    """
    leaves = _CHANNEL_LEAVES + tuple(leaf_modules)
    gm = _trace(model, example_input, leaves)
    state_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return _Builder(gm).build(state_shapes)


def example_input_for(model: nn.Module, data: DataLike | None = None) -> torch.Tensor:
    """A batch of two inputs for tracing ``model``: from ``data`` when given, else zeros of
    the size the model was trained on (its checkpoint metadata), 32x32 by default."""
    device = model_device(model)
    if data is not None:
        inputs, _ = next(iter(batches(data, batch_size=2, max_batches=1)))
        return inputs[:2].to(device)
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if first is None:
        raise ValueError(f"Cannot guess an input for {type(model).__name__}: pass example_input=.")
    if isinstance(first, nn.Linear):
        return torch.zeros(2, first.in_features, device=device)
    size = 32
    dataset = getattr(model, "workbench_metadata", {}).get("dataset")
    if dataset:
        size = dataset_info(dataset).image_size
    return torch.zeros(2, first.in_channels, size, size, device=device)


def resolve_spec(
    model: nn.Module,
    spec: PermutationSpec | None,
    example_input: torch.Tensor | None = None,
    data: DataLike | None = None,
) -> PermutationSpec:
    """``spec`` if given (checked against ``model``), else the spec derived from ``model``."""
    if spec is not None:
        spec.check_model(model)
        return spec
    if example_input is None:
        example_input = example_input_for(model, data)
    return permutation_spec(model, example_input)
