"""The similarity matrices of weight matching, kept up to date at the least cost.

Weight matching (:mod:`workbench.alignment.weight`) solves one group at a time: its
similarity is a sum over every tensor axis the group permutes of A's entries along that
axis times B's, B's other axes permuted by the other groups' current permutations. On a
large graph (hundreds of groups, tensors read by many slices of a concatenation) most of
that work repeats what an earlier visit computed. :class:`Similarities` keeps each axis's
term and computes it again only when a permutation that moves entries of the group's
slice changed since (the other slices of the same axis, other groups' channels of one
concatenation, move none); it permutes B with one gather per tensor axis, only where the
group's slice meets it. A term whose B is permuted along one other tensor axis is
brought up to date by the channels that moved on that axis alone, which are few in
later passes (:meth:`Similarities._term`): the same sums in another order, within
float32 rounding of a whole computation.

A group that permutes two different axes of one tensor (a convolution from a residual
stream back into it, as in RepVGG) enters its own similarity: there the objective is
quadratic in the group's permutation, and the terms of those tensors are kept apart
(:class:`GroupSimilarity`), with :meth:`Similarities.loop_value` giving their exact
contribution for a trial permutation. Two slices of one axis that one group permutes (as
selective-kernel and split attention read them) keep it linear: each slice's term does
not depend on the group's own permutation.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from workbench.graph import Axis, PermutationSpec
from workbench.graph.transforms import Permutation, axis_index, channel_block, permute_axis

__all__ = ["GroupSimilarity", "Similarities"]

CACHE_BYTES = 2 * 1024**3  # the most memory the cached terms may take
UPDATE_SHARE = 0.5  # the largest share of an axis that may move for a term to be updated


def _similarity(w_a: torch.Tensor, w_b: torch.Tensor, ax: Axis, size: int) -> torch.Tensor:
    """``similarity[i, j]``: the inner product of A's entries of channel ``i`` along ``ax``
    with B's entries of channel ``j`` (for a grouped axis, only within a block)."""
    if ax.grouped == 1:
        # channels as rows, block entries kept together with their channel
        rows_a = channel_block(w_a, ax, size)[0].flatten(1)
        rows_b = channel_block(w_b, ax, size)[0].flatten(1)
        return rows_a @ rows_b.T
    parts_a = w_a.unflatten(0, (ax.grouped, -1)).transpose(1, 2).flatten(2)
    parts_b = w_b.unflatten(0, (ax.grouped, -1)).transpose(1, 2).flatten(2)
    return torch.block_diag(*(parts_a @ parts_b.transpose(1, 2)))


def _gather(w: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``w.index_select(dim, index)``; on a tensor whose trailing axes after ``dim`` are all
    1 (a 1x1 convolution's input axis) as a column gather of a matrix, about 2.5x faster
    than torch's gather along an inner axis and the same entries."""
    if dim == 1 and w.dim() > 2 and w.is_contiguous() and w.shape[2:].numel() == 1:
        columns = w.view(w.shape[0], w.shape[1]).index_select(1, index)
        return columns.view(w.shape[0], len(index), *w.shape[2:])
    return w.index_select(dim, index)


def _moves(other: Axis, other_name: str, ax: Axis, name: str, spec: PermutationSpec) -> bool:
    """Whether permuting ``other`` (group ``other_name``'s axis) can move an entry of
    ``ax``'s slice of the tensor (group ``name``'s axis): not where both are plain
    slices of the same tensor axis that do not overlap (slices of one concatenation),
    which leave each other's entries in place."""
    if other.axis != ax.axis or other.grouped != 1 or ax.grouped != 1:
        return True
    stop = ax.offset + spec.groups[name].size * ax.block
    other_stop = other.offset + spec.groups[other_name].size * other.block
    return other.offset < stop and ax.offset < other_stop


def _narrow(w: torch.Tensor, ax: Axis, size: int) -> tuple[torch.Tensor, Axis]:
    """``w`` narrowed to ``ax``'s slice, and the axis as it indexes that slice."""
    local = Axis(ax.key, ax.axis, 0, ax.block, ax.role, ax.grouped)
    return w.narrow(ax.axis, ax.offset, size * ax.block), local


IndexCache = dict[tuple, tuple[torch.Tensor, torch.Tensor]]


def _index_maps(
    w_b: torch.Tensor,
    others: list[tuple[str, Axis]],
    perm: Permutation,
    cache: IndexCache | None = None,
) -> tuple[dict[int, torch.Tensor], list[tuple[str, Axis]]]:
    """The index map of each tensor axis of ``w_b`` that the plain axes in ``others``
    permute, the maps of one tensor axis composed (slices of a concatenation touch
    disjoint entries); and the grouped axes among ``others`` (their parts reordered one
    by one). ``cache`` keeps each axis's map while its group's permutation (a tensor
    replaced, never changed, when the group moves) is the same."""
    index: dict[int, torch.Tensor] = {}
    grouped = []
    for name, ax in others:
        if ax.grouped != 1:
            grouped.append((name, ax))
            continue
        key = (name, ax.identity(), w_b.shape[ax.axis])
        found = None if cache is None else cache.get(key)
        if found is not None and found[0] is perm[name]:
            step = found[1]
        else:
            step = axis_index(ax, perm[name].to(w_b.device), w_b.shape[ax.axis])
            if cache is not None:
                cache[key] = (perm[name], step)
        index[ax.axis] = step if ax.axis not in index else index[ax.axis][step]
    return index, grouped


def _permuted(
    w_b: torch.Tensor,
    others: list[tuple[str, Axis]],
    perm: Permutation,
    cache: IndexCache | None = None,
) -> torch.Tensor:
    """``w_b`` permuted along every axis in ``others`` by its group's permutation: one
    gather per tensor axis (:func:`_index_maps`), then each grouped axis on its own. Pure
    data movement, so the result is exactly that of permuting one axis after the other."""
    index, grouped = _index_maps(w_b, others, perm, cache)
    for dim, idx in index.items():
        w_b = _gather(w_b, dim, idx)
    for name, ax in grouped:
        w_b = permute_axis(w_b, ax, perm[name])
    return w_b


class _Term(NamedTuple):
    """A cached term: its value, the visit that computed it, the index map B was gathered
    by where its permutation is along one other tensor axis only (``None`` elsewhere),
    and how many entries of that map have moved since the term was last computed whole."""

    value: torch.Tensor
    computed_at: int
    index: torch.Tensor | None
    drift: int


class GroupSimilarity(NamedTuple):
    """A group's similarity under the current permutations, in two parts.

    ``linear``: the terms of tensors the group permutes along one axis; ``<linear, P>``
    is their exact inner product for the group's permutation ``P``. ``loops``: the terms
    of tensors it permutes along two axes (``None`` where there are none), each taken
    with the group's current permutation on the other axis: the gradient of their
    (quadratic) inner product at the current permutation. Algorithm 1 of Git Re-Basin
    solves ``linear + loops``.
    """

    linear: torch.Tensor
    loops: torch.Tensor | None


class Similarities:
    """Each group's similarity matrix for weight matching between ``state_a`` and
    ``state_b`` (parameters only), from terms cached per axis (see the module docstring).

    ``of(name, perm, changed_at, visit)`` gives group ``name``'s similarity under the
    current ``perm``, where ``changed_at`` maps each group to the visit at which its
    permutation last changed; ``depends(name)`` names the groups it depends on.
    """

    def __init__(
        self,
        spec: PermutationSpec,
        state_a: dict[str, torch.Tensor],
        state_b: dict[str, torch.Tensor],
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.spec, self.state_a, self.state_b = spec, state_a, state_b
        # per parameter: every (group, axis) that permutes it
        self.axes_of_key: dict[str, list[tuple[str, Axis]]] = {}
        for name, group in spec.groups.items():
            for ax in group.axes:
                if ax.key in state_a:
                    self.axes_of_key.setdefault(ax.key, []).append((name, ax))
        # per group: its axes, each with the (group, axis) pairs that move entries of its
        # slice of the tensor along other axes
        self.terms = {
            name: [
                (
                    ax,
                    [
                        (o, other)
                        for o, other in self.axes_of_key[ax.key]
                        if other.identity() != ax.identity() and _moves(other, o, ax, name, spec)
                    ],
                )
                for ax in group.axes
                if ax.key in state_a
            ]
            for name, group in spec.groups.items()
        }
        # per group: the tensors it permutes along two axes, each with all its axes
        self.loop_tensors = {
            name: {
                ax.key: self.axes_of_key[ax.key]
                for ax, others in terms
                if any(o == name for o, _ in others)
            }
            for name, terms in self.terms.items()
        }
        self.cache: dict[tuple[str, int], _Term] = {}
        self.indices: IndexCache = {}
        self.loop_a: dict[str, torch.Tensor] = {}  # A's loop tensors in float64, flattened
        self.room = cache_bytes

    def _fresh(self, name: str, k: int, changed_at: dict[str, int]) -> torch.Tensor | None:
        """The cached term ``k`` of group ``name``, if no group it depends on changed since
        it was computed (a change at the same visit came after it)."""
        found = self.cache.get((name, k))
        if found is None:
            return None
        if any(changed_at.get(o, 0) >= found.computed_at for o, _ in self.terms[name][k][1]):
            return None
        return found.value

    def depends(self, name: str) -> set[str]:
        """The groups whose permutations enter group ``name``'s similarity (the group
        itself, where it permutes two axes of one tensor)."""
        return {o for _, others in self.terms[name] for o, _ in others}

    def loop_value(self, name: str, perm: Permutation) -> float:
        """The inner product (float64) of A and B over the tensors group ``name`` permutes
        along two axes, B permuted along all axes by ``perm``: with ``<linear, P>``, the
        group's exact share of the objective for ``perm[name] = P``."""
        total = 0.0
        for key, axes in self.loop_tensors[name].items():
            if key not in self.loop_a:
                self.loop_a[key] = self.state_a[key].double().flatten()
            w_b = _permuted(self.state_b[key], axes, perm, self.indices)
            total += torch.dot(self.loop_a[key], w_b.double().flatten()).item()
        return total

    def of(
        self, name: str, perm: Permutation, changed_at: dict[str, int], visit: int
    ) -> GroupSimilarity:
        """Group ``name``'s similarity under ``perm``; new terms are cached while the
        cache has room."""
        size = self.spec.groups[name].size
        device = next(iter(self.state_a.values())).device
        linear = torch.zeros(size, size, device=device)
        loops = torch.zeros(size, size, device=device) if self.loop_tensors[name] else None
        for k, (ax, _) in enumerate(self.terms[name]):
            term = self._fresh(name, k, changed_at)
            if term is None:
                term = self._term(name, k, perm, visit)
            if ax.key in self.loop_tensors[name]:
                loops += term
            else:
                linear += term
        return GroupSimilarity(linear, loops)

    def _term(self, name: str, k: int, perm: Permutation, visit: int) -> torch.Tensor:
        """Term ``k`` of group ``name`` under ``perm``, computed and cached while the cache
        has room.

        Where B is permuted along one other tensor axis only, the term is ``sum_j A[.., j]
        B[.., index[j]]^T`` over that axis; when few entries of ``index`` moved since the
        cached term, only theirs are added: ``A[.., moved] (B[.., new index] - B[.., old
        index])^T`` (later passes move a few percent of the channels). The update is
        exact but rounds differently from a whole computation. It is taken while it
        moves at most :data:`UPDATE_SHARE` of the axis and, since the term was last
        computed whole, at most the axis's length in all, so that the rounding it adds
        stays within that of a whole computation's float32 sums
        (``tests/test_weight_matching_cache.py``).
        """
        ax, others = self.terms[name][k]
        size = self.spec.groups[name].size
        w_a, w_b, local = self.state_a[ax.key], self.state_b[ax.key], ax
        index = None
        if ax.grouped == 1 and all(o.grouped == 1 and o.axis != ax.axis for _, o in others):
            # B permuted along the other axes only where A's slice meets it
            (w_a, local), (w_b, _) = _narrow(w_a, ax, size), _narrow(w_b, ax, size)
            maps, _ = _index_maps(w_b, others, perm, self.indices)
            if len(maps) == 1:
                ((dim, index),) = maps.items()
        old = self.cache.pop((name, k), None)
        if old is not None:
            self.room += old.value.numel() * old.value.element_size()
        if index is not None and old is not None and old.index is not None:
            moved = (index != old.index).nonzero().squeeze(1)
            drift = old.drift + len(moved)
            if len(moved) <= UPDATE_SHARE * len(index) and drift <= len(index):
                change = _gather(w_b, dim, index[moved]) - _gather(w_b, dim, old.index[moved])
                value = old.value.add_(_similarity(_gather(w_a, dim, moved), change, local, size))
                return self._keep(name, k, _Term(value, visit, index, drift))
        value = _similarity(w_a, _permuted(w_b, others, perm, self.indices), local, size)
        return self._keep(name, k, _Term(value, visit, index, 0))

    def _keep(self, name: str, k: int, term: _Term) -> torch.Tensor:
        """Cache ``term`` as group ``name``'s term ``k`` if it fits; its value."""
        size = term.value.numel() * term.value.element_size()
        if size <= self.room:
            self.cache[name, k] = term
            self.room -= size
        return term.value
