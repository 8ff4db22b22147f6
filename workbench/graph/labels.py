"""How the builder labels tensors: which groups run along a tensor's channel axis, and the
union-find that joins groups (a residual add) or freezes them (an op it cannot see through).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FIXED", "Label", "Segment", "UnionFind"]

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
        """(size, block) of each segment: two labels can be united iff these agree."""
        return [(s.size, s.block) for s in self.segments]


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
