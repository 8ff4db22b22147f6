"""The rule for ``view``/``reshape``: which output axis the channels land on, and how they
are regrouped (kept, flattened into blocks, unflattened into united pieces). Same contract
as :mod:`workbench.graph.rules`, whose tables list it."""

from __future__ import annotations

import math
from typing import Any

from torch import fx

from workbench.graph.labels import GraphLabels, Label, Segment
from workbench.graph.trace import shape_of

__all__ = ["reshape"]


def reshape(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``view``/``reshape`` that keeps the entries before the channel axis (however the
    axes before it are grouped, and with axes of size one added or dropped). Entries are laid
    out row-major, so with ``C`` entries on the channel axis and ``rest`` after it, the
    output axes from the channel axis's position on may be

    * ``C``, then axes of ``rest`` entries: the label stays (axes after it regrouped);
    * ``C * inner``, then axes of ``rest / inner``: each channel becomes a block of
      ``inner`` consecutive entries, as in :func:`flatten`;
    * ``(k, C / k)``, then axes of ``rest``: the channels unflatten into ``k`` pieces of
      ``C / k`` along the last of the two (a selective-kernel attention's ``(N, 2C)``
      viewed as ``(N, 2, C)``). Piece ``j`` is the slice ``[j C / k, (j + 1) C / k)``,
      and all pieces are united: the same output channel indexes each;
    * the reverse, ``m`` entries of the axes before the channels merged with them into
      one axis (ResNeSt's radix softmax, ``(N, 2, C)`` viewed as ``(N, 2C)``): ``m``
      copies of the channels side by side, like a ``cat`` of the same tensor.

    Anything else is opaque, among it ``(C / k, k)``, which would tie consecutive channels
    into fixed tuples. A channel shuffle (``(N, g, C / g, H, W)``, transpose, back to
    ``(N, C, H, W)``) passes these rules exactly, each channel of the result a block of
    ``g`` entries, one per piece. ShuffleNet still freezes each block's branch output: the
    next block passes half of the shuffled tensor through and shuffles it again with that
    output, which would need its channels to move in tuples of ``g`` as well; followed
    further, a channel's entries end up strided across the tensor, which no axis slice
    (consecutive channels, each a block of consecutive entries) can express."""
    inp = b.input_label(node)
    in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
    if inp is None:
        return b.fixed(node)
    width, rest = in_shape[inp.dim], math.prod(in_shape[inp.dim + 1 :])
    c = _channel_position(in_shape, inp.dim, out_shape)
    if c is None:
        merged = _merged_position(in_shape, inp.dim, out_shape)
        if merged is None:
            return b.opaque(node, f"reshape {in_shape} -> {out_shape}")
        c, copies = merged
        return Label(c, inp.segments * copies)
    after = out_shape[c + 1 :]
    if out_shape[c] == width and math.prod(after) == rest:
        return Label(c, inp.segments)
    inner = out_shape[c] // width
    if out_shape[c] == width * inner and math.prod(after) * inner == rest:
        return Label(c, tuple(Segment(s.group, s.size, s.block * inner) for s in inp.segments))
    if after and out_shape[c] * after[0] == width and math.prod(after[1:]) == rest:
        return _unflatten(b, node, inp, out_shape[c], after[0], c + 1)
    return b.opaque(node, f"reshape {in_shape} -> {out_shape}")


def _channel_position(
    in_shape: tuple[int, ...], dim: int, out_shape: tuple[int, ...]
) -> int | None:
    """The output axis where the channels of input axis ``dim`` begin: the one with as
    many entries before it as the input has before ``dim`` (axes of size one may come and
    go: ``(N, 1, C, 1)`` viewed as ``(N, C, 1, 1)``), preferring an axis of the channels'
    width, then any axis longer than one. None when no axis starts there."""
    before = math.prod(in_shape[:dim])
    starts = [i for i in range(len(out_shape)) if math.prod(out_shape[:i]) == before]
    for fits in (lambda n: n == in_shape[dim], lambda n: n != 1, lambda n: True):
        found = [i for i in starts if fits(out_shape[i])]
        if found:
            return found[0]
    return None


def _merged_position(
    in_shape: tuple[int, ...], dim: int, out_shape: tuple[int, ...]
) -> tuple[int, int] | None:
    """``(axis, m)`` when the ``m`` entries of the input axes just before ``dim`` merge
    with the channels into output ``axis`` (``(N, k, C)`` viewed as ``(N, k C)``), the
    axes after the channels kept in number of entries; else None."""
    rest = math.prod(in_shape[dim + 1 :])
    for start in range(dim):
        before, m = math.prod(in_shape[:start]), math.prod(in_shape[start:dim])
        for axis in range(len(out_shape)):
            if (
                math.prod(out_shape[:axis]) == before
                and out_shape[axis] == m * in_shape[dim]
                and math.prod(out_shape[axis + 1 :]) == rest
            ):
                return axis, m
    return None


def _unflatten(
    b: GraphLabels, node: fx.Node, inp: Label, k: int, size: int, dim: int
) -> Label | None:
    """The channel axis viewed as ``(k, size)``: ``k`` slices of ``size`` entries, united
    (see :func:`reshape`); the channels lie on the second of the two axes, ``dim``."""
    if any(b.cut(inp, j * size, (j + 1) * size) is None for j in range(k)):
        return b.opaque(node, "unflatten through a flattened channel's block")
    pieces = [b.sliced(inp, j * size, (j + 1) * size) for j in range(k)]
    if all(b.unite(pieces[0], p, "unflattened with fixed channels") for p in pieces[1:]):
        return Label(dim, pieces[0].segments)
    return b.opaque(node, f"unflatten into {k} pieces whose channels differ in their blocks")
