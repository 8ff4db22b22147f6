"""Streaming activation statistics of two (or more) models, group by group.

One pass over the data runs every model and, at each permutation group's observation
points (the outputs of its nonlinearities), accumulates per-channel sums and the full
second-moment matrix of the models' activations side by side. Memory is O(channels^2)
per group: activations are never stored (the models run side by side, each observed
activation folded in as soon as every model has it). Products are formed per batch in
float32, centered within the batch, and combined across batches in float64.

Activation matching uses the cross-correlations of a pair; CCA Merge the full covariance.

:class:`StreamingMoments` is the one accumulator of means and second moments in the
workbench: the joint statistics here, the per-channel moments that REPAIR and the
BatchNorm folding measure (:func:`channel_moments`), and the layer-by-layer statistics of
RESET and REPAIR (:mod:`workbench.merging.renorm`) all combine their batches with it. Every
pass runs the models in eval mode, so no statistic depends on how the data is batched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.alignment.dead import TIE_BREAK, dead_units, signature_similarity, unit_signatures
from workbench.alignment.lockstep import lockstep
from workbench.batching import batches, choose_batch_size
from workbench.data import DataLike
from workbench.evaluation import check_fits, forward_checked
from workbench.graph import LayerPoint, PermutationGroup, PermutationSpec
from workbench.modules import eval_mode, model_device
from workbench.vocabulary import keyword_only

__all__ = [
    "ChannelMoments",
    "GroupStatistics",
    "JointMoments",
    "Moments",
    "StreamingMoments",
    "channel_moments",
    "collect_statistics",
    "observation_points",
    "run_with_hooks",
]


class StreamingMoments:
    """Count, mean and sum of squared deviations (``m2``) of a stream of observations of
    C channels, combined batch by batch in float64 with the pairwise update of Chan et al.
    (1979), so a large mean never cancels a small variance across a long pass.

    ``m2`` is per channel, shape (C,), or the full co-moment matrix, (C, C), with
    ``full=True``.
    """

    def __init__(self, full: bool = False) -> None:
        self.full = full
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
        if self.full:
            self.m2.addr_(delta, delta, alpha=self.count * n / total)
        else:
            self.m2.add_(delta.square(), alpha=self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    def variance(self, unbiased: bool = False) -> torch.Tensor:
        """Per-channel variance (or the covariance matrix), biased unless ``unbiased``."""
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
        dims = [d for d in range(output.ndim) if d != self.dim % output.ndim]
        var, mean = torch.var_mean(output.float(), dims, correction=0)
        n = output.numel() // output.shape[self.dim]
        self.update(n, mean, var.double() * n)
        self.batches += 1

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, standard deviation) over everything added."""
        std = self.variance().clamp_min(0).sqrt()  # raises on an empty dataset
        return self.mean.clone(), std


def run_with_hooks(
    model: nn.Module,
    hooks: dict[str, Callable],
    data: DataLike,
    batch_size: int | None,
    max_batches: int | None,
) -> None:
    """One eval-mode pass over ``data`` with forward hooks on the named modules (batch
    size by default from :func:`~workbench.batching.choose_batch_size`)."""
    modules = dict(model.named_modules())
    batch_size = choose_batch_size([model], data, batch_size=batch_size)
    handles = [modules[name].register_forward_hook(fn) for name, fn in hooks.items()]
    device = model_device(model)
    try:
        with eval_mode(model), torch.no_grad():
            for inputs, _ in batches(data, batch_size, max_batches=max_batches):
                forward_checked(model, inputs.to(device))
    finally:
        for handle in handles:
            handle.remove()


def channel_moments(
    model: nn.Module,
    data: DataLike,
    points: Sequence[LayerPoint],
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> Moments:
    """Per-channel mean and standard deviation of each point's output, in eval mode."""
    moments = {p.point: ChannelMoments(p.dim) for p in points}

    def record(name: str) -> Callable:
        def hook(_module, _inputs, output) -> None:
            moments[name].add(output)

        return hook

    run_with_hooks(model, {n: record(n) for n in moments}, data, batch_size, max_batches)
    return {name: m.result() for name, m in moments.items()}


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


def observation_points(group: PermutationGroup) -> dict[str, int]:
    """Graph nodes where a group's activations are observed (node -> channel axis): the
    outputs of its nonlinearities, else (a group with none, e.g. before the logits) the
    last node that carries it."""
    if group.activations:
        return group.activations
    if not group.nodes:
        return {}
    last = list(group.nodes)[-1]
    return {last: group.nodes[last]}


def _channel_major(activation: torch.Tensor, dim: int) -> torch.Tensor:
    """A (B, C, K) view of an activation whose channels lie on ``dim``: every (b, k) is one
    observation. NCHW maps need no copy; other layouts are made channels-first."""
    if dim == 1 and activation.ndim >= 3:
        return activation.flatten(2).float()
    rows = activation.movedim(dim, -1).reshape(-1, activation.shape[dim])
    return rows.T.unsqueeze(0).float()


# elements of one centered chunk of activations (per model): bounds the pass's temporaries
_CHUNK = 1 << 23


def _centered(view: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """A (C, b * K) float32 copy of a (b, C, K) chunk minus its channels' ``mean``."""
    rows = torch.empty(view.shape[1], view.shape[0], view.shape[2], device=view.device)
    torch.sub(view.transpose(0, 1), mean.to(rows.dtype)[:, None, None], out=rows)
    return rows.view(view.shape[1], -1)


class JointMoments:
    """Mean and co-moments of M models' channels at one group (or any M tensors observed
    side by side: the feature-visualization study's units).

    Each batch is centered on its own mean (a float32 product of raw activations loses
    the (co)variance of channels whose mean is large to cancellation) a chunk of images
    at a time, so the temporaries stay small whatever the batch; its cross-products are
    float32 matrix products accumulated straight into the batch's co-moment matrix, and
    batches are combined by :class:`StreamingMoments` in float64.

    ``within=False`` keeps only each model's variances, not the covariance among its own
    channels: what a matcher that correlates one model's units with another's needs
    (activation matching, OT), at a fraction of the products (1 of 3 blocks for a pair).
    """

    def __init__(self, sizes: Sequence[int], within: bool = True) -> None:
        self.sizes, self.within = tuple(sizes), within
        starts = [sum(self.sizes[:i]) for i in range(len(self.sizes) + 1)]
        self.spans = [slice(*p) for p in itertools.pairwise(starts)]
        self.moments = StreamingMoments(full=True)

    def add(self, activations: Sequence[torch.Tensor], dim: int) -> None:
        """Add one batch: ``activations[m]`` is model m's output, channels on ``dim``."""
        views = [_channel_major(a, dim) for a in activations]
        n = views[0].shape[0] * views[0].shape[2]
        means = [v.mean((0, 2)).double() for v in views]  # torch sums pairwise
        width = self.spans[-1].stop
        batch = torch.zeros(width, width, device=views[0].device)
        step = max(1, _CHUNK // (max(self.sizes) * views[0].shape[2]))
        squares = torch.zeros(width, device=batch.device)
        for start in range(0, views[0].shape[0], step):
            rows = [
                _centered(v[start : start + step], m) for v, m in zip(views, means, strict=True)
            ]
            for i, span in enumerate(self.spans):
                squares[span] += torch.linalg.vector_norm(rows[i], dim=1).square()
                for j in range(i if self.within else i + 1, len(rows)):
                    batch[span, self.spans[j]].addmm_(rows[i], rows[j].T)
        # the variances the same way with or without `within`: same correlations either way
        batch.diagonal().copy_(squares)
        self.moments.update(n, torch.cat(means), batch)  # upper blocks (i <= j) only

    def result(self) -> GroupStatistics:
        if self.moments.count < 2:
            raise ValueError("Need at least 2 observations to estimate statistics.")
        m, sizes = self.moments, self.sizes if len(set(self.sizes)) > 1 else ()
        covariance = m.variance(unbiased=True)
        for i, span in enumerate(self.spans):
            if not self.within:
                diagonal = covariance[span, span].diagonal().clone()
                covariance[span, span] = torch.diag(diagonal)
            for other in self.spans[i + 1 :]:
                covariance[other, span] = covariance[span, other].T
        return GroupStatistics(
            self.sizes[0], m.count, m.mean.clone(), covariance, sizes, within=self.within
        )


@keyword_only(("data", "spec", "groups"))
def collect_statistics(
    models: Sequence[nn.Module],
    *,
    data: DataLike,
    spec: PermutationSpec,
    groups: Sequence[str] | None = None,
    specs: Sequence[PermutationSpec] | None = None,
    within: bool = True,
    batch_size: int | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> dict[str, GroupStatistics]:
    """Joint activation statistics of ``models`` at every group (or the named ``groups``),
    from one streaming pass over ``data`` with the models in eval mode.

    A group observed at several points (a residual stream after each block) pools all
    of them: each position is one more observation of the same channels. ``specs``: one
    spec per model, for models of one architecture in different widths (same groups,
    other sizes; the statistics then hold each model's ``sizes``); default ``spec`` for all.
    ``within=False``: each model's variances only, not its channels' covariance among
    themselves (enough for correlations between models; see :class:`JointMoments`).
    ``batch_size``: default from the input size and a memory budget
    (:func:`~workbench.batching.choose_batch_size`).

    The models run side by side (:func:`~workbench.alignment.lockstep.lockstep`), each
    observed activation folded into the statistics as soon as every model has it, so
    the pass holds little more than the forward passes themselves.
    """
    specs = [spec] * len(models) if specs is None else list(specs)
    if len(specs) != len(models):
        raise ValueError(f"specs has {len(specs)} entries for {len(models)} models; pass one each.")
    for index, (model, own) in enumerate(zip(models, specs, strict=True)):
        own.check_model(model, f"model {index}")
    names = list(spec.groups) if groups is None else list(groups)
    unknown = [n for n in names if any(n not in s.groups for s in [spec, *specs])]
    if unknown:
        raise ValueError(f"Unknown groups {unknown}; the spec has {list(spec.groups)}.")
    check_fits(models[0], data, labels=False)  # before the pass: it fits the model
    points = {name: observation_points(spec.groups[name]) for name in names}
    names = [n for n in names if points[n]]
    observed: dict[str, list[tuple[str, int]]] = {}
    for name in names:
        for node, dim in points[name].items():
            observed.setdefault(node, []).append((name, dim))
    accumulators = {n: JointMoments([s.groups[n].size for s in specs], within) for n in names}

    def record(node: str, outputs: list[torch.Tensor]) -> None:
        for name, dim in observed[node]:
            accumulators[name].add(outputs, dim)

    runner = lockstep(models, specs, list(observed), record)
    device = model_device(models[0])
    batch_size = choose_batch_size(models, data, batch_size=batch_size)
    with contextlib.ExitStack() as stack, torch.inference_mode():
        for model in models:
            stack.enter_context(eval_mode(model))
        for inputs, _ in tqdm(
            batches(data, batch_size, max_batches=max_batches),
            desc="activation statistics",
            disable=not progress,
            leave=False,
        ):
            runner(inputs.to(device))
    found = {n: accumulators[n].result() for n in names}
    for name, stats in found.items():  # dead units are paired by their weights
        if any(stats.dead(i).any() for i in range(len(models))):
            signatures = [
                unit_signatures(model, own.groups[name], stats.dead(i))
                for i, (model, own) in enumerate(zip(models, specs, strict=True))
            ]
            if len({s.shape[1] for s in signatures}) == 1:
                found[name] = dataclasses.replace(stats, signatures=tuple(signatures))
    return found
