"""Where a layer's units are observed: the layer's own output, after its normalization, or
after its nonlinearity. Every feature-visualization measure of one study (renders,
exemplars, correlations, statistics) reads its units at one such point, so that the
pictures and the numbers describe the same thing.

The three points of a conv or linear layer ``L``:

* ``"output"``: what ``L`` itself returns (before BatchNorm: a BatchNorm reset leaves it
  unchanged, so "merged" and "merged + RESET" look the same there);
* ``"norm"``: after the BatchNorm that directly follows ``L`` (``L``'s output where none
  does, e.g. a classifier's linear layer);
* ``"relu"``: after the elementwise nonlinearity that follows (ReLU, GELU, ...: any
  activation module or function), where alignment measures its correlations.

They are found on the ``torch.fx`` graph: from ``L``'s node, along a chain of single
users, the first BatchNorm and the first nonlinearity before anything that mixes
channels or positions (pooling is allowed before the nonlinearity: max-pooling commutes
with a ReLU). A nonlinearity called as a function (``F.relu``) has no module to hook: the
point is then the module before it, with the function applied to its output.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn

from workbench.graph.rules import is_nonlinearity
from workbench.graph.trace import trace_module
from workbench.vocabulary import keyword_only

__all__ = [
    "POINTS",
    "ObservationPoint",
    "describe_point",
    "observable_layers",
    "observation_point",
    "observing",
    "resolve_layer",
    "run_to",
]

POINTS = ("output", "norm", "relu")
"""The observation points, from the layer's output to after its nonlinearity."""

_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_PASS_THROUGH = (nn.Dropout, nn.Identity, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


@keyword_only(("layer",))
def resolve_layer(
    model: nn.Module,
    *,
    layer: str,
) -> nn.Module:
    """The conv or linear module named ``layer`` (as in ``named_modules()``), or a
    ``ValueError`` that lists the nearest valid names."""
    modules = dict(model.named_modules())
    valid = [name for name, m in modules.items() if isinstance(m, _LAYER_TYPES)]
    if layer not in modules:
        near = difflib.get_close_matches(layer, valid, n=5, cutoff=0.3) or valid[:5]
        raise ValueError(
            f"{type(model).__name__} has no layer {layer!r}. Nearest conv/linear layers: "
            f"{near}. All names: model.named_modules()."
        )
    if not isinstance(modules[layer], _LAYER_TYPES):
        raise ValueError(
            f"Layer {layer!r} is a {type(modules[layer]).__name__}; feature visualization "
            f"works on conv and linear layers, e.g. {valid[:5]}."
        )
    return modules[layer]


@dataclass(frozen=True)
class ObservationPoint:
    """Layer ``layer`` observed at ``point`` (one of :data:`POINTS`): the output of the
    module named ``module``, passed through ``function`` where the nonlinearity is a
    function call rather than a module (else ``None``). ``relu_input``: at a ReLU, the
    module whose output it takes (rendering routes its gradient past the ReLU's zero
    region from there)."""

    layer: str
    point: str
    module: str
    function: Callable[[torch.Tensor], torch.Tensor] | None = None
    relu_input: str | None = None

    def label(self) -> str:
        """How figures name the point: ``"features.conv1 after nonlinearity"``."""
        return f"{self.layer} {describe_point(self.point)}"


def describe_point(point: str) -> str:
    """How figures say where units are observed: ``"after nonlinearity"``."""
    words = {"output": "at the layer output", "norm": "after normalization"}
    return words.get(check_point(point), "after nonlinearity")


def check_point(point: str) -> str:
    if point not in POINTS:
        close = difflib.get_close_matches(str(point), POINTS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"point must be one of {list(POINTS)} (the layer's output, after its "
            f"normalization, after its nonlinearity), got {point!r}.{hint}"
        )
    return point


def _chain(model: nn.Module, layer: str) -> tuple[list[fx.Node], dict[str, nn.Module], int]:
    """The nodes after ``layer``'s, along single users, up to its nonlinearity, and how
    often the graph calls the last one's module."""
    graph = trace_module(model).graph
    modules = dict(model.named_modules())
    node = next(n for n in graph.nodes if n.op == "call_module" and n.target == layer)
    chain = [node]
    while len(node.users) == 1:
        node = next(iter(node.users))
        if node.op == "call_module" and isinstance(
            modules[node.target], (nn.modules.batchnorm._BatchNorm, *_PASS_THROUGH)
        ):
            chain.append(node)
        elif is_nonlinearity(node, modules):
            chain.append(node)
            break
        else:
            break
    calls = sum(n.op == "call_module" and n.target == node.target for n in graph.nodes)
    return chain, modules, calls


def _module_before(chain: list[fx.Node]) -> str:
    return next(n.target for n in reversed(chain[:-1]) if n.op == "call_module")


def observation_point(
    model: nn.Module,
    *,
    layer: str,
    point: str = "output",
) -> ObservationPoint:
    """Where ``layer`` of ``model`` is observed at ``point`` (see the module docstring);
    a ``ValueError`` when the layer has no such point (no nonlinearity directly after it,
    e.g. a residual branch joined before its ReLU: observe it at ``"norm"``)."""
    resolve_layer(model, layer=layer)
    check_point(point)
    if point == "output":
        return ObservationPoint(layer, point, layer)
    chain, modules, calls = _chain(model, layer)
    norms = [n for n in chain if isinstance(modules.get(n.target), nn.modules.batchnorm._BatchNorm)]
    if point == "norm":
        return ObservationPoint(layer, point, norms[0].target if norms else layer)
    last = chain[-1]
    if len(chain) == 1 or not is_nonlinearity(last, modules):
        raise ValueError(
            f"No nonlinearity directly follows {layer!r} in {type(model).__name__} (after it "
            f"comes {', '.join(n.name for n in last.users) or 'nothing'}), so point='relu' "
            "is not defined there; observe it at point='norm' or 'output'."
        )
    before = _module_before(chain)
    relu = before if _is_relu(last, modules) else None
    if last.op == "call_module":
        if calls == 1:
            return ObservationPoint(layer, point, last.target, relu_input=relu)
        # a module called in several places (a ResNet block's one ReLU): a hook on it would
        # see every call, so the module before it is hooked and the nonlinearity applied
        return ObservationPoint(layer, point, before, modules[last.target], relu)
    if last.op == "call_method":
        function = getattr(torch.Tensor, str(last.target).rstrip("_"))
    else:
        function = last.target
    kwargs = {k: v for k, v in last.kwargs.items() if k != "inplace"}
    return ObservationPoint(
        layer, point, before, lambda x: function(x, *last.args[1:], **kwargs), relu
    )


def observable_layers(model: nn.Module, *, layers: Sequence[str], point: str) -> list[str]:
    """Those of ``layers`` that ``model`` can be observed at ``point`` in (``"relu"``: a
    nonlinearity follows the layer), in their order."""
    found = []
    for name in layers:
        try:
            observation_point(model, layer=name, point=point)
        except ValueError:
            continue
        found.append(name)
    return found


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op == "call_function":
        return node.target in (torch.relu, torch.nn.functional.relu)
    return node.target in ("relu", "relu_")


@contextlib.contextmanager
def observing(
    model: nn.Module,
    where: ObservationPoint,
    record: Callable[[torch.Tensor], object],
    *,
    copy: bool = True,
) -> Iterator[None]:
    """Inside the block, ``record`` gets the tensor observed at ``where`` on every forward
    pass of ``model``; the hook is removed on leaving. ``copy``: hand over a copy (a
    nonlinearity working in place could change the tensor after the hook; a ``record``
    that reduces it at once needs none)."""
    module = dict(model.named_modules())[where.module]

    def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        if where.function is not None:
            record(where.function(output))
        else:
            record(output.clone() if copy else output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _Reached(Exception):
    """Raised by :func:`run_to`'s hook once the point's tensor is captured."""


def run_to(model: nn.Module, where: ObservationPoint, inputs: torch.Tensor) -> torch.Tensor:
    """The tensor observed at ``where`` for ``inputs``. The forward pass stops there: the
    layers after the point cannot change it, so their cost (and, when optimizing an image,
    their backward pass) is saved. The model's mode is the caller's."""
    found: list[torch.Tensor] = []

    def record(out: torch.Tensor) -> None:
        found.append(out)
        raise _Reached

    with observing(model, where, record, copy=False):
        try:
            model(inputs)
        except _Reached:
            return found[0]
    raise ValueError(
        f"A forward pass of {type(model).__name__} never reached {where.module!r}: the "
        f"point of layer {where.layer!r} is not on its path."
    )
