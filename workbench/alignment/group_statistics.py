"""The joint activation statistics of M models at one permutation group: what the
correlation-based matchers (activation matching, CCA, OT, ZipIt!) read, and how units
that never vary on the data are told apart and paired by their weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.alignment.dead import TIE_BREAK, dead_units, signature_similarity

__all__ = ["GroupStatistics"]


@dataclass
class GroupStatistics:
    """Mean and covariance of the stacked activations ``[model_0 | model_1 | ...]`` at one
    group, over ``count`` observations (positions x images). ``sizes``: each model's
    number of channels when the models differ in width (empty: ``size`` each)."""

    size: int
    count: int
    mean: torch.Tensor  # (M * size,) float64
    covariance: torch.Tensor  # (M * size, M * size) float64
    sizes: tuple[int, ...] = ()
    # each model's dead units' signatures (workbench.alignment.dead), in unit order, where
    # the group has dead units and the models' signatures compare; empty otherwise
    signatures: tuple[torch.Tensor, ...] = ()
    # False: each model's own block holds only its variances (a diagonal matrix), as
    # collected with within=False for matchers that need only cross-correlations
    within: bool = True

    @property
    def num_models(self) -> int:
        return len(self.sizes) if self.sizes else len(self.mean) // self.size

    def _span(self, i: int) -> slice:
        sizes = self.sizes or (self.size,) * self.num_models
        return slice(sum(sizes[:i]), sum(sizes[: i + 1]))

    def block(self, i: int, j: int) -> torch.Tensor:
        """Covariance between model ``i``'s and model ``j``'s channels (size x size)."""
        return self.covariance[self._span(i), self._span(j)]

    def std(self, i: int) -> torch.Tensor:
        """Per-channel standard deviation of model ``i``."""
        return self.block(i, i).diagonal().clamp_min(0).sqrt()

    def dead(self, i: int) -> torch.Tensor:
        """Which of model ``i``'s units never vary on the data
        (:func:`~workbench.alignment.dead.dead_units`, relative to the group's largest
        standard deviation over all the models)."""
        largest = self.covariance.diagonal().clamp_min(0).max().sqrt()
        return dead_units(self.std(i), largest)

    def dead_similarity(self, i: int, j: int) -> torch.Tensor:
        """For each pair of dead units of models ``i`` (rows) and ``j`` (columns), the
        similarity of their weights in [0, 1] (1: the same weights up to the order of the
        neighbouring groups); 0 where either unit is live. Without signatures, 1 on the
        diagonal (dead units keep their order)."""
        dead_i, dead_j = self.dead(i), self.dead(j)
        both = torch.outer(dead_i, dead_j)
        if self.signatures:
            similar = torch.zeros(both.shape, dtype=torch.float64)
            rows, columns = dead_i.cpu().nonzero()[:, 0], dead_j.cpu().nonzero()[:, 0]
            found = signature_similarity(self.signatures[i], self.signatures[j])
            similar[rows[:, None], columns[None, :]] = found
        else:
            similar = torch.eye(*both.shape, dtype=torch.float64)
        return torch.where(both, similar.to(both.device), 0.0)

    def correlation(self, i: int = 0, j: int = 1) -> torch.Tensor:
        """Pearson correlation between model ``i``'s channels (rows) and model ``j``'s
        (columns). Units that never vary (:meth:`dead`) correlate 0 with live ones, and
        with each other by :data:`~workbench.alignment.dead.TIE_BREAK` times the
        similarity of their weights, so that every matcher pairs them by their weights
        (a permuted copy's dead units with their twins; see
        :mod:`workbench.alignment.dead`)."""
        std_i, std_j = self.std(i), self.std(j)
        live = torch.outer(~self.dead(i), ~self.dead(j))
        denominator = torch.outer(std_i, std_j).clamp_min(torch.finfo(std_i.dtype).tiny)
        found = torch.where(live, self.block(i, j) / denominator, 0.0)
        return found + TIE_BREAK * self.dead_similarity(i, j)
