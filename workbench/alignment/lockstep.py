"""Several models of one architecture run side by side, node by node, in one graph.

The statistics pass needs every model's activation at an observation point at the same
time (their cross-products), but keeping each model's observed activations until its
forward pass ends holds every observed feature map of the network at once: at 224 px
that is several times the memory of the forward pass itself. :func:`lockstep` instead
interleaves the models' traced graphs (node k of every model, then node k + 1) and
calls a recorder the moment every model has computed an observed node. ``torch.fx``
frees each intermediate after its last use, so the pass holds, at any time, only what
each model's own forward pass holds at that depth, and stops after the last observed node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import fx, nn

from workbench.graph import PermutationSpec
from workbench.graph.trace import trace_module

__all__ = ["lockstep"]

Recorder = Callable[[str, list[torch.Tensor]], None]


class _Record(nn.Module):
    """The graph's call into the recorder: ``record(node, *outputs)``."""

    def __init__(self, record: Recorder) -> None:
        super().__init__()
        self.record = record

    def forward(self, node: str, *outputs: torch.Tensor) -> None:
        self.record(node, list(outputs))


def _node_names(traced: fx.GraphModule) -> list[tuple[str, str]]:
    return [(n.name, n.op) for n in traced.graph.nodes]


def _retarget(node: fx.Node, prefix: str) -> None:
    if node.op in ("get_attr", "call_module"):
        node.target = f"{prefix}.{node.target}"


def lockstep(
    models: Sequence[nn.Module],
    specs: Sequence[PermutationSpec],
    nodes: Sequence[str],
    record: Recorder,
) -> fx.GraphModule:
    """A module that runs ``models`` (each traced as its spec was) side by side on one
    input and calls ``record(node, [output of model 0, output of model 1, ...])`` for each
    of ``nodes`` as soon as every model has computed it. Its forward returns nothing of
    use; the models' outputs past the last observed node are never computed.

    The models must share one traced graph (one architecture; widths may differ).
    """
    traced = [trace_module(m, s.leaf_modules) for m, s in zip(models, specs, strict=True)]
    layout = _node_names(traced[0])
    for index, other in enumerate(traced[1:], start=1):
        if _node_names(other) != layout:
            raise ValueError(
                f"Model {index} ({type(models[index]).__name__}) traces to another graph "
                f"than model 0 ({type(models[0]).__name__}); joint statistics need models "
                "of one architecture. Pass models built by the same constructor."
            )
    names = {name for name, _ in layout}
    missing = [n for n in nodes if n not in names]
    if missing:
        raise ValueError(
            f"{type(models[0]).__name__}'s traced graph has no nodes {missing[:3]}: the spec "
            "was built from another model class. Build it from this model with "
            "permutation_spec."
        )
    root = nn.Module()
    for index, module in enumerate(traced):
        root.add_module(f"m{index}", module)
    root.add_module("record", _Record(record))
    graph, observed, recorded = fx.Graph(), set(nodes), []
    envs: list[dict[fx.Node, fx.Node]] = [{} for _ in traced]
    inputs: list[fx.Node] = []
    by_name = [{n.name: n for n in t.graph.nodes} for t in traced]
    for name, op in layout:
        if op == "output":
            continue
        for index, env in enumerate(envs):
            original = by_name[index][name]
            if op == "placeholder" and index > 0:  # every model reads the same input
                env[original] = inputs[len(env)]
                continue
            copy = graph.node_copy(original, lambda n, env=env: env[n])
            _retarget(copy, f"m{index}")
            env[original] = copy
            if op == "placeholder":
                inputs.append(copy)
        if name in observed:
            outputs = tuple(env[by_name[i][name]] for i, env in enumerate(envs))
            recorded.append(graph.call_module("record", (name, *outputs)))
    graph.output(tuple(recorded))
    runner = fx.GraphModule(root, graph, "Lockstep")
    runner.graph.eliminate_dead_code()  # stop at the last observed node
    runner.recompile()
    return runner
