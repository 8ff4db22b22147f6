"""Streaming activation statistics of two (or more) models, group by group.

One pass over the data runs every model and, at each permutation group's observation
points (the outputs of its nonlinearities), accumulates per-channel sums and the full
second-moment matrix of the models' activations side by side. Memory is O(channels^2)
per group: activations are never stored. Products are formed per batch in float32,
centered within the batch, and combined across batches in float64.

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
from torch import fx, nn
from tqdm.auto import tqdm

from workbench.alignment.dead import TIE_BREAK, dead_units, signature_similarity, unit_signatures
from workbench.batching import batches
from workbench.data import DataLike
from workbench.evaluation import check_fits, forward_checked
from workbench.graph import LayerPoint, PermutationGroup, PermutationSpec
from workbench.graph.trace import trace_module
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
        """Add a batch of ``n`` observations with its own ``mean`` and ``m2``."""
        mean, m2 = mean.double(), m2.double()
        total = self.count + n
        delta = mean - self.mean
        spread = torch.outer(delta, delta) if self.full else delta.square()
        self.m2 = self.m2 + m2 + spread * (self.count * n / total)
        self.mean = self.mean + delta * (n / total)
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
        return self.mean, std


def run_with_hooks(
    model: nn.Module,
    hooks: dict[str, Callable],
    data: DataLike,
    batch_size: int,
    max_batches: int | None,
) -> None:
    """One eval-mode pass over ``data`` with forward hooks on the named modules."""
    modules = dict(model.named_modules())
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
    batch_size: int = 500,
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
    # each model's unit signatures (workbench.alignment.dead), where the group has dead
    # units and the models' signatures compare; empty otherwise
    signatures: tuple[torch.Tensor, ...] = ()

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
        both = torch.outer(self.dead(i), self.dead(j))
        if self.signatures:
            similar = signature_similarity(self.signatures[i], self.signatures[j])
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


def _observer(spec: PermutationSpec, model: nn.Module, nodes: Sequence[str]) -> fx.GraphModule:
    """A module that runs ``model``'s graph (traced as the spec was) and returns the
    outputs of ``nodes``."""
    observer = trace_module(model, spec.leaf_modules)
    graph = observer.graph
    by_name = {n.name: n for n in graph.nodes}
    missing = [n for n in nodes if n not in by_name]
    if missing:
        raise ValueError(
            f"{type(model).__name__}'s traced graph has no nodes {missing[:3]}: the spec was "
            "built from another model class. Build it from this model with permutation_spec."
        )
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output):
        graph.output(tuple(by_name[n] for n in nodes))
    graph.erase_node(output)
    graph.eliminate_dead_code()  # stop at the last observed node
    observer.recompile()
    return observer


def _channel_major(activation: torch.Tensor, dim: int) -> torch.Tensor:
    """A (B, C, K) view of an activation whose channels lie on ``dim``: every (b, k) is one
    observation. NCHW maps need no copy; other layouts are made channels-first."""
    if dim == 1 and activation.ndim >= 3:
        return activation.flatten(2).float()
    rows = activation.movedim(dim, -1).reshape(-1, activation.shape[dim])
    return rows.T.unsqueeze(0).float()


class JointMoments:
    """Mean and co-moments of M models' channels at one group (or any M tensors observed
    side by side: the feature-visualization study's units).

    Each batch's cross-products are formed in float32 straight from the activations (a
    batched matmul, no copy) and centered within the batch; batches are combined by
    :class:`StreamingMoments` in float64.
    """

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = tuple(sizes)
        self.starts = [sum(self.sizes[:i]) for i in range(len(self.sizes) + 1)]
        self.moments = StreamingMoments(full=True)

    def add(self, activations: Sequence[torch.Tensor], dim: int) -> None:
        """Add one batch: ``activations[m]`` is model m's output, channels on ``dim``."""
        views = [_channel_major(a, dim) for a in activations]
        n = views[0].shape[0] * views[0].shape[2]
        means = [v.sum((0, 2), dtype=torch.float64) / n for v in views]
        # centered before the products: a float32 product of raw activations loses the
        # (co)variance of channels whose mean is large to cancellation
        views = [v - m.to(v.dtype)[None, :, None] for v, m in zip(views, means, strict=True)]
        batch_mean = torch.cat(means)
        width, span = self.starts[-1], [slice(*p) for p in itertools.pairwise(self.starts)]
        batch = torch.empty(width, width, dtype=torch.float64, device=batch_mean.device)
        for i, vi in enumerate(views):
            for j in range(i, len(views)):
                block = torch.matmul(vi, views[j].transpose(1, 2)).sum(0).double()
                batch[span[i], span[j]] = block
                batch[span[j], span[i]] = block.T
        self.moments.update(n, batch_mean, batch)

    def result(self) -> GroupStatistics:
        if self.moments.count < 2:
            raise ValueError("Need at least 2 observations to estimate statistics.")
        m, sizes = self.moments, self.sizes if len(set(self.sizes)) > 1 else ()
        return GroupStatistics(
            self.sizes[0], m.count, m.mean.clone(), m.variance(unbiased=True), sizes
        )


@keyword_only(("data", "spec", "groups"))
def collect_statistics(
    models: Sequence[nn.Module],
    *,
    data: DataLike,
    spec: PermutationSpec,
    groups: Sequence[str] | None = None,
    specs: Sequence[PermutationSpec] | None = None,
    batch_size: int = 500,
    max_batches: int | None = None,
    progress: bool = True,
) -> dict[str, GroupStatistics]:
    """Joint activation statistics of ``models`` at every group (or the named ``groups``),
    from one streaming pass over ``data`` with the models in eval mode.

    A group observed at several points (a residual stream after each block) pools all
    of them: each position is one more observation of the same channels. ``specs``: one
    spec per model, for models of one architecture in different widths (same groups,
    other sizes; the statistics then hold each model's ``sizes``); default ``spec`` for all.
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
    nodes = list(dict.fromkeys(node for n in names for node in points[n]))
    device = model_device(models[0])
    observers = [_observer(own, model, nodes) for model, own in zip(models, specs, strict=True)]
    accumulators = {n: JointMoments([s.groups[n].size for s in specs]) for n in names}
    position = {node: i for i, node in enumerate(nodes)}
    with contextlib.ExitStack() as stack, torch.inference_mode():
        for model in models:
            stack.enter_context(eval_mode(model))
        for inputs, _ in tqdm(
            batches(data, batch_size, max_batches=max_batches),
            desc="activation statistics",
            disable=not progress,
            leave=False,
        ):
            inputs = inputs.to(device)
            outputs = [observer(inputs) for observer in observers]
            for name in names:
                for node, dim in points[name].items():
                    accumulators[name].add([out[position[node]] for out in outputs], dim)
    found = {n: accumulators[n].result() for n in names}
    for name, stats in found.items():  # dead units are paired by their weights
        if any(stats.dead(i).any() for i in range(len(models))):
            signatures = [
                unit_signatures(model, own.groups[name])
                for model, own in zip(models, specs, strict=True)
            ]
            if len({s.shape[1] for s in signatures}) == 1:
                found[name] = dataclasses.replace(stats, signatures=tuple(signatures))
    return found
