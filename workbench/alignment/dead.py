"""Units that never fire on the data: how every correlation-based matcher pairs them.

A ReLU unit that is never positive on the statistics data (or any unit that never varies)
has no correlation with anything: activation matching, ZipIt!, CCA and OT fusion see a row
of zeros, and an assignment solver pairs such units arbitrarily. On the data that does not
matter, but a dead unit may fire on other images, and merging it with the wrong partner
changes the merged model there: merging a model with a permuted copy of itself would not
give the model back off the statistics data.

The rule: dead units are paired by their weights. A unit's **signature** is the sorted
values of every parameter and buffer entry the group gives it (its row in the producing
layer, its bias and BatchNorm entries, its column in each consumer), each axis sorted on
its own: sorting makes the signature independent of how the neighbouring groups are
ordered, so a unit and its twin in a permuted copy have equal signatures. Two dead units
are as similar as their signatures (``1 - |s_a - s_b| / (|s_a| + |s_b|)``, 1 for equal
weights); the matchers add this, scaled far below any real correlation
(:data:`TIE_BREAK`), to the pairs of dead units only, so that live units are matched as
before and dead ones by their weights. Without signatures (models of different widths,
whose rows differ in length) the tie-break is the identity.
"""

from __future__ import annotations

import torch
from torch import nn

from workbench.graph import PermutationGroup
from workbench.graph.transforms import channel_block

__all__ = ["TIE_BREAK", "dead_units", "signature_similarity", "unit_signatures"]

# How much the weight similarity of two dead units adds to their score: far below any
# correlation that means something, far above float noise in a float64 assignment.
TIE_BREAK = 1e-6
# A unit whose activation spread is at most this share of the largest at its group (over
# all the models measured) never varies on the data.
DEAD = 1e-6


def dead_units(std: torch.Tensor, largest: torch.Tensor | float) -> torch.Tensor:
    """Which units never vary on the data: a standard deviation at most :data:`DEAD`
    times ``largest`` (the group's largest over all the models). The floor is relative,
    so that a unit that fires rarely, however small its activations, stays live."""
    floor = DEAD * torch.as_tensor(largest, dtype=std.dtype).clamp_min(torch.finfo(std.dtype).tiny)
    return std <= floor


def unit_signatures(
    model: nn.Module, group: PermutationGroup, units: torch.Tensor | None = None
) -> torch.Tensor:
    """Each unit's signature ``(size, length)`` in float64: the entries the group gives
    it along every axis (grouped-convolution inputs aside), each axis sorted on its own.
    ``units`` (a boolean mask): the signatures of those units only, ``(units.sum(),
    length)`` (only dead units are ever compared; sorting every row of a wide network's
    weights costs more than its statistics pass)."""
    state = model.state_dict()
    keep = torch.ones(group.size, dtype=torch.bool) if units is None else units.cpu()
    parts = []
    for ax in group.axes:
        if ax.grouped != 1 or ax.key not in state:
            continue
        rows = channel_block(state[ax.key].detach().cpu(), ax, group.size)[0][keep]
        parts.append(rows.flatten(1).sort(dim=1).values.double())  # exact in any dtype
    if not parts:
        return torch.zeros(int(keep.sum()), 0, dtype=torch.float64)
    return torch.cat(parts, 1)


# Pairs of signatures closer than this share of their norms have their distance measured
# again directly (see signature_similarity).
_NEAR = 1e-6


def signature_similarity(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """``1 - |r - c| / (|r| + |c|)`` for every pair of signatures: 1 for equal weights,
    towards 0 for unrelated ones.

    Distances come from matrix products (``|r|^2 + |c|^2 - 2 r.c``, float64: a wide
    network's signatures are hundreds of thousands of entries long, and the direct
    differences of every pair cost minutes), exact to about 1e-8 of the norms; the pairs
    that close (twins: a unit and its copy) are measured again as direct differences, so
    that equal weights give exactly 1."""
    distance = torch.cdist(rows, columns, compute_mode="use_mm_for_euclid_dist")
    norms = rows.norm(dim=1)[:, None] + columns.norm(dim=1)[None, :]
    near = (distance <= _NEAR * norms).nonzero()
    for start in range(0, len(near), 64):  # a few rows at a time: they may be long
        i, j = near[start : start + 64].unbind(1)
        distance[i, j] = (rows[i] - columns[j]).norm(dim=1)
    return 1.0 - distance / norms.clamp_min(torch.finfo(torch.float64).tiny)
