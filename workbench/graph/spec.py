"""What a permutation spec is: pure data, saveable to JSON.

A *permutation group* is a set of channel axes that must be permuted together for the
network to compute the same function: the output channels of a convolution, the matching
BatchNorm parameters and statistics, and the input axis of every layer that consumes them.
The spec lists the groups of one architecture, what was left unpermuted and why, and the
state-dict shapes it was built for. It holds no reference to a model or a traced graph
(:mod:`workbench.graph.trace` traces again where a graph is needed), so it can be saved
with :meth:`PermutationSpec.save` and shared.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from workbench.files import write_text
from workbench.modules import state_diff, state_shapes

__all__ = ["Axis", "GraphTraceError", "LayerPoint", "PermutationGroup", "PermutationSpec"]

SPEC_FORMAT = "workbench-permutation-spec/1"


class GraphTraceError(RuntimeError):
    """``torch.fx`` could not trace a model; the message names the op and what to do."""


class Axis(tuple):
    """A ``(state_dict key, axis)`` pair that a group permutes, with four refinements.

    ``offset``: the group covers the slice starting there (a consumer of a ``cat``).
    ``block``: each channel spans ``block`` consecutive entries (a linear layer after a
    ``flatten``: channel ``c`` owns entries ``c * block ... c * block + block - 1``).
    ``role``: how the tensor uses the channels: ``"out"`` (a layer's output rows and
    bias), ``"in"`` (a consumer's input columns) or ``"channel"`` (a per-channel
    parameter or statistic: BatchNorm, depthwise filters). Permutations treat all alike;
    a general linear map needs the role (and cannot pass a ``"channel"`` axis exactly).
    ``grouped``: the input axis of a grouped convolution with that many groups: the
    tensor's rows (axis 0) fall into ``grouped`` equal parts, and in part ``b`` the axis
    indexes, locally, the channels of the group's block ``b`` (a permutation within blocks
    reorders each part's columns by that block's own order).
    Unpacks and compares like the plain pair.
    """

    offset: int
    block: int
    role: str
    grouped: int

    def __new__(
        cls,
        key: str,
        axis: int,
        offset: int = 0,
        block: int = 1,
        role: str = "channel",
        grouped: int = 1,
    ) -> Axis:
        if role not in ("out", "in", "channel"):
            raise ValueError(f"role must be 'out', 'in' or 'channel', got {role!r}.")
        self = super().__new__(cls, (key, axis))
        self.offset = offset
        self.block = block
        self.role = role
        self.grouped = grouped
        return self

    def with_role(self, role: str) -> Axis:
        """The same axis used in another role."""
        return Axis(self[0], self[1], self.offset, self.block, role, self.grouped)

    @property
    def key(self) -> str:
        return self[0]

    @property
    def axis(self) -> int:
        return self[1]

    def __repr__(self) -> str:
        extra = (
            (f", offset={self.offset}" if self.offset else "")
            + (f", block={self.block}" if self.block != 1 else "")
            + (f", grouped={self.grouped}" if self.grouped != 1 else "")
        )
        return f"Axis({self[0]!r}, {self[1]}{extra}, role={self.role!r})"

    def __reduce__(self):
        return (Axis, (self[0], self[1], self.offset, self.block, self.role, self.grouped))

    def identity(self) -> tuple[str, int, int, int]:
        """Everything that tells this axis apart, including slice and block."""
        return (self[0], self[1], self.offset, self.block)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self[0],
            "axis": self[1],
            "offset": self.offset,
            "block": self.block,
            "role": self.role,
            "grouped": self.grouped,
        }


@dataclass
class PermutationGroup:
    """Channel axes permuted together: ``size`` channels, the ``axes`` they index, the
    modules that produce them (``producers``), the graph nodes whose output channels are
    exactly this group with the axis they lie on (``nodes``: node name -> axis), and the
    subset of those that are outputs of a nonlinearity (``activations``), where alignment
    observes the group. ``blocks``: the channels fall into that many equal blocks and a
    permutation may only reorder channels within their block (the groups a grouped
    convolution reads or writes); 1 for a group whose channels may move anywhere."""

    name: str
    size: int
    axes: list[Axis] = field(default_factory=list)
    producers: list[str] = field(default_factory=list)
    nodes: dict[str, int] = field(default_factory=dict)
    activations: dict[str, int] = field(default_factory=dict)
    blocks: int = 1

    def __repr__(self) -> str:
        blocks = f", {self.blocks} blocks" if self.blocks != 1 else ""
        return f"PermutationGroup({self.name!r}, size={self.size}{blocks}, {len(self.axes)} axes)"

    @property
    def block_size(self) -> int:
        """How many channels of a block may be reordered among themselves."""
        return self.size // self.blocks

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "axes": [ax.to_dict() for ax in self.axes],
            "producers": list(self.producers),
            "nodes": dict(self.nodes),
            "activations": dict(self.activations),
            "blocks": self.blocks,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PermutationGroup:
        return cls(
            data["name"],
            int(data["size"]),
            [Axis(**ax) for ax in data["axes"]],
            list(data["producers"]),
            {k: int(v) for k, v in data["nodes"].items()},
            {k: int(v) for k, v in data["activations"].items()},
            int(data.get("blocks", 1)),
        )


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
    the spec was built for, so it can check that a model fits it; ``layers`` lists the
    conv/linear layers in graph order with where their normalized output is observed;
    ``leaf_modules`` names (``module.Class``) the classes traced as opaque ops, so the
    graph can be traced again exactly as it was; ``verification`` says how the spec was
    checked on the model (:mod:`workbench.graph.verify`; empty when it was not).
    """

    groups: dict[str, PermutationGroup]
    report: list[str]
    state_shapes: dict[str, tuple[int, ...]]
    layers: list[LayerPoint] = field(default_factory=list)
    leaf_modules: tuple[str, ...] = ()
    verification: dict[str, Any] = field(default_factory=dict)

    def check_model(self, model: nn.Module, role: str = "model") -> None:
        """Raise ``ValueError`` unless ``model``'s state dict has the keys and shapes of
        the model this spec was built for."""
        diff = state_diff(state_shapes(model), self.state_shapes)
        if diff:
            raise ValueError(
                f"The spec was built for another architecture than this {role} "
                f"({type(model).__name__}): {diff.describe(role, 'spec')}. Build it with "
                "permutation_spec(model, example_input)."
            )

    def coverage(self) -> float:
        """The fraction of hidden conv/linear output channels that some group permutes:
        1.0 when every layer but the logits can be aligned, 0.0 when all are frozen. A
        channel that moves only with its block (one of a depthwise conv's ``k`` outputs
        per input channel) counts as moved."""
        hidden = [p.layer for p in self.layers if not p.final]
        total = sum(self.state_shapes[f"{name}.weight"][0] for name in hidden)
        if total == 0:
            return 0.0
        covered_by_key: dict[str, int] = {}
        for group in self.groups.values():
            for ax in group.axes:  # output rows of a layer, or a depthwise conv's channels
                if ax.axis == 0 and ax.key.endswith(".weight"):
                    moved = group.size * ax.block  # a block of rows moves with each channel
                    covered_by_key[ax.key] = covered_by_key.get(ax.key, 0) + moved
        covered = sum(covered_by_key.get(f"{name}.weight", 0) for name in hidden)
        return covered / total

    def summary(self) -> str:
        """One line per group (name, size, number of axes), the coverage and the report."""
        lines = [f"{len(self.groups)} permutation groups ({self.coverage():.0%} coverage):"]
        if self.verification:
            v = self.verification
            lines[0] += (
                f" verified in {v['dtype']} ({v['forward_passes']} forward passes, "
                f"{v['seconds']:.2f} s, relative error {v['relative_error']:.1e})"
            )
        lines += [
            f"  {g.name}: {g.size} channels"
            + (f" in {g.blocks} blocks" if g.blocks != 1 else "")
            + f", {len(g.axes)} axes"
            for g in self.groups.values()
        ]
        if self.report:
            lines.append("Left unpermuted (what forced it, and the channels it costs):")
            lines += [f"  {line}" for line in self.report]
        return "\n".join(lines)

    @property
    def cache_key(self) -> str:
        """What a cached result computed with this spec depends on: a hash of all of it
        but its verification report (which records, among others, how long the
        verification took), so that the same spec verified twice keys the same results
        and a spec with other groups keys others."""
        data = {k: v for k, v in self.to_dict().items() if k != "verification"}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]

    # -- saving ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: ``PermutationSpec.from_dict(spec.to_dict()) == spec``."""
        return {
            "format": SPEC_FORMAT,
            "groups": [g.to_dict() for g in self.groups.values()],
            "report": list(self.report),
            "state_shapes": {k: list(v) for k, v in self.state_shapes.items()},
            "layers": [vars(p) for p in self.layers],
            "leaf_modules": list(self.leaf_modules),
            "verification": dict(self.verification),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PermutationSpec:
        """The spec that :meth:`to_dict` wrote; ``ValueError`` for anything else."""
        if not isinstance(data, dict) or data.get("format") != SPEC_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"Not a saved permutation spec (format {found!r}, expected {SPEC_FORMAT!r}); "
                "write one with spec.save(path)."
            )
        groups = [PermutationGroup.from_dict(g) for g in data["groups"]]
        return cls(
            {g.name: g for g in groups},
            list(data["report"]),
            {k: tuple(v) for k, v in data["state_shapes"].items()},
            [LayerPoint(**p) for p in data["layers"]],
            tuple(data["leaf_modules"]),
            dict(data.get("verification", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write the spec as JSON to ``path``, atomically, and never over an existing file
        (``FileExistsError``, also when another process writes it at the same time)."""
        return write_text(path, json.dumps(self.to_dict(), indent=1), overwrite=False)

    @classmethod
    def load(cls, path: str | Path) -> PermutationSpec:
        """Read a spec written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))
