"""How the builder labels tensors: which groups run along a tensor's channel axis, the
union-find that joins groups (a residual add) or freezes them (an op it cannot see through),
and :class:`GraphLabels`, the state that the rules of :mod:`workbench.graph.rules` update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, NamedTuple

from torch import fx

from workbench.graph.spec import Axis
from workbench.graph.trace import shape_of

__all__ = ["FIXED", "GraphLabels", "Label", "Segment", "Slice", "UnionFind"]

FIXED = -1  # the "group" of channels that must never move (inputs, logits, unknown ops)


@dataclass(frozen=True)
class Segment:
    """``size`` consecutive channels of ``group``, each spanning ``block`` entries."""

    group: int
    size: int
    block: int = 1


@dataclass(frozen=True)
class Label:
    """Which groups run along axis ``dim`` of a tensor, in order (more than one after cat)."""

    dim: int
    segments: tuple[Segment, ...]

    @property
    def width(self) -> int:
        return sum(s.size * s.block for s in self.segments)

    def slicing(self) -> list[tuple[int, int]]:
        """(size, block) of each segment: labels with the same slicing unite segment by
        segment."""
        return [(s.size, s.block) for s in self.segments]

    def bounds(self) -> list[int]:
        """Where each segment starts along the axis, and the width at the end."""
        ends = [0]
        for s in self.segments:
            ends.append(ends[-1] + s.size * s.block)
        return ends


class Slice(NamedTuple):
    """Group ``piece`` is channels ``start`` to ``stop`` of group ``parent`` (a slice, a
    split's piece): resolved when the spec is built (:mod:`workbench.graph.slicing`)."""

    parent: int
    start: int
    stop: int
    piece: int


class UnionFind:
    """Groups as integers; ``union`` joins two (a frozen or FIXED side freezes the other),
    ``freeze`` records why a group may not move."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.frozen: dict[int, str] = {}

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        if g == FIXED:
            return FIXED
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def union(self, a: int, b: int, reason: str) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if FIXED in (ra, rb):
            self.freeze(rb if ra == FIXED else ra, reason)
            return FIXED
        root, child = min(ra, rb), max(ra, rb)
        self.parent[child] = root
        if child in self.frozen:
            self.frozen.setdefault(root, self.frozen.pop(child))
        return root

    def freeze(self, g: int, reason: str) -> None:
        root = self.find(g)
        if root != FIXED:
            self.frozen.setdefault(root, reason)


class GraphLabels:
    """The bookkeeping that rules write to while the graph is walked: groups (a union-find),
    the state-dict axes that follow each group, what was frozen and why, and each node's
    label."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.params = {k for k, _ in gm.named_parameters()} | {k for k, _ in gm.named_buffers()}
        self.uf = UnionFind()
        self.sizes: dict[int, int] = {}
        self.axes: dict[int, list[Axis]] = {}
        self.producers: dict[int, list[str]] = {}
        self.module_groups: dict[str, int] = {}
        self.labels: dict[fx.Node, Label | None] = {}
        self.untouched: dict[str, str] = {}
        self.output_groups: list[int] = []
        self.blocks: dict[int, int] = {}
        self.slices: list[Slice] = []  # groups that are channel ranges of other groups
        self.pieces: dict[fx.Node, list[Label]] = {}  # a split's node -> its pieces' labels
        # a parameter, or a reshape of all of one -> (its key, the parameter's shape)
        self.parameter_views: dict[fx.Node, tuple[str, tuple[int, ...]]] = {}
        # a root whose channels are another group's, each of those k channels wide
        # (a depthwise conv with k filters per channel): root -> (that group, k)
        self.expanded: dict[int, tuple[int, int]] = {}

    # -- what rules call -----------------------------------------------------------------
    def new_group(self, size: int, producer: str) -> int:
        """A new group of ``size`` channels produced by ``producer`` (a module called twice
        shares its output group)."""
        if producer in self.module_groups:
            return self.module_groups[producer]
        g = self.uf.new()
        self.sizes[g], self.axes[g], self.producers[g] = size, [], [producer]
        self.module_groups[producer] = g
        return g

    def add_axes(
        self,
        label: Label | None,
        key: str,
        axis: int,
        why: str,
        role: str = "channel",
        grouped: int = 1,
    ) -> None:
        """Register ``key``'s ``axis`` as following ``label``'s groups, slice by slice."""
        if label is None:
            self.untouched.setdefault(key, why)
            return
        offset = 0
        for seg in label.segments:
            if seg.group != FIXED:
                self.axes[seg.group].append(Axis(key, axis, offset, seg.block, role, grouped))
            offset += seg.size * seg.block

    def require_blocks(self, group: int, blocks: int) -> None:
        """Let ``group``'s channels move only within ``blocks`` equal blocks."""
        if group != FIXED:
            self.blocks[group] = math.lcm(self.blocks.get(group, 1), blocks)

    def freeze(self, label: Label | None, reason: str) -> None:
        """Forbid every group of ``label`` to move, recording ``reason``."""
        if label is not None:
            for seg in label.segments:
                self.uf.freeze(seg.group, reason)

    def fixed(self, node: fx.Node, dim: int = 1) -> Label | None:
        """A label for ``node``'s output whose channels never move."""
        shape = shape_of(node)
        if shape is None or len(shape) <= dim:
            return None
        return Label(dim, (Segment(FIXED, shape[dim]),))

    def unite(self, a: Label, b: Label, reason: str) -> bool:
        """Unite two labels segment by segment. Labels of equal width whose segments end
        at different places (a ``cat`` of two groups added to one group) are first cut at
        every end of either, each cut segment becoming a slice of its group; False if a
        cut falls inside a block or the cut pieces still differ in their blocks. A group
        of single channels joined to one whose channels are ``k`` entries wide is
        expanded into it (:meth:`expand`)."""
        a, b = self.resolve(a), self.resolve(b)
        if len(a.segments) == len(b.segments) == 1 and a.width == b.width:
            (sa,), (sb,) = a.segments, b.segments
            for wide, narrow in ((sa, sb), (sb, sa)):
                if wide.block > narrow.block and wide.block % narrow.block == 0:
                    k = wide.block // narrow.block
                    if FIXED not in (wide.group, narrow.group):
                        return self.expand(narrow.group, wide.group, k, reason)
        if a.slicing() != b.slicing():
            if a.width != b.width:
                return False
            ends = sorted(set(a.bounds()) | set(b.bounds()))
            plans = [[self.cut(lab, lo, hi) for lo, hi in pairwise(ends)] for lab in (a, b)]
            if any(part is None for plan in plans for part in plan):
                return False
            cut_a, cut_b = ([piece for part in plan for piece in part] for plan in plans)
            if [(hi - lo, s.block) for s, lo, hi in cut_a] != [
                (hi - lo, s.block) for s, lo, hi in cut_b
            ]:
                return False
            a, b = Label(a.dim, self._pieces(cut_a)), Label(b.dim, self._pieces(cut_b))
        for sa, sb in zip(a.segments, b.segments, strict=True):
            self.uf.union(sa.group, sb.group, reason)
        return True

    def expand(self, group: int, onto: int, k: int, reason: str) -> bool:
        """Make ``group``'s channels ``onto``'s, each ``k`` consecutive ones of ``group``
        being one of ``onto``'s (a depthwise conv's ``k`` outputs per input channel, added
        to channels of a layer of their own): ``onto``'s permutation moves them as blocks
        of ``k``. Every axis of ``group`` and of what it was united with becomes an axis
        of ``onto`` with ``k`` times its block, and labels that name ``group`` are read as
        ``onto`` (:meth:`resolve`). Frozen channels freeze ``onto``. False (nothing
        changed) where ``group`` is sliced, feeds a grouped convolution, or moves in blocks
        that are not whole channels of ``onto``."""
        root = self.uf.find(group)
        if root == FIXED or root in self.uf.frozen:
            self.uf.freeze(onto, self.uf.frozen.get(root, reason))
            return True
        members = [g for g in self.sizes if self.uf.find(g) == root]
        sliced = any(root in (self.uf.find(s.parent), self.uf.find(s.piece)) for s in self.slices)
        axes = [ax for g in members for ax in self.axes[g]]
        blocks = math.lcm(*(self.blocks.get(g, 1) for g in members))
        if sliced or any(ax.grouped != 1 for ax in axes) or (self.sizes[root] // blocks) % k:
            return False
        if blocks > 1:
            self.require_blocks(onto, blocks)
        self.axes[onto] += [
            Axis(ax.key, ax.axis, ax.offset, ax.block * k, ax.role, ax.grouped) for ax in axes
        ]
        self.producers[onto] += [p for g in members for p in self.producers[g]]
        for g in members:
            self.axes[g] = []
        self.expanded[root] = (onto, k)
        return True

    def resolve(self, label: Label | None) -> Label | None:
        """``label`` with the segments of expanded groups written as the groups they
        expand into (see :meth:`expand`)."""
        if label is None or not self.expanded:
            return label
        segments = []
        for seg in label.segments:
            while seg.group != FIXED and self.uf.find(seg.group) in self.expanded:
                onto, k = self.expanded[self.uf.find(seg.group)]
                seg = Segment(onto, seg.size // k, seg.block * k)
            segments.append(seg)
        return Label(label.dim, tuple(segments))

    def cut(self, label: Label, start: int, stop: int) -> list[tuple[Segment, int, int]] | None:
        """Which channels ``[lo, hi)`` of which segments entries ``start`` to ``stop`` of
        ``label``'s axis cover; None when a bound falls inside a channel's block."""
        covered = []
        for seg, begin in zip(label.segments, label.bounds(), strict=False):
            lo = max(start - begin, 0)
            hi = min(stop - begin, seg.size * seg.block)
            if lo >= hi:
                continue
            if lo % seg.block or hi % seg.block:
                return None
            covered.append((seg, lo // seg.block, hi // seg.block))
        return covered

    def sliced(self, label: Label, start: int, stop: int, tag: str = "") -> Label | None:
        """The label of entries ``start`` to ``stop`` of ``label``'s axis: the segments
        they cover, where a segment is covered in part by a new group that is that slice
        of the segment's group (recorded in :attr:`slices`; named after the group and the
        channels, or ``tag`` for a slice of one group). None when a bound falls inside a
        channel's block."""
        plan = self.cut(label, start, stop)
        if plan is None:
            return None
        return Label(label.dim, self._pieces(plan, tag if len(plan) == 1 else ""))

    def _pieces(self, plan: list[tuple[Segment, int, int]], tag: str = "") -> tuple[Segment, ...]:
        """The segments of a :meth:`cut`: whole segments and fixed channels as they are,
        a part of a group as the group that is that slice of it."""
        segments = []
        for seg, lo, hi in plan:
            if seg.group == FIXED or (lo, hi) == (0, seg.size):
                segments.append(Segment(seg.group, hi - lo, seg.block))
                continue
            piece = self.new_group(
                hi - lo, f"{self.producers[seg.group][0]}{tag or f'[{lo}:{hi}]'}"
            )
            self.slices.append(Slice(seg.group, lo, hi, piece))
            segments.append(Segment(piece, hi - lo, seg.block))
        return tuple(segments)

    def label_of(self, arg: Any) -> Label | None:
        return self.resolve(self.labels.get(arg)) if isinstance(arg, fx.Node) else None

    def input_label(self, node: fx.Node) -> Label | None:
        return self.label_of(node.args[0]) if node.args else None

    def tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        """The nodes ``node`` reads that are tensors, or tuples of labelled pieces."""
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) or n)
        return [n for n in found if shape_of(n) is not None or n in self.pieces]

    def input_labels(self, node: fx.Node) -> list[Label | None]:
        """The labels of every tensor ``node`` reads (each piece of a split tuple)."""
        return [
            label
            for arg in self.tensor_inputs(node)
            for label in map(self.resolve, self.pieces.get(arg, [self.labels.get(arg)]))
        ]

    def opaque(self, node: fx.Node, why: str) -> Label | None:
        """An op we cannot see through: its inputs' groups and its output stay fixed."""
        for label in self.input_labels(node):
            self.freeze(label, why)
        return self.fixed(node)
