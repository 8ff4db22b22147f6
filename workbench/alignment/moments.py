"""Accumulators of means and second moments, combined batch by batch in float64.

:class:`StreamingMoments` is the one accumulator of means and second moments in the
workbench: the joint statistics of models side by side (:class:`JointMoments`, what
:func:`~workbench.alignment.statistics.collect_statistics` gathers at every group), the
per-channel moments that REPAIR and the BatchNorm folding measure (:class:`ChannelMoments`),
and the layer-by-layer statistics of RESET and REPAIR (:mod:`workbench.merging.renorm`)
all combine their batches with it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from workbench.alignment.group_statistics import GroupStatistics

__all__ = ["ChannelMoments", "JointMoments", "Moments", "StreamingMoments", "Workspace"]


class StreamingMoments:
    """Count, mean and sum of squared deviations (``m2``) of a stream of observations of
    C channels, combined batch by batch in float64 with the pairwise update of Chan et al.
    (1979), so a large mean never cancels a small variance across a long pass. ``m2`` is
    per channel, shape (C,); :class:`JointMoments` folds co-moment blocks the same way.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | float = 0.0
        self.m2: torch.Tensor | float = 0.0

    def update(self, n: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Add a batch of ``n`` observations with its own ``mean`` and ``m2`` (any floating
        dtype; accumulated in place, in float64)."""
        if self.count == 0:
            self.mean = mean.to(torch.float64, copy=True)
            self.m2 = m2.to(torch.float64, copy=True)
            self.count = n
            return
        total = self.count + n
        delta = mean.double() - self.mean
        self.m2 += m2
        self.m2.add_(delta.square(), alpha=self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    def variance(self, unbiased: bool = False) -> torch.Tensor:
        """Per-channel variance, biased unless ``unbiased``."""
        if self.count == 0:
            raise ValueError("Cannot measure statistics on an empty dataset.")
        return self.m2 / max(self.count - 1, 1) if unbiased else self.m2 / self.count


Moments = dict[str, tuple[torch.Tensor, torch.Tensor]]  # point -> (mean, std), float64


class ChannelMoments(StreamingMoments):
    """Per-channel mean and variance of a tensor whose channels lie on axis ``dim``, and
    the number of ``batches`` they came from."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.batches = 0

    def add(self, output: torch.Tensor) -> None:
        """Add one batch (any size, one example included; half precision is measured in
        float32)."""
        axis = self.dim % output.ndim
        dims = [d for d in range(output.ndim) if d != axis]
        values = output.float()
        mean = values.mean(dims, keepdim=True)
        # two passes (mean, then squared deviations): as exact as torch.var_mean's, which
        # is several times slower on a small NCHW batch (its reduction skips the channels)
        m2 = (values - mean).square_().sum(dims)
        n = output.numel() // output.shape[axis]
        self.update(n, mean.flatten(), m2.double())
        self.batches += 1

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, standard deviation) over everything added."""
        std = self.variance().clamp_min(0).sqrt()  # raises on an empty dataset
        return self.mean.clone(), std


def _channel_major(activation: torch.Tensor, dim: int) -> torch.Tensor:
    """A (B, C, K) view of an activation whose channels lie on ``dim``: every (b, k) is one
    observation. NCHW maps need no copy; other layouts are made channels-first."""
    if dim == 1 and activation.ndim >= 3:
        return activation.flatten(2).float()
    rows = activation.movedim(dim, -1).reshape(-1, activation.shape[dim])
    return rows.T.unsqueeze(0).float()


# elements of one centered chunk of activations (per model): bounds the pass's temporaries
_CHUNK = 1 << 23
# rows per panel of a symmetric product (see _add_gram), at least
_PANEL = 128


class Workspace:
    """Reused float32 buffers for the centered chunks, one per model, grown as needed.
    A large tensor freshly allocated for every chunk costs its pages' first touch (the
    allocator returns big blocks to the system): on the CPU about three times the copy
    itself. One workspace serves every group of a pass (they run one after another)."""

    def __init__(self) -> None:
        self.buffers: dict[int, torch.Tensor] = {}

    def take(self, slot: int, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """A float32 tensor of ``shape`` on ``device`` for ``slot`` (its values are stale)."""
        numel = math.prod(shape)
        found = self.buffers.get(slot)
        if found is None or found.numel() < numel or found.device != device:
            found = self.buffers[slot] = torch.empty(numel, device=device)
        return found[:numel].view(*shape)


def _centered(view: torch.Tensor, mean: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out`` (C, b, K) filled with a (b, C, K) chunk minus its channels' ``mean``, as
    a (C, b * K) float32 matrix."""
    torch.sub(view.transpose(0, 1), mean.to(out.dtype)[:, None, None], out=out)
    return out.view(view.shape[1], -1)


def _add_gram(out: torch.Tensor, rows: torch.Tensor) -> None:
    """Add ``rows @ rows.T`` to ``out``'s upper triangle (the rest is left as it is): the
    product is symmetric, so only panels on or above the diagonal are formed, about 5/8
    of a full product's work (panels of a quarter of the rows, at least :data:`_PANEL`)."""
    size = rows.shape[0]
    panel = max(_PANEL, -(-size // 4))
    for p in range(0, size, panel):
        for q in range(p, size, panel):
            out[p : p + panel, q : q + panel].addmm_(rows[p : p + panel], rows[q : q + panel].T)


class JointMoments:
    """Mean and co-moments of M models' channels at one group (or any M tensors observed
    side by side: the feature-visualization study's units).

    Each batch is centered on its own mean (a float32 product of raw activations loses
    the (co)variance of channels whose mean is large to cancellation) a chunk of images
    at a time, so the temporaries stay small whatever the batch; its cross-products are
    float32 matrix products accumulated straight into the batch's co-moment blocks (a
    model's block with itself is symmetric: only its upper triangle is formed), and
    batches are combined in float64 by the pairwise update of :class:`StreamingMoments`,
    block by block.

    ``within=False`` keeps only each model's variances, not the covariance among its own
    channels: what a matcher that correlates one model's units with another's needs
    (activation matching, OT), at a fraction of the products (1 of 3 blocks for a pair).
    ``workspace``: the chunks' buffers, shared by the accumulators of one pass.
    """

    def __init__(
        self, sizes: Sequence[int], within: bool = True, workspace: Workspace | None = None
    ) -> None:
        self.sizes, self.within = tuple(sizes), within
        self.workspace = Workspace() if workspace is None else workspace
        starts = [sum(self.sizes[:i]) for i in range(len(self.sizes) + 1)]
        self.spans = [slice(*p) for p in itertools.pairwise(starts)]
        first = 0 if within else 1
        self.pairs = [(i, j) for i in range(len(sizes)) for j in range(i + first, len(sizes))]
        self.moments = StreamingMoments()  # each channel's mean and variance
        self.blocks: dict[tuple[int, int], torch.Tensor] = {}  # float64 co-moments per pair

    def add(self, activations: Sequence[torch.Tensor], dim: int) -> None:
        """Add one batch: ``activations[m]`` is model m's output, channels on ``dim``."""
        views = [_channel_major(a, dim) for a in activations]
        n = views[0].shape[0] * views[0].shape[2]
        means = [v.mean((0, 2)).double() for v in views]  # torch sums pairwise
        device = views[0].device
        products = {
            (i, j): torch.zeros(self.sizes[i], self.sizes[j], device=device) for i, j in self.pairs
        }
        step = max(1, _CHUNK // (max(self.sizes) * views[0].shape[2]))
        squares = torch.zeros(self.spans[-1].stop, device=device)
        for start in range(0, views[0].shape[0], step):
            rows = []
            for i, (v, m) in enumerate(zip(views, means, strict=True)):
                chunk = v[start : start + step]
                shape = (chunk.shape[1], chunk.shape[0], chunk.shape[2])
                rows.append(_centered(chunk, m, self.workspace.take(i, shape, device)))
            for i, span in enumerate(self.spans):
                squares[span] += torch.linalg.vector_norm(rows[i], dim=1).square()
            for (i, j), product in products.items():
                if i == j:
                    _add_gram(product, rows[i])
                else:
                    product.addmm_(rows[i], rows[j].T)
        self._fold(n, torch.cat(means), products, squares)

    def _fold(
        self,
        n: int,
        mean: torch.Tensor,
        products: dict[tuple[int, int], torch.Tensor],
        squares: torch.Tensor,
    ) -> None:
        """Combine a batch's co-moment blocks with the running ones (the pairwise update of
        :class:`StreamingMoments`, per block), then its means and variances."""
        moments = self.moments
        if moments.count == 0:
            self.blocks = {pair: block.double() for pair, block in products.items()}
        else:
            delta = mean - moments.mean
            weight = moments.count * n / (moments.count + n)
            for (i, j), block in products.items():
                running = self.blocks[i, j]
                running += block
                running.addr_(delta[self.spans[i]], delta[self.spans[j]], alpha=weight)
        moments.update(n, mean, squares)

    def result(self) -> GroupStatistics:
        m = self.moments
        if m.count < 2:
            raise ValueError("Need at least 2 observations to estimate statistics.")
        sizes = self.sizes if len(set(self.sizes)) > 1 else ()
        width = self.spans[-1].stop
        covariance = torch.zeros(width, width, dtype=torch.float64, device=m.mean.device)
        for (i, j), block in self.blocks.items():
            found = block.triu() + block.triu(1).T if i == j else block
            covariance[self.spans[i], self.spans[j]] = found
            covariance[self.spans[j], self.spans[i]] = found.T
        # the variances the same way with or without `within`: same correlations either way
        covariance.diagonal().copy_(m.m2)
        covariance /= m.count - 1
        return GroupStatistics(
            self.sizes[0], m.count, m.mean.clone(), covariance, sizes, within=self.within
        )
