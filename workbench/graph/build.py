"""Building a spec: walk the traced graph once, label every tensor with its channel groups
by the rules of :mod:`workbench.graph.rules`, divide the groups that were sliced
(:mod:`workbench.graph.slicing`), then collect the groups that may move."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import fx, nn

from workbench.batching import batches
from workbench.checkpoints import recorded_dataset_info
from workbench.data import DataLike
from workbench.graph.labels import FIXED, GraphLabels, Label
from workbench.graph.rules import (
    FUNCTION_RULES,
    LAYERS,
    METHOD_RULES,
    MODULE_RULES,
    TUPLE_RULES,
    is_nonlinearity,
    parameter_view,
)
from workbench.graph.slicing import divide_slices
from workbench.graph.spec import LayerPoint, PermutationGroup, PermutationSpec
from workbench.graph.trace import leaf_names, shape_of, traced_with_shapes
from workbench.graph.verify import DEFAULT_RTOL, verify_spec
from workbench.modules import model_device
from workbench.vocabulary import keyword_only

__all__ = ["Builder", "example_input_for", "permutation_spec", "resolve_spec"]


_SIZE_QUERIES = frozenset(("size", "dim", "numel", "type", "get_device"))


def _op_name(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    return getattr(node.target, "__name__", str(node.target))


def _result_kind(node: fx.Node) -> str:
    meta = node.meta.get("tensor_meta")
    return "tuple of tensors" if isinstance(meta, (tuple, list)) else "non-tensor value"


class Builder(GraphLabels):
    """Walks the traced graph once, labelling every tensor by the rules, then collects the
    groups that may move into a spec."""

    # -- the walk ------------------------------------------------------------------------
    def visit(self, node: fx.Node) -> Label | None:
        if node.op == "placeholder":
            return self.fixed(node)
        if parameter_view(self, node):
            return None
        if node.op == "output":
            for label in self.input_labels(node):
                if label is not None:
                    self.output_groups += [s.group for s in label.segments]
                self.freeze(label, "reaches the model's output")
            return None
        if shape_of(node) is None:
            rule = (
                TUPLE_RULES.get(node.target)
                if node.op in ("call_function", "call_method")
                else None
            )
            if rule is not None:
                return rule(self, node, node.target)
            if (node.op == "call_method" and node.target in _SIZE_QUERIES) or (
                node.op == "call_function" and node.target is getattr
            ):
                return None  # x.size(), x.shape, x.dtype: invariant to any permutation
            # a tuple (unbind, ...) or another non-tensor result: whatever its pieces feed
            # cannot follow the groups of its inputs
            return self.opaque(node, f"{_op_name(node)} returns a {_result_kind(node)}")
        if node.op == "call_module":
            module = self.modules[node.target]
            for types, rule in MODULE_RULES:
                if isinstance(module, types):
                    return rule(self, node, module)
            prefix = f"{node.target}." if node.target else ""
            for param in module.state_dict():
                self.untouched.setdefault(
                    prefix + param, f"inside {type(module).__name__} {node.target}"
                )
            return self.opaque(node, f"{node.target}: {type(module).__name__} is opaque")
        if node.op == "call_function":
            rule = FUNCTION_RULES.get(node.target)
            if rule is not None:
                return rule(self, node, node.target)
            name = getattr(node.target, "__name__", node.target)
            return self.opaque(node, f"unsupported function {name}")
        if node.op == "call_method":
            rule = METHOD_RULES.get(node.target)
            if rule is not None:
                return rule(self, node, node.target)
            return self.opaque(node, f"unsupported method .{node.target}()")
        return self.opaque(node, f"unsupported node {node.op}")

    def build(self, state_shapes: dict[str, tuple[int, ...]], leaves: tuple[str, ...]):
        """Walk the graph and return the spec of everything that may move."""
        for node in self.gm.graph.nodes:
            self.labels[node] = self.visit(node)
        self.tie_shared_axes()
        dissolved = divide_slices(self)
        self.tie_shared_axes()
        roots: dict[int, list[int]] = {}
        for g in self.sizes:
            if self.uf.find(g) not in dissolved and self.uf.find(g) not in self.expanded:
                roots.setdefault(self.uf.find(g), []).append(g)
        node_groups: dict[int, dict[str, int]] = {}
        activation_groups: dict[int, dict[str, int]] = {}
        for node, label in self.labels.items():
            label = self.resolve(label)
            if label is not None and len(label.segments) == 1 and label.segments[0].block == 1:
                root = self.uf.find(label.segments[0].group)
                if root in dissolved:
                    continue
                node_groups.setdefault(root, {})[node.name] = label.dim
                if is_nonlinearity(node, self.modules):
                    activation_groups.setdefault(root, {})[node.name] = label.dim
        groups: dict[str, PermutationGroup] = {}
        report = []
        for root, members in roots.items():
            producers = [p for g in members for p in self.producers[g]]
            name = producers[0] or "input"
            sizes = {self.sizes[g] for g in members}
            if root == FIXED or root in self.uf.frozen or len(sizes) != 1:
                reason = self.uf.frozen.get(root, "sizes differ") if root != FIXED else "fixed"
                joined = f" (with {', '.join(producers[1:])})" if len(producers) > 1 else ""
                channels = sum(self.sizes[g] for g in members)
                report.append(f"{name}{joined}: {reason} ({channels} channels)")
                continue
            blocks = math.lcm(*(self.blocks.get(g, 1) for g in members))
            size = next(iter(sizes))
            if blocks > 1 and (size % blocks or size == blocks):
                why = "one channel per block" if size == blocks else "blocks do not divide it"
                report.append(f"{name}: grouped convolution leaves {why} ({size} channels)")
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
                size,
                axes,
                producers,
                node_groups.get(root, {}),
                activation_groups.get(root, {}),
                blocks,
            )
        for key, why in sorted(self.untouched.items()):
            if key in state_shapes:
                report.append(f"{key}: not permuted ({why})")
        return PermutationSpec(groups, report, state_shapes, self.layer_points(), leaves)

    def tie_shared_axes(self) -> None:
        """The same axis reached through two groups (a module reused on two inputs) ties
        them: they must move alike."""
        owner: dict[tuple, int] = {}
        for g in self.sizes:
            for ax in self.axes[g]:
                previous = owner.setdefault(ax.identity(), g)
                if self.uf.find(previous) != self.uf.find(g):
                    self.uf.union(previous, g, f"{ax[0]} shared by two groups")

    def layer_points(self) -> list[LayerPoint]:
        final_roots = {self.uf.find(g) for g in self.output_groups}
        points = []
        for node, label in self.labels.items():
            if node.op != "call_module" or not isinstance(self.modules[node.target], LAYERS):
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


@keyword_only(("example_input", "leaf_modules"))
def permutation_spec(
    model: nn.Module,
    *,
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    leaf_modules: Iterable[type] = (),
    verify: bool = True,
    rtol: float = DEFAULT_RTOL,
) -> PermutationSpec:
    """Derive the permutation groups of ``model`` from its ``torch.fx`` graph, verified.

    ``example_input`` (a batch, e.g. ``torch.zeros(2, 3, 32, 32)``) fixes the shapes, which
    decide how ``flatten`` expands channels. ``leaf_modules`` lists module classes to treat
    as opaque (for code that fx cannot trace). The model runs once, in eval mode, on
    ``example_input`` (on the model's device); it is not modified.

    With ``verify`` (the default) the spec then checks itself on a randomized float32
    copy of the model (:mod:`workbench.graph.verify`): groups whose permutation changes
    the outputs by more than ``rtol`` (relative L2) are frozen and reported, so the spec
    returned preserves the function on the example input. ``spec.verification`` records
    the error, the forward passes and the seconds it took. ``verify=False`` skips it.
    """
    leaves = leaf_names(leaf_modules)
    gm = traced_with_shapes(model, example_input, leaves)
    state_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    spec = Builder(gm).build(state_shapes, leaves)
    return verify_spec(model, spec, example_input, rtol) if verify else spec


def example_input_for(model: nn.Module, data: DataLike | None = None) -> torch.Tensor:
    """A batch of two inputs for tracing ``model``: from ``data`` when given, else zeros
    with the channels of its first layer and the image size its checkpoint records
    (:func:`~workbench.checkpoints.recorded_dataset_info`), 32x32 where it records none."""
    device = model_device(model)
    if data is not None:
        inputs, _ = next(iter(batches(data, batch_size=2, max_batches=1)))
        return inputs[:2].to(device)
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if first is None:
        raise ValueError(f"Cannot guess an input for {type(model).__name__}: pass example_input=.")
    if isinstance(first, nn.Linear):
        return torch.zeros(2, first.in_features, device=device)
    info = recorded_dataset_info(model)
    size = 32 if info is None else info.image_size
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
    return permutation_spec(model, example_input=example_input)
