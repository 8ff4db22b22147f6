"""Permutation specs derived from the traced graph of any ``nn.Module``.

Git Re-Basin and ZipIt! write the table of channel groups by hand per architecture; here
it comes from ``torch.fx``:

* a conv or linear layer starts a new group on its output channels;
* BatchNorm, activations, pooling, dropout and other channel-wise ops carry their input's
  group through unchanged (their per-channel parameters join it);
* a residual ``add`` (or ``mul``) of two tensors unites their groups;
* ``cat`` along channels concatenates groups, so a consumer's input axis is split in slices;
* ``flatten`` expands a channel group into blocks of spatial positions;
* a depthwise convolution ties its output channels to its input channels; a grouped one
  lets its groups move channels only within their blocks;
* a slice, ``narrow`` or split piece along the channels is a group that owns its channels
  of the producer; all slices of the same channels divide them into common intervals;
* ``stack`` unites the groups it stacks; softmax keeps them.

Whatever cannot be proven safe (a slice with a step, a channel shuffle repeated, an
unknown op, a group that reaches the model's output) is left unpermuted and listed in
``spec.report``; it is never silently broken, and the spec verifies itself on the model.

Rooms: :mod:`~workbench.graph.spec` (the data types, JSON-saveable),
:mod:`~workbench.graph.trace` (``torch.fx``), :mod:`~workbench.graph.rules` and
:mod:`~workbench.graph.shape_rules` (one rule per op, in tables),
:mod:`~workbench.graph.build` (the walk), :mod:`~workbench.graph.slicing` (dividing sliced
groups), :mod:`~workbench.graph.verify` (self-verification).
"""

from workbench.graph.build import example_input_for, permutation_spec, resolve_spec
from workbench.graph.spec import (
    Axis,
    GraphTraceError,
    LayerPoint,
    PermutationGroup,
    PermutationSpec,
)

__all__ = [
    "Axis",
    "GraphTraceError",
    "LayerPoint",
    "PermutationGroup",
    "PermutationSpec",
    "example_input_for",
    "permutation_spec",
    "resolve_spec",
]
