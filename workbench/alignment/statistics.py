"""Streaming activation statistics of two (or more) models, group by group.

One pass over the data runs every model and, at each permutation group's observation
points (the outputs of its nonlinearities), accumulates per-channel sums and the full
second-moment matrix of the models' activations side by side
(:class:`~workbench.alignment.moments.JointMoments`). Memory is O(channels^2) per group:
activations are never stored (the models run side by side, each observed activation
folded in as soon as every model has it). Products are formed per batch in float32,
centered within the batch, and combined across batches in float64.

Activation matching uses the cross-correlations of a pair; CCA Merge the full covariance.
Every pass runs the models in eval mode, so no statistic depends on how the data is batched.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.alignment.dead import unit_signatures
from workbench.alignment.group_statistics import GroupStatistics
from workbench.alignment.lockstep import lockstep
from workbench.alignment.moments import ChannelMoments, JointMoments, Moments, Workspace
from workbench.batching import batches, choose_batch_size
from workbench.data import DataLike
from workbench.evaluation import check_fits, forward_checked
from workbench.graph import LayerPoint, PermutationGroup, PermutationSpec
from workbench.modules import eval_mode, model_device
from workbench.vocabulary import keyword_only

__all__ = ["channel_moments", "collect_statistics", "observation_points", "run_with_hooks"]


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
    workspace = Workspace()
    accumulators = {
        n: JointMoments([s.groups[n].size for s in specs], within, workspace) for n in names
    }

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
