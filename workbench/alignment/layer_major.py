"""In-order calibration in one pass: the traced model runs over all of the data one node
at a time (layer-major), instead of once over the data per calibrated layer.

:func:`~workbench.alignment.calibration.calibrate_in_order` needs each layer's moments
over all of the data with every earlier layer already corrected. Run batch by batch, the
model must pass over the data once per layer (stopped there): a ResNet-50 with 53
BatchNorm layers costs about 27 forward passes per corrected model. Here every batch's
activations at the graph's live nodes are held at once, so a layer is measured over all
of the data, corrected, and the pass goes on from there: the work of one forward pass
(plus a second run of a layer corrected by its outputs), the same numbers (the same
operations on the same batches, in the same order). It needs the model to trace with
``torch.fx`` and every live activation of all the data to fit the memory budget
(:func:`~workbench.batching.memory_budget`); otherwise the caller passes over the data
once per layer, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import fx, nn

from workbench.alignment.moments import ChannelMoments
from workbench.batching import memory_budget
from workbench.graph import GraphTraceError
from workbench.graph.trace import trace_module
from workbench.modules import model_device

__all__ = ["calibrate_layer_major"]


def _last_uses(graph: fx.Graph) -> dict[fx.Node, list[fx.Node]]:
    """For each node, the nodes whose values are no longer needed after it runs."""
    seen: set[fx.Node] = set()
    freed: dict[fx.Node, list[fx.Node]] = {}
    for node in reversed(graph.nodes):
        for used in node.all_input_nodes:
            if used not in seen:
                seen.add(used)
                freed.setdefault(node, []).append(used)
    return freed


def _bytes(value: object) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


class _Pass:
    """One interpreter per batch over a traced model, advanced node by node together."""

    def __init__(self, traced: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> None:
        self.nodes = list(traced.graph.nodes)
        self.freed = _last_uses(traced.graph)
        self.runs = [fx.Interpreter(traced) for _ in inputs]
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        for run, batch in zip(self.runs, inputs, strict=True):
            run.env[placeholders[0]] = batch

    def step(self, node: fx.Node) -> None:
        for run in self.runs:
            run.env[node] = run.run_node(node)

    def values(self, node: fx.Node) -> list:
        return [run.env[node] for run in self.runs]

    def free(self, node: fx.Node) -> None:
        for used in self.freed.get(node, []):
            for run in self.runs:
                run.env.pop(used, None)

    def live_bytes(self) -> int:
        return sum(_bytes(v) for run in self.runs for v in run.env.values())


def _peak_bytes(traced: fx.GraphModule, batch: torch.Tensor) -> int:
    """The most bytes of activations one batch holds at once, run node by node."""
    run, peak = _Pass(traced, [batch]), 0
    for node in run.nodes:
        if node.op in ("placeholder", "output"):
            continue
        run.step(node)
        peak = max(peak, run.live_bytes())
        run.free(node)
    return peak


def _within_budget(
    traced: fx.GraphModule, batches: Iterable[torch.Tensor], budget: int
) -> list[torch.Tensor] | None:
    """All of the batches, or None as soon as their activations, at the first batch's
    most per example, would not fit ``budget`` bytes."""
    held: list[torch.Tensor] = []
    per_example, examples = 0.0, 0
    for batch in batches:
        if not held:
            with torch.inference_mode():
                per_example = _peak_bytes(traced, batch) / max(len(batch), 1)
        held.append(batch)
        examples += len(batch)
        if per_example * examples > budget:
            return None
    return held or None


def calibrate_layer_major(
    model: nn.Module,
    layers: Mapping[str, int],
    order: Sequence[str],
    batches: Iterable[torch.Tensor],
    calibrate: Callable[[str, ChannelMoments], None],
    *,
    of: str,
) -> bool:
    """Measure and correct ``layers`` (name -> channel axis) in ``order`` in one
    layer-major pass over ``batches`` (inputs on the model's device), as
    :func:`~workbench.alignment.calibration.calibrate_in_order` does one pass per layer.
    Returns False, having changed nothing, where that cannot be done here: the model does
    not trace, has more than one input, or does not run each layer once as one module
    call, in ``order``; or the data's activations do not fit the memory budget. The
    model is in eval mode and its order has been found by the caller."""
    try:
        traced = trace_module(model)
    except GraphTraceError:
        return False
    graph = list(traced.graph.nodes)
    calls = [n for n in graph if n.op == "call_module" and n.target in layers]
    if (
        sum(n.op == "placeholder" for n in graph) != 1
        or [n.target for n in calls] != list(order)
        or not all(n.args and isinstance(n.args[0], fx.Node) for n in calls)
    ):
        return False
    held = _within_budget(traced, batches, memory_budget(model_device(model)))
    if held is None:
        return False
    run = _Pass(traced, held)
    for node in run.nodes:
        if node.op in ("placeholder", "output"):
            continue
        name = node.target if node in calls else None
        if name is not None and of == "input":
            _measure(name, layers[name], run.values(node.args[0]), calibrate)
        with torch.inference_mode():
            run.step(node)
        if name is not None and of == "output":
            _measure(name, layers[name], run.values(node), calibrate)
            with torch.inference_mode():
                run.step(node)  # again, with the corrected layer
        run.free(node)
    return True


def _measure(
    name: str,
    dim: int,
    tensors: Sequence[torch.Tensor],
    calibrate: Callable[[str, ChannelMoments], None],
) -> None:
    moments = ChannelMoments(dim)
    with torch.inference_mode():
        for tensor in tensors:
            moments.add(tensor)
    with torch.no_grad():
        calibrate(name, moments)
