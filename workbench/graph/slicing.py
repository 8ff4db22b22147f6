"""Dividing sliced groups, once the whole graph is known.

A slice ``x[:, a:b]``, a ``narrow`` or a split's piece is a group of its own during the walk,
recorded as a :class:`~workbench.graph.labels.Slice` of the group it was taken from. Only
after the walk are all slices of the same channels known (and which groups were united
meanwhile), so the division happens here, when the spec is built:

1. Every group united with others forms one root. Each slice asks its parent's root to be
   cut at its ends; cuts travel both ways between a slice's root and its parent's (a cut
   inside ``[a, b)`` of the parent is a cut of the slice, shifted by ``a``, and back), until
   nothing changes: the common refinement of every slice of the same channels.
2. A root whose groups differ in size (a slice united with the channels it was taken
   from, for one), or that must be cut but cannot be (its channels move in blocks or feed
   a grouped convolution), is frozen, and so is every slice of frozen channels; then step
   1 runs again.
3. A root with cuts is divided into intervals, each a group ("atom") that takes its slice
   of every axis of the root (offsets accumulate, times the axis's block: a ``cat`` in
   reverse). A slice that is exactly one interval, and is not cut itself, serves as that
   atom. The root is no group any more.
4. Each slice's atoms are united with the parent's atoms covering the same channels; a
   frozen slice freezes them.

A root whose channels move within blocks (a grouped convolution's output) may be cut
between its blocks only; each interval keeps its whole blocks.

The result permutes every channel of a divided group within its interval, and all slices
taken of the same channels alike, which is exactly what the slices require.
"""

from __future__ import annotations

import math
from itertools import pairwise

from workbench.graph.labels import FIXED, GraphLabels
from workbench.graph.spec import Axis

__all__ = ["divide_slices"]

Atoms = dict[int, list[tuple[int, int, int]]]  # root -> (start, stop, atom group), in order


def divide_slices(b: GraphLabels) -> set[int]:
    """Divide every sliced root among its atoms (steps 1-4 above) and return the roots so
    divided, which are no group of their own any more."""
    if not b.slices:
        return set()
    cuts = _settle(b)
    roots = {g: b.uf.find(g) for g in b.sizes}
    members: dict[int, list[int]] = {}
    for g, root in roots.items():
        members.setdefault(root, []).append(g)
    reuse: dict[tuple[int, int, int], int] = {}
    for s in b.slices:
        piece_root = roots[s.piece]
        if _movable(b, piece_root) and not cuts.get(piece_root):
            reuse.setdefault((roots[s.parent], s.start, s.stop), piece_root)
    atoms: Atoms = {}
    for root, points in cuts.items():
        if not points or not _movable(b, root):
            continue
        bounds = [0, *sorted(points), b.sizes[root]]
        name = b.producers[root][0]
        atoms[root] = [
            (lo, hi, reuse[root, lo, hi])
            if (root, lo, hi) in reuse
            else (lo, hi, b.new_group(hi - lo, f"{name}[{lo}:{hi}]"))
            for lo, hi in pairwise(bounds)
        ]
        block = _block_size(b, root, members[root])
        if block != b.sizes[root]:  # cut between blocks: each atom keeps its own blocks
            for lo, hi, atom in atoms[root]:
                b.require_blocks(atom, (hi - lo) // block)
        for g in members[root]:
            for ax in b.axes[g]:
                for lo, _, atom in atoms[root]:
                    offset = ax.offset + lo * ax.block
                    b.axes[atom].append(
                        Axis(ax.key, ax.axis, offset, ax.block, ax.role, ax.grouped)
                    )
            b.axes[g] = []
    for s in b.slices:
        parent_root, piece_root = roots[s.parent], roots[s.piece]
        if not _movable(b, parent_root):
            continue  # the slice was frozen with it in _settle
        for lo, hi, piece_atom in _atoms_of(b, atoms, piece_root):
            for plo, phi, atom in atoms[parent_root]:
                if s.start + lo <= plo and phi <= s.start + hi:
                    b.uf.union(atom, piece_atom, "a slice of the same channels")
    return set(atoms)


def _atoms_of(b: GraphLabels, atoms: Atoms, root: int) -> list[tuple[int, int, int]]:
    return atoms.get(root, [(0, b.sizes[root], root)])


def _movable(b: GraphLabels, root: int) -> bool:
    return root != FIXED and root not in b.uf.frozen


def _settle(b: GraphLabels) -> dict[int, set[int]]:
    """The cuts of every movable root (step 1), after freezing what cannot be cut or is a
    slice of frozen channels (step 2)."""
    while True:
        changed = False
        members: dict[int, list[int]] = {}
        for g in b.sizes:
            members.setdefault(b.uf.find(g), []).append(g)
        for s in b.slices:
            parent, piece = b.uf.find(s.parent), b.uf.find(s.piece)
            for root in (parent, piece):
                if _movable(b, root) and len({b.sizes[g] for g in members[root]}) != 1:
                    b.uf.freeze(root, "slices of channels whose sizes differ")
                    changed = True
            if not _movable(b, parent) and _movable(b, piece):
                b.uf.freeze(piece, "a slice of channels that cannot move")
                changed = True
        if changed:
            continue
        cuts = _cuts(b)
        for root, points in cuts.items():
            reason = _undividable(b, root, members[root], points) if points else None
            if reason:
                b.uf.freeze(root, reason)
                changed = True
        if not changed:
            return cuts


def _cuts(b: GraphLabels) -> dict[int, set[int]]:
    """Where each movable root must be cut (channel indices strictly inside it): the ends
    of its slices, carried between every slice's root and its parent's until stable."""
    find = b.uf.find
    cuts: dict[int, set[int]] = {}
    for s in b.slices:
        parent = find(s.parent)
        if _movable(b, parent):
            ends = {s.start, s.stop} - {0, b.sizes[s.parent]}
            cuts.setdefault(parent, set()).update(ends)
    changed = True
    while changed:
        changed = False
        for s in b.slices:
            parent, piece = find(s.parent), find(s.piece)
            if not (_movable(b, parent) and _movable(b, piece)):
                continue
            up = {s.start + c for c in cuts.get(piece, ())} - cuts[parent]
            down = {c - s.start for c in cuts[parent] if s.start < c < s.stop}
            down -= cuts.get(piece, set())
            if up or down:
                cuts[parent] |= up
                cuts.setdefault(piece, set()).update(down)
                changed = True
    return cuts


def _block_size(b: GraphLabels, root: int, members: list[int]) -> int:
    """The channels in each block of a root whose channels move within blocks (its size
    when they do not)."""
    blocks = math.lcm(*(b.blocks.get(g, 1) for g in members))
    return b.sizes[root] // blocks


def _undividable(b: GraphLabels, root: int, members: list[int], points: set[int]) -> str | None:
    """Why a root of these member groups cannot be cut at ``points`` into intervals (None
    if it can): a cut inside a block, or the input of a grouped convolution."""
    size = _block_size(b, root, members)
    if size != b.sizes[root] and any(p % size for p in points):
        return "a slice of channels in blocks"
    if any(ax.grouped != 1 for g in members for ax in b.axes[g]):
        return "a slice of channels a grouped convolution reads"
    return None
