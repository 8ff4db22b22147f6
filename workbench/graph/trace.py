"""Tracing a model with ``torch.fx``: convs, linears and BatchNorm stay single nodes (their
parameters are what a spec permutes), and shapes are propagated on an example input so
that the rules know every tensor's shape.

Classes named in ``leaf_modules`` are traced as opaque ops, the way out for code that fx
cannot follow. They are recorded in the spec by qualified name, so that
:func:`trace_module` rebuilds the same graph (same node names) from a model and a spec.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from workbench.graph.spec import GraphTraceError
from workbench.modules import eval_mode

__all__ = [
    "CHANNEL_LEAVES",
    "call_argument",
    "leaf_names",
    "qualified_name",
    "shape_of",
    "trace_module",
    "traced_with_shapes",
]

# Traced as single nodes, subclasses too: a weight-standardized convolution (timm's
# StdConv2d) is a conv whose parameters the conv rule permutes, a GroupNorm subclass
# (timm's GroupNorm1) a GroupNorm; verification checks that the subclass agrees.
CHANNEL_LEAVES = (
    nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear
)  # fmt: skip


def qualified_name(cls: type) -> str:
    """``module.Class`` of a class: how a spec records its leaf modules."""
    return f"{cls.__module__}.{cls.__qualname__}"


class _Tracer(fx.Tracer):
    def __init__(self, leaves: tuple[str, ...]) -> None:
        super().__init__()
        self._leaves = frozenset(leaves)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (
            isinstance(m, CHANNEL_LEAVES)
            or qualified_name(type(m)) in self._leaves
            or super().is_leaf_module(m, qualname)
        )


def leaf_names(leaf_modules: Iterable[type | str]) -> tuple[str, ...]:
    """Qualified names of the classes (or names) given as ``leaf_modules``."""
    names = []
    for leaf in leaf_modules:
        if isinstance(leaf, str):
            names.append(leaf)
        elif isinstance(leaf, type) and issubclass(leaf, nn.Module):
            names.append(qualified_name(leaf))
        else:
            raise TypeError(
                f"leaf_modules must hold nn.Module subclasses, got {leaf!r}; pass the class "
                "itself, e.g. leaf_modules=(MyBlock,)."
            )
    return tuple(sorted(set(names)))


def trace_module(model: nn.Module, leaf_modules: Iterable[type | str] = ()) -> fx.GraphModule:
    """``model`` traced by ``torch.fx`` (sharing its submodules and parameters)."""
    tracer = _Tracer(leaf_names(leaf_modules))
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
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


def traced_with_shapes(
    model: nn.Module, example_input: Any, leaf_modules: Iterable[type | str] = ()
) -> fx.GraphModule:
    """:func:`trace_module`, then every node's output shape recorded by one eval-mode
    forward pass on ``example_input`` (no BatchNorm statistics are touched). The model
    itself runs on the input first, so that an input that does not fit it is one clear
    error naming the model's own complaint, before anything is traced."""
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        found = [type(t).__name__ for t in inputs]
        raise TypeError(
            f"example_input must be a tensor (a batch, e.g. torch.zeros(2, 3, 32, 32)) or a "
            f"tuple of tensors, got {found if isinstance(example_input, tuple) else found[0]}."
        )
    with _input_errors(model, inputs), eval_mode(model), torch.no_grad():
        model(*inputs)
    gm = trace_module(model, leaf_modules)
    with _input_errors(model, inputs), eval_mode(gm), torch.no_grad():
        ShapeProp(gm).propagate(*inputs)
    return gm


@contextlib.contextmanager
def _input_errors(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Iterator[None]:
    """Turn any failure of running ``model`` on ``inputs`` into one ``ValueError`` that
    names the input's shape and the innermost cause's first line."""
    try:
        yield
    except Exception as exc:
        root = exc
        while root.__cause__ is not None:
            root = root.__cause__
        first = str(root).splitlines()[0] if str(root) else type(root).__name__
        shapes = [tuple(t.shape) for t in inputs]
        raise ValueError(
            f"{type(model).__name__} cannot run on the example input of shape "
            f"{shapes[0] if len(shapes) == 1 else shapes}: {first}. Pass a batch the model "
            "accepts (its input channels and image size)."
        ) from None


def call_argument(node: fx.Node, index: int, name: str, default: Any) -> Any:
    """Argument ``index`` of a call, whether passed by position or as ``name=``."""
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def shape_of(node: Any) -> tuple[int, ...] | None:
    """The output shape that shape propagation recorded for ``node`` (None: not a tensor)."""
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None
