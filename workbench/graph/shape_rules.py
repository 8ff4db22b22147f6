"""Rules for the ops that move, divide or join the channel axis: ``permute``,
``transpose``, ``flatten``, reductions, ``cat``, ``stack``,
``split``/``chunk`` with the ``getitem`` nodes that take a split apart, and slicing
(``x[:, a:b]``, ``narrow``). A slice or a split's piece becomes a group of its own, that
slice of its parent's group, divided when the spec is built
(:mod:`workbench.graph.slicing`). Same contract as :mod:`workbench.graph.rules`, whose
tables list them; ``view``/``reshape`` are :mod:`workbench.graph.reshape_rules`'."""

from __future__ import annotations

from typing import Any

from torch import fx, nn

from workbench.graph.labels import GraphLabels, Label, Segment
from workbench.graph.trace import call_argument, shape_of

__all__ = [
    "cat",
    "expand",
    "flatten",
    "flatten_call",
    "flatten_module",
    "getitem",
    "index_tensor",
    "narrow",
    "norm",
    "pad",
    "permute",
    "reduce",
    "reduce_over",
    "split",
    "squeeze",
    "stack",
    "transpose",
    "unsqueeze",
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
    """``split``/``chunk`` along the channel axis, into equal or unequal pieces (sizes
    known from the trace, as in ``torch.split(x, [22, 21, 21], 1)``): piece ``k`` is the
    slice of the entries from the sum of the sizes before it (:meth:`GraphLabels.sliced`),
    a group of its own that owns its channels of the producer once the spec is built
    (:mod:`workbench.graph.slicing`: a ``cat`` in reverse), so a permutation moves
    channels within their piece. Along another axis each piece keeps the input's label. A
    piece that would cut a flattened channel's block is opaque. The node itself is a
    tuple: its pieces' labels are kept for the ``getitem`` nodes that take them apart."""
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
    sizes = [m.shape[dim] for m in meta]
    starts = [sum(sizes[:k]) for k in range(len(sizes))]
    if any(b.cut(inp, a, a + n) is None for a, n in zip(starts, sizes, strict=True)):
        b.opaque(node, f"{_name(node)} through a flattened channel's block")
        return
    equal = len(set(sizes)) == 1
    b.pieces[node] = [
        b.sliced(inp, a, a + n, f"[{k}/{len(sizes)}]" if equal else "")
        for k, (a, n) in enumerate(zip(starts, sizes, strict=True))
    ]


def getitem(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``pieces[k]`` of a split: the piece's label. Indexing a tensor: see
    :func:`index_tensor`."""
    source, index = node.args[0], node.args[1]
    if isinstance(source, fx.Node) and source in b.pieces and isinstance(index, int):
        return b.pieces[source][index]
    return index_tensor(b, node, b.label_of(source), index)


def index_tensor(b: GraphLabels, node: fx.Node, inp: Label | None, index: Any) -> Label | None:
    """``x[...]`` with ints, static slices, ``None`` and ``...``: a slice with step 1 along
    the channel axis (``x[:, a:b]``, ``x[:, :k]``) keeps the channels it covers
    (:meth:`GraphLabels.sliced`); indexing other axes keeps the label, on the axis the
    channels land on (``x[0]`` drops the batch axis, ``x[:, None]`` adds one). An int
    index, a step or a computed bound on the channel axis, tensor indices, and a slice
    through a flattened channel's block are opaque."""
    if inp is None:
        return b.opaque(node, "indexing an unlabelled tensor")
    items = index if isinstance(index, tuple) else (index,)
    if not all(_static_index(item) for item in items):
        return b.opaque(node, "indexing with tensors or computed indices")
    ndim = len(shape_of(node.args[0]))
    used = sum(item is not None and item is not Ellipsis for item in items)
    expanded = []
    for item in items:
        expanded += [slice(None)] * (ndim - used) if item is Ellipsis else [item]
    axis, out_axis = 0, 0
    for item in expanded:
        if item is None:
            out_axis += 1
        elif axis == inp.dim:
            return _index_channels(b, node, Label(out_axis, inp.segments), item)
        else:
            axis += 1
            out_axis += isinstance(item, slice)
    return Label(out_axis + inp.dim - axis, inp.segments)  # the index ends before the channels


def _index_channels(b: GraphLabels, node: fx.Node, inp: Label, item: Any) -> Label | None:
    """The label of ``item`` (an int or a static slice) taken along ``inp``'s axis."""
    if not isinstance(item, slice):
        return b.opaque(node, "an int index on the channel axis")
    start, stop, step = item.indices(inp.width)
    if step != 1:
        return b.opaque(node, "a slice with a step along the channel axis")
    label = b.sliced(inp, start, max(start, stop))
    return label if label is not None else b.opaque(node, "a slice through a channel's block")


def _static_index(item: Any) -> bool:
    if isinstance(item, slice):
        return all(v is None or isinstance(v, int) for v in (item.start, item.stop, item.step))
    return (
        item is None or item is Ellipsis or (isinstance(item, int) and not isinstance(item, bool))
    )


def narrow(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``torch.narrow(x, dim, start, length)`` / ``x.narrow``: along the channel axis, the
    slice ``x[:, start:start + length]`` (see :func:`index_tensor`); along another axis the
    label is kept. A computed start is opaque along the channel axis."""
    inp = b.input_label(node)
    if inp is None:
        return b.fixed(node)
    in_shape = shape_of(node.args[0])
    dim = call_argument(node, 1, "dim", 0) % len(in_shape)
    if dim != inp.dim:
        return inp
    start, length = call_argument(node, 2, "start", 0), call_argument(node, 3, "length", 0)
    if not (isinstance(start, int) and isinstance(length, int)):
        return b.opaque(node, "narrow with a computed start or length")
    start %= in_shape[dim]
    label = b.sliced(inp, start, start + length)
    return label if label is not None else b.opaque(node, "a slice through a channel's block")


def _name(node: fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def _sequence(b: GraphLabels, node: fx.Node) -> list[Label | None] | None:
    """The labels of the tensors that ``cat``/``stack`` join (the pieces of a split, for
    ``cat(x.chunk(2))``); None for a sequence computed some other way."""
    if isinstance(node.args[0], fx.Node):
        return list(b.pieces[node.args[0]]) if node.args[0] in b.pieces else None
    return [b.label_of(t) for t in node.args[0]]


def cat(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``torch.cat`` along the channel axis concatenates the inputs' groups (a consumer's
    input axis is then split into slices, one per group); along another axis the inputs'
    groups are united. An unlabelled input freezes the others."""
    labels = _sequence(b, node)
    if labels is None:
        return b.opaque(node, "cat of a computed sequence")
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


def stack(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``torch.stack`` joins its inputs along a new axis (selective-kernel branches): what
    follows may sum or weigh channel ``c`` of every input together, so their groups are
    united, as for a ``cat`` along another axis; the channel axis shifts by one when the
    new axis comes at or before it. An unlabelled input freezes the others."""
    labels = _sequence(b, node)
    if labels is None:
        return b.opaque(node, "stack of a computed sequence")
    if any(lab is None for lab in labels):
        for lab in labels:
            b.freeze(lab, "stacked with an unlabelled tensor")
        return b.fixed(node)
    dim = call_argument(node, 1, "dim", 0) % len(shape_of(node))
    first = labels[0]
    if all(lab.dim == first.dim for lab in labels) and all(
        b.unite(first, lab, "stacked with fixed channels") for lab in labels[1:]
    ):
        return Label(first.dim + (dim <= first.dim), first.segments)
    return b.opaque(node, "stack of differently labelled tensors")


def expand(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``x.expand(...)`` / ``x.expand_as(y)``: broadcasting repeats axes of size one and
    may add leading axes; an axis longer than one keeps its entries, so the channels stay
    on their axis, shifted by the axes added in front."""
    inp = b.input_label(node)
    if inp is None:
        return None
    return Label(inp.dim + len(shape_of(node)) - len(shape_of(node.args[0])), inp.segments)


def unsqueeze(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``x.unsqueeze(d)`` / ``torch.unsqueeze``: a new axis of size one at ``d``; the
    channel axis moves one on when the new axis comes at or before it."""
    inp = b.input_label(node)
    if inp is None:
        return None
    d = call_argument(node, 1, "dim", 0) % len(shape_of(node))
    return Label(inp.dim + (d <= inp.dim), inp.segments)


def squeeze(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``x.squeeze(d)`` / ``torch.squeeze`` (``d`` an int, a tuple, or every axis): axes of
    size one go; the channel axis moves back by those before it. Squeezing the channel
    axis itself (one channel) is opaque."""
    inp = b.input_label(node)
    if inp is None:
        return None
    in_shape = shape_of(node.args[0])
    dims = call_argument(node, 1, "dim", None)
    if dims is None:
        dims = range(len(in_shape))
    dims = {
        d % len(in_shape) for d in (dims if isinstance(dims, (tuple, list, range)) else (dims,))
    }
    gone = {d for d in dims if in_shape[d] == 1}
    if inp.dim in gone:
        return b.opaque(node, "squeeze of the channel axis")
    return Label(inp.dim - sum(d < inp.dim for d in gone), inp.segments)


def pad(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``F.pad(x, pad)`` pads the last ``len(pad) / 2`` axes: channelwise unless the
    channel axis is one of them (then opaque)."""
    inp = b.input_label(node)
    if inp is None:
        return None
    padded = len(call_argument(node, 1, "pad", ())) // 2
    if inp.dim >= len(shape_of(node)) - padded:
        return b.opaque(node, "padding along the channel axis")
    return inp


def transpose(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``x.transpose(d0, d1)`` / ``torch.transpose`` / ``swapaxes``: the channels move with
    their axis."""
    inp = b.input_label(node)
    if inp is None:
        return b.fixed(node)
    ndim = len(shape_of(node))
    d0, d1 = call_argument(node, 1, "dim0", 0) % ndim, call_argument(node, 2, "dim1", 1) % ndim
    swapped = {d0: d1, d1: d0}
    return Label(swapped.get(inp.dim, inp.dim), inp.segments)


def reduce(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``mean``/``sum``/``amax``/``amin``/``var``/``std`` over ``dim`` (argument 1): see
    :func:`reduce_over`."""
    return reduce_over(b, node, call_argument(node, 1, "dim", None))


def norm(b: GraphLabels, node: fx.Node, _target: Any) -> Label | None:
    """``x.norm(p, dim)``, ``torch.norm``, ``torch.linalg.vector_norm`` over ``dim``
    (argument 2): see :func:`reduce_over`."""
    return reduce_over(b, node, call_argument(node, 2, "dim", None))


def reduce_over(b: GraphLabels, node: fx.Node, dims: Any) -> Label | None:
    """A reduction over ``dims``: reducing over other axes keeps the channels (their axis
    index shifts when dims are dropped; each entry of the channel axis, a block of a
    channel's included, stays where it was); reducing over the channel axis or everything
    gives a value without channels, invariant to any permutation of them (no label)."""
    inp = b.input_label(node)
    in_shape, out_shape = shape_of(node.args[0]), shape_of(node)
    if inp is None or dims is None:
        return None  # a reduction of a value without channels, or of everything
    dims = {d % len(in_shape) for d in (dims if isinstance(dims, (tuple, list)) else (dims,))}
    if inp.dim in dims:
        return None
    kept = len(out_shape) == len(in_shape)
    new_dim = inp.dim if kept else inp.dim - sum(d < inp.dim for d in dims)
    return Label(new_dim, inp.segments)
