"""Rules for the ops that move, divide or join the channel axis: ``permute``, ``flatten``,
``view``/``reshape``, reductions, ``cat``, and ``split``/``chunk`` with the ``getitem``
nodes that take a split apart. Same contract as :mod:`workbench.graph.rules`, whose tables
list them."""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from workbench.graph.labels import FIXED, GraphLabels, Label, Segment
from workbench.graph.trace import call_argument, shape_of

__all__ = [
    "cat",
    "flatten",
    "flatten_call",
    "flatten_module",
    "getitem",
    "permute",
    "reduce",
    "reshape",
    "split",
]


def permute(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``x.permute(...)`` / ``torch.permute``: the channels move with their axis (to the
    position the axis takes in the output)."""
    inp = b.input_label(node)
    if inp is None:
        return b.fixed(node)
    dims = call_argument(node, 1, "dims", None)
    if isinstance(dims, int):  # x.permute(0, 2, 3, 1): the dims as separate arguments
        dims = node.args[1:]
    ndim = len(shape_of(node))
    dims = [d % ndim for d in dims]
    return Label(dims.index(inp.dim), inp.segments)


def flatten_module(b: GraphLabels, node: fx.Node, module: nn.Flatten) -> Label | None:
    """``nn.Flatten``: see :func:`flatten`."""
    return flatten(b, node, b.input_label(node), module.start_dim, module.end_dim)


def flatten_call(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``torch.flatten`` / ``x.flatten``: see :func:`flatten`."""
    start, end = call_argument(node, 1, "start_dim", 0), call_argument(node, 2, "end_dim", -1)
    return flatten(b, node, b.input_label(node), start, end)


def flatten(b: GraphLabels, node: fx.Node, inp: Label | None, start: int, end: int) -> Label | None:
    """Flattening from the channel axis on expands each channel into a block of
    consecutive entries (its spatial positions); flattening axes before or after the
    channel axis only moves it. Merging the channel axis with earlier axes is opaque."""
    in_shape = shape_of(node.args[0])
    ndim = len(in_shape)
    start, end = start % ndim, end % ndim
    if inp is None:
        return b.fixed(node)
    if start > inp.dim or end < inp.dim:
        return Label(inp.dim - max(0, end - start) * (inp.dim > end), inp.segments)
    if start != inp.dim:
        return b.opaque(node, "flatten that merges the channel axis with earlier axes")
    block = 1
    for size in in_shape[inp.dim + 1 : end + 1]:
        block *= size
    return Label(inp.dim, tuple(Segment(s.group, s.size, s.block * block) for s in inp.segments))


def split(b: GraphLabels, node: fx.Node, _target: Any) -> None:
    """``split``/``chunk`` into equal pieces along the channel axis: each piece starts a
    group of its own, and when the spec is built the split group's axes are divided among
    the pieces (:meth:`~workbench.graph.build.Builder.divide_splits`: a ``cat`` in
    reverse), so a permutation moves channels within their piece. Along another axis each
    piece keeps the input's label. Unequal pieces are opaque. The node itself is a tuple:
    its pieces' labels are kept for the ``getitem`` nodes that take them apart."""
    inp = b.input_label(node)
    meta = node.meta.get("tensor_meta")
    if inp is None or not isinstance(meta, (tuple, list)):
        b.opaque(node, f"{_name(node)} of an unlabelled tensor")
        return
    ndim = len(shape_of(node.args[0]))
    dim = call_argument(node, 2, "dim", 0) % ndim
    if dim != inp.dim:
        b.pieces[node] = [inp] * len(meta)
        return
    sizes = {m.shape[dim] for m in meta}
    (seg,) = inp.segments if len(inp.segments) == 1 else (None,)
    if len(sizes) != 1 or seg is None or seg.group == FIXED or (sizes.pop() % seg.block):
        b.opaque(node, f"{_name(node)} into unequal or unaligned pieces")
        return
    share = seg.size // len(meta)
    source, n = b.producers[seg.group][0], len(meta)
    pieces = [b.new_group(share, f"{source}[{k}/{n}]") for k in range(n)]
    b.splits.append((seg.group, pieces))
    b.pieces[node] = [Label(dim, (Segment(p, share, seg.block),)) for p in pieces]
    return


def getitem(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``pieces[k]`` of a split: the piece's label. Indexing a tensor (``x[:, :4]``) is
    opaque."""
    source, index = node.args[0], node.args[1]
    if isinstance(source, fx.Node) and source in b.pieces and isinstance(index, int):
        return b.pieces[source][index]
    return b.opaque(node, "indexing or slicing")


def _name(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def cat(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``torch.cat`` along the channel axis concatenates the inputs' groups (a consumer's
    input axis is then split into slices, one per group); along another axis the inputs'
    groups are united. An unlabelled input freezes the others."""
    if isinstance(node.args[0], fx.Node):  # cat(x.chunk(2)): the pieces of a split
        if node.args[0] not in b.pieces:
            return b.opaque(node, "cat of a computed sequence")
        labels = list(b.pieces[node.args[0]])
    else:
        labels = [b.label_of(t) for t in node.args[0]]
    dim = call_argument(node, 1, "dim", 0) % len(shape_of(node))
    if any(lab is None for lab in labels):
        for lab in labels:
            b.freeze(lab, "concatenated with an unlabelled tensor")
        return b.fixed(node)
    if all(lab.dim == dim for lab in labels):
        return Label(dim, tuple(seg for lab in labels for seg in lab.segments))
    first = labels[0]
    if all(lab.dim == first.dim for lab in labels) and all(
        b.unite(first, lab, "cat along another axis") for lab in labels[1:]
    ):
        return first
    return b.opaque(node, "cat of differently labelled tensors")


def reduce(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``mean``/``sum``/``amax``/``amin``: reducing over other axes keeps the channels
    (their axis index shifts when dims are dropped); reducing over the channel axis or
    everything gives a permutation-invariant value."""
    inp = b.input_label(node)
    if inp is None:
        return b.fixed(node)
    dims = call_argument(node, 1, "dim", None)
    in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
    if dims is None:
        return None  # full reduction: a scalar, invariant to any permutation
    dims = {d % len(in_shape) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
    if inp.dim in dims:
        return b.fixed(node)
    if any(s.block != 1 for s in inp.segments):
        return b.opaque(node, "reduction over a flattened channel block")
    kept = len(out_shape) == len(in_shape)
    new_dim = inp.dim if kept else inp.dim - sum(d < inp.dim for d in dims)
    return Label(new_dim, inp.segments)


def reshape(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``view``/``reshape``: the same shape keeps the label; flattening everything from the
    channel axis on is :func:`flatten`; any other reshape is opaque."""
    inp = b.input_label(node)
    in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
    if inp is None:
        return b.fixed(node)
    if out_shape == in_shape:
        return inp
    if len(out_shape) == inp.dim + 1 and out_shape[: inp.dim] == in_shape[: inp.dim]:
        return flatten(b, node, inp, inp.dim, -1)
    return b.opaque(node, f"reshape {in_shape} -> {out_shape}")
