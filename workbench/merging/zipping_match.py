"""The greedy matching of ZipIt! (:mod:`workbench.merging.zipping` describes it): which of
N models' features share a merged feature, and the merge and unmerge matrices."""

from __future__ import annotations

import math

import torch

from workbench.alignment.dead import TIE_BREAK
from workbench.alignment.group_statistics import GroupStatistics

__all__ = ["correlation_of", "merge_matrices", "zip_features"]


def zip_features(
    correlation: torch.Tensor, num_models: int, *, within_weight: float, within_budget: float
) -> tuple[torch.Tensor, list[int], int]:
    """The greedy ZipIt! matching of ``num_models`` models' features (module docstring).

    ``correlation`` is the (N C x N C) correlation of the stacked features, model by model.
    Returns each feature's merged feature (a LongTensor of N C labels in ``[0, C)``, merged
    features ordered by their first feature, so model 0's order where it can), the
    within-model merges of each model, and the merges taken beyond the budget.
    """
    total = correlation.shape[0]
    size = total // num_models
    link = correlation.detach().double().cpu().clone()
    model_of = torch.arange(total) // size
    present = torch.zeros(total, num_models, dtype=torch.bool)
    present[torch.arange(total), model_of] = True
    active = torch.ones(total, dtype=torch.bool)
    label = torch.arange(total)
    budget = math.floor(within_budget * (num_models - 1) * size / num_models + 1e-9)
    within = torch.zeros(num_models, dtype=torch.long)
    exhausted = within >= budget
    overruns = 0

    def scores(rows: torch.Tensor, blocked: bool = True) -> torch.Tensor:
        """The merge scores of clusters ``rows`` with every cluster (-inf: not allowed)."""
        p = present.double()
        overlap = (p[rows] @ p.T) > 0
        s = link[rows]
        s = torch.where(overlap, torch.minimum(within_weight * s, s), s)
        invalid = ~active[None, :] | ~active[rows, None]
        invalid |= rows[:, None] == torch.arange(total)[None, :]
        if blocked:
            invalid |= (p[rows] * exhausted.double()) @ p.T > 0
        return s.masked_fill(invalid, -math.inf)

    everything = torch.arange(total)
    candidates = scores(everything)
    for _ in range((num_models - 1) * size):
        best = int(torch.argmax(candidates))
        if candidates.view(-1)[best] == -math.inf:  # only within-model merges are left
            best, overruns = int(torch.argmax(scores(everything, blocked=False))), overruns + 1
        i, j = divmod(best, total)
        shared = present[i] & present[j]
        within += shared.long()
        present[i] |= present[j]
        present[j] = False
        active[j] = False
        link[i] = torch.minimum(link[i], link[j])
        link[:, i] = link[i]
        label[label == j] = i
        now = within >= budget
        if not torch.equal(now, exhausted):
            exhausted = now
            candidates = scores(everything)
        else:
            row = scores(torch.tensor([i]))[0]
            candidates[i], candidates[:, i] = row, row
            candidates[j], candidates[:, j] = -math.inf, -math.inf
    roots = torch.unique(label)  # sorted: each merged feature's first feature
    return torch.searchsorted(roots, label), within.tolist(), overruns


def merge_matrices(
    labels: torch.Tensor, num_models: int
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Each model's merge matrix ``M_i`` (C x C_i, rows weighted by 1/k) and unmerge
    matrix ``U_i`` (C_i x C) from the merged feature of each of the N C features."""
    size = len(labels) // num_models
    counts = torch.bincount(labels, minlength=size).double()
    unmerge = [
        torch.nn.functional.one_hot(part, size).double() for part in labels.view(num_models, size)
    ]
    return [u.T / counts[:, None] for u in unmerge], unmerge


def correlation_of(stats: GroupStatistics) -> torch.Tensor:
    """The correlation of all the stacked features, model by model
    (:meth:`GroupStatistics.correlation`). Dead units (a ReLU that never fires) correlate 0
    with live units and about 1 with each other, a little less the more their weights
    differ (:mod:`workbench.alignment.dead`): merging two dead units changes nothing on
    the data, so they are merged first instead of taking merged features from live
    ones, and each with its twin where it has one (a permuted copy)."""
    count = stats.num_models
    rows = []
    for i in range(count):
        blocks = []
        for j in range(count):
            both_dead = torch.outer(stats.dead(i), stats.dead(j))
            blocks.append(stats.correlation(i, j) + torch.where(both_dead, 1.0 - TIE_BREAK, 0.0))
        rows.append(torch.cat(blocks, 1))
    return torch.cat(rows, 0)
