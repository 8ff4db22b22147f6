"""Partial zipping (ZipIt!, Stoica et al., ICLR 2024, section 4.3): the layers up to a
group are one shared, merged trunk, and every model keeps its own later layers, whose
first consumers read the merged features through the model's unmerge matrix ``U_i``.
The result averages the N heads' outputs (logits).

Built on the model's ``torch.fx`` graph, traced as its spec was, for any architecture:
a node belongs to the *heads* when it uses a tensor with an axis in a group that is not
zipped (a layer after the stop), or reads the output of a head node; every other node is
the *trunk*. The trunk's nodes run once, on the merged model's modules; each head node is
copied N times, on model i's transformed modules (``heads.<i>.<name>``), and reads the
trunk's outputs where it reads trunk nodes. One forward pass therefore costs the trunk
once plus N heads, and every module runs once (so RESET, :func:`~workbench.reset_bn`,
measures every BatchNorm, shared or not, on its own inputs).

A stop is valid when every zipped group's activations come from the trunk alone: in a
network with a residual stream, a zipped stream that a head block writes to cannot be
shared. :func:`valid_stops` lists the valid ones.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

from torch import fx, nn
from torch.fx.node import map_arg

from workbench.graph import PermutationSpec
from workbench.graph.trace import trace_module

__all__ = ["ZippedModel", "head_nodes", "split_models", "valid_stops"]


class ZippedModel(nn.Module):
    """A partially zipped model: ``net`` (a ``torch.fx`` module) runs the shared trunk
    once and every model's head, and averages their outputs. A plain module around it, so
    that attributes set on it (the ZipIt! report) survive ``copy.deepcopy`` (RESET)."""

    def __init__(self, net: fx.GraphModule) -> None:
        super().__init__()
        self.net = net

    def forward(self, *args, **kwargs):
        return self.net(*args, **kwargs)


def head_nodes(traced: fx.GraphModule, spec: PermutationSpec, zipped: Sequence[str]) -> set[str]:
    """The names of the nodes of ``traced`` (the model traced as ``spec`` was) that belong
    to the models' own heads when the groups ``zipped`` are merged (module docstring)."""
    zipped = set(zipped)
    kept = {ax.key for name in spec.groups if name not in zipped for ax in spec.groups[name].axes}
    modules = dict(traced.named_modules())
    head: set[str] = set()
    for node in traced.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if any(n.name in head for n in node.all_input_nodes):
            head.add(node.name)
        elif node.op == "call_module":
            keys = modules[node.target].state_dict(prefix=f"{node.target}.")
            if any(key in kept for key in keys):
                head.add(node.name)
        elif node.op == "get_attr" and node.target in kept:
            head.add(node.name)
    return head


def _closed(spec: PermutationSpec, zipped: Sequence[str], head: set[str]) -> bool:
    return not any(node in head for name in zipped for node in spec.groups[name].nodes)


def valid_stops(model: nn.Module, spec: PermutationSpec) -> list[str]:
    """The groups at which zipping can stop: every zipped group produced by the trunk."""
    traced, names = trace_module(model, spec.leaf_modules), list(spec.groups)
    return [
        stop
        for k, stop in enumerate(names)
        if _closed(spec, names[: k + 1], head_nodes(traced, spec, names[: k + 1]))
    ]


def check_stop(model: nn.Module, spec: PermutationSpec, zipped: Sequence[str]) -> None:
    """``ValueError`` unless zipping the groups ``zipped`` leaves a shareable trunk."""
    traced = trace_module(model, spec.leaf_modules)
    if not _closed(spec, zipped, head_nodes(traced, spec, zipped)):
        raise ValueError(
            f"stop={zipped[-1]!r} cannot be a partial zip of {type(model).__name__}: a layer "
            "after it writes to a zipped group (a residual stream), which the models' own "
            f"layers cannot share. Stop at one of {valid_stops(model, spec)}, or stop=None."
        )


def split_models(
    merged: nn.Module, heads: Sequence[nn.Module], spec: PermutationSpec, zipped: Sequence[str]
) -> nn.Module:
    """One module that runs the trunk of ``merged`` (the groups ``zipped`` merged) once and
    the heads of every model in ``heads`` (transformed: their first consumers read the
    merged features), and returns the mean of the heads' outputs; ``merged`` itself when
    nothing is left to the heads. The modules are used, not copied."""
    check_stop(merged, spec, zipped)
    traced = trace_module(merged, spec.leaf_modules)
    head = head_nodes(traced, spec, zipped)
    if not head:
        return merged
    children = dict(merged.named_children())
    name = "heads"
    while name in children or hasattr(merged, name):
        name += "_"
    root = nn.Module()
    for child, module in children.items():
        root.add_module(child, module)
    for key, tensor in merged.named_parameters(recurse=False):
        root.register_parameter(key, tensor)
    for key, tensor in merged.named_buffers(recurse=False):
        root.register_buffer(key, tensor)
    root.add_module(name, nn.ModuleList(heads))
    graph = fx.Graph()
    shared: dict[fx.Node, fx.Node] = {}
    own: list[dict[fx.Node, fx.Node]] = [{} for _ in heads]
    for node in traced.graph.nodes:
        if node.op == "output":
            graph.output(map_arg(node.args[0], lambda n: _mean(graph, n, head, shared, own)))
        elif node.name not in head:
            shared[node] = graph.node_copy(node, lambda n: shared[n])
        else:
            for i, env in enumerate(own):
                new = graph.node_copy(
                    node, lambda n, env=env: env[n] if n.name in head else shared[n]
                )
                if node.op in ("call_module", "get_attr"):
                    new.target = f"{name}.{i}.{node.target}"
                env[node] = new
    return ZippedModel(fx.GraphModule(root, graph, f"Zipped{type(merged).__name__}"))


def _mean(graph: fx.Graph, node: fx.Node, head: set[str], shared: dict, own: list) -> fx.Node:
    """The trunk's node, or the mean of the heads' copies of a head node."""
    if node.name not in head:
        return shared[node]
    total = own[0][node]
    for env in own[1:]:
        total = graph.call_function(operator.add, (total, env[node]))
    return graph.call_function(operator.truediv, (total, len(own)))
