"""Streaming activation statistics of two (or more) models, group by group.

One pass over the data runs every model and, at each permutation group's observation
points (the outputs of its nonlinearities), accumulates per-channel sums and the full
second-moment matrix of the models' activations side by side. Memory is O(channels^2)
per group: activations are never stored. Products are formed per batch in float32,
centered within the batch, and combined across batches in float64.

Activation matching uses the cross-correlations of a pair; CCA Merge the full covariance.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from workbench.data import DataLike, batches
from workbench.device import model_device
from workbench.evaluation import eval_mode, forward_checked
from workbench.graph import PermutationGroup, PermutationSpec

__all__ = ["GroupStatistics", "collect_statistics", "observation_points"]


@dataclass
class GroupStatistics:
    """Mean and covariance of the stacked activations ``[model_0 | model_1 | ...]`` at one
    group, over ``count`` observations (positions x images)."""

    size: int
    count: int
    mean: torch.Tensor  # (M * size,) float64
    covariance: torch.Tensor  # (M * size, M * size) float64

    @property
    def num_models(self) -> int:
        return len(self.mean) // self.size

    def block(self, i: int, j: int) -> torch.Tensor:
        """Covariance between model ``i``'s and model ``j``'s channels (size x size)."""
        s = self.size
        return self.covariance[i * s : (i + 1) * s, j * s : (j + 1) * s]

    def std(self, i: int) -> torch.Tensor:
        """Per-channel standard deviation of model ``i``."""
        return self.block(i, i).diagonal().clamp_min(0).sqrt()

    def correlation(self, i: int = 0, j: int = 1, eps: float = 1e-8) -> torch.Tensor:
        """Pearson correlation between model ``i``'s channels (rows) and model ``j``'s
        (columns); channels that never vary (dead units) correlate 0 with everything."""
        denominator = torch.outer(self.std(i), self.std(j))
        return torch.where(denominator > eps, self.block(i, j) / denominator.clamp_min(eps), 0.0)


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
    """A module that runs ``model``'s graph and returns the outputs of ``nodes``."""
    graph = copy.deepcopy(spec.graph_module.graph)
    by_name = {n.name: n for n in graph.nodes}
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output):
        graph.output(tuple(by_name[n] for n in nodes))
    graph.erase_node(output)
    observer = fx.GraphModule(model, graph)
    observer.graph.eliminate_dead_code()  # stop at the last observed node
    observer.recompile()
    return observer


def _channel_major(activation: torch.Tensor, dim: int) -> torch.Tensor:
    """A (B, C, K) view of an activation whose channels lie on ``dim``: every (b, k) is one
    observation. NCHW maps need no copy; other layouts are made channels-first."""
    if dim == 1 and activation.ndim >= 3:
        return activation.flatten(2).float()
    rows = activation.movedim(dim, -1).reshape(-1, activation.shape[dim])
    return rows.T.unsqueeze(0).float()


class _Accumulator:
    """Mean and co-moments of M models' channels at one group.

    Each batch's cross-products are formed in float32 straight from the activations (a
    batched matmul, no copy) and centered within the batch; batches are combined in
    float64 with the pairwise update of Chan et al. (1979), so a large mean never
    cancels a small variance across the whole pass.
    """

    def __init__(self, size: int, num_models: int, device: torch.device) -> None:
        width = size * num_models
        self.size, self.num_models = size, num_models
        self.count = 0
        self.mean = torch.zeros(width, dtype=torch.float64, device=device)
        self.comoment = torch.zeros(width, width, dtype=torch.float64, device=device)

    def add(self, activations: Sequence[torch.Tensor], dim: int) -> None:
        """Add one batch: ``activations[m]`` is model m's output, channels on ``dim``."""
        views = [_channel_major(a, dim) for a in activations]
        n = views[0].shape[0] * views[0].shape[2]
        sums = torch.cat([v.sum((0, 2)) for v in views]).double()
        batch_mean = sums / n
        batch = torch.empty_like(self.comoment)
        s = self.size
        for i, vi in enumerate(views):
            for j in range(i, self.num_models):
                block = torch.matmul(vi, views[j].transpose(1, 2)).sum(0).double()
                batch[i * s : (i + 1) * s, j * s : (j + 1) * s] = block
                batch[j * s : (j + 1) * s, i * s : (i + 1) * s] = block.T
        batch -= n * torch.outer(batch_mean, batch_mean)
        total = self.count + n
        delta = batch_mean - self.mean
        self.comoment += batch + torch.outer(delta, delta) * (self.count * n / total)
        self.mean += delta * (n / total)
        self.count = total

    def result(self) -> GroupStatistics:
        if self.count < 2:
            raise ValueError("Need at least 2 observations to estimate statistics.")
        return GroupStatistics(
            self.size, self.count, self.mean.clone(), self.comoment / (self.count - 1)
        )


def _check_fits(model: nn.Module, data: DataLike) -> None:
    """Fail with a clear message, before the pass, if ``data`` does not fit ``model``."""
    inputs, _ = next(iter(batches(data, batch_size=2, max_batches=1)), (None, None))
    if inputs is None:
        raise ValueError("Cannot collect statistics on an empty dataset.")
    with eval_mode(model), torch.inference_mode():
        forward_checked(model, inputs[:2].to(model_device(model)))


def collect_statistics(
    models: Sequence[nn.Module],
    data: DataLike,
    spec: PermutationSpec,
    groups: Sequence[str] | None = None,
    *,
    batch_size: int = 500,
    max_batches: int | None = None,
    progress: bool = True,
) -> dict[str, GroupStatistics]:
    """Joint activation statistics of ``models`` at every group (or the named ``groups``),
    from one streaming pass over ``data`` with the models in eval mode.

    A group observed at several points (a residual stream after each block) pools all
    of them: each position is one more observation of the same channels.
    """
    for index, model in enumerate(models):
        spec.check_model(model, f"model {index}")
    names = list(spec.groups) if groups is None else list(groups)
    unknown = [n for n in names if n not in spec.groups]
    if unknown:
        raise ValueError(f"Unknown groups {unknown}; the spec has {list(spec.groups)}.")
    _check_fits(models[0], data)
    points = {name: observation_points(spec.groups[name]) for name in names}
    names = [n for n in names if points[n]]
    nodes = list(dict.fromkeys(node for n in names for node in points[n]))
    device = model_device(models[0])
    observers = [_observer(spec, model, nodes) for model in models]
    accumulators = {n: _Accumulator(spec.groups[n].size, len(models), device) for n in names}
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
    return {n: accumulators[n].result() for n in names}
