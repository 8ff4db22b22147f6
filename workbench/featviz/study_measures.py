"""The measurements of a unit study: one streaming pass over the data with every model
(parents and merged variants) observed at every studied layer at once, and the
cross-activation of the rendered images.

The pass keeps, per layer, the joint mean and the covariances between the models' channels
(:class:`~workbench.alignment.moments.JointMoments`, every position of every image one
observation, as alignment measures its correlations), each channel's largest per-image
objective (the render objective: the mean over positions) and each channel's running
top-``k`` images by exemplar score (:func:`~workbench.featviz.exemplars.unit_scores`).
Memory: O((models x channels)^2 + k x models x channels) per layer, whatever the data.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.alignment.group_statistics import GroupStatistics
from workbench.alignment.moments import JointMoments
from workbench.batching import choose_batch_size
from workbench.data import DataLike
from workbench.evaluation import forward_checked
from workbench.featviz.exemplars import indexed_batches, unit_maps, unit_scores
from workbench.featviz.points import observation_point, observing
from workbench.featviz.render import unit_objective
from workbench.modules import eval_mode, model_device

__all__ = ["LayerObservations", "cross_activation", "observe_layers"]


@dataclass(frozen=True)
class LayerObservations:
    """What one pass saw of one layer in M models: their joint ``statistics`` (channels
    of model m in block m), the largest per-image objective of each channel (``best``,
    M x C) and the dataset indices of each channel's top-``k`` images (``top``, M x k x C)."""

    statistics: GroupStatistics
    best: torch.Tensor
    top: torch.Tensor

    def mean(self, m: int) -> torch.Tensor:
        """Model ``m``'s channel means over the data (the objective's average)."""
        size = self.statistics.size
        return self.statistics.mean[m * size : (m + 1) * size].float()


class _Layer:
    """The running state of one layer (see the module docstring)."""

    def __init__(self, count: int, size: int, k: int) -> None:
        # the measures correlate one model's units with another's and need only each
        # unit's own variance: no covariance among one model's units (the same numbers)
        self.moments = JointMoments([size] * count, within=False)
        self.k = k
        self.outputs: list[torch.Tensor | None] = [None] * count
        self.best: list[torch.Tensor | None] = [None] * count
        self.scores: list[torch.Tensor | None] = [None] * count
        self.top: list[torch.Tensor | None] = [None] * count

    def add(self, ids: torch.Tensor) -> None:
        outputs = [o.float() for o in self.outputs]
        self.moments.add(outputs, 1)
        for m, out in enumerate(outputs):
            maps = unit_maps(out)
            means = maps.flatten(2).mean(2).amax(0).cpu()
            self.best[m] = means if self.best[m] is None else torch.maximum(self.best[m], means)
            scores = unit_scores(maps).cpu()
            index = ids[:, None].expand_as(scores)
            if self.scores[m] is not None:
                scores = torch.cat([self.scores[m], scores])
                index = torch.cat([self.top[m], index])
            keep = scores.topk(min(self.k, len(scores)), dim=0).indices
            self.scores[m] = scores.gather(0, keep)
            self.top[m] = index.gather(0, keep)

    def result(self) -> LayerObservations:
        found = self.moments.result()  # on the models' device: the results live on the CPU
        found = dataclasses.replace(found, mean=found.mean.cpu(), covariance=found.covariance.cpu())
        return LayerObservations(found, torch.stack(self.best), torch.stack(self.top))


def observe_layers(
    models: Sequence[nn.Module],
    layers: Sequence[str],
    data: DataLike,
    *,
    point: str,
    k: int,
    progress: bool,
) -> dict[str, LayerObservations]:
    """One pass over ``data``: every model observed at ``point`` of every layer (all the
    models share one architecture and device; eval mode, no gradients)."""
    where = {
        layer: [observation_point(m, layer=layer, point=point) for m in models] for layer in layers
    }
    sizes = {layer: _channels(models[0], layer) for layer in layers}
    state = {layer: _Layer(len(models), sizes[layer], k) for layer in layers}
    device = model_device(models[0])
    batch_size = choose_batch_size(models, data)  # before any hook observes a forward
    with contextlib.ExitStack() as stack:
        for m, model in enumerate(models):
            stack.enter_context(eval_mode(model))
            for layer in layers:
                keep = state[layer].outputs.__setitem__
                record = lambda out, keep=keep, m=m: keep(m, out)  # noqa: E731
                stack.enter_context(observing(model, where[layer][m], record))
        stack.enter_context(torch.inference_mode())
        batches = indexed_batches(data, batch_size)
        for inputs, ids in tqdm(batches, desc="unit study", disable=not progress, leave=False):
            inputs = inputs.to(device)
            for model in models:
                forward_checked(model, inputs)
            for layer in layers:
                state[layer].add(ids)
    if any(s.best[0] is None for s in state.values()):
        raise ValueError("data is empty: a unit study measures on images.")
    return {layer: s.result() for layer, s in state.items()}


def _channels(model: nn.Module, layer: str) -> int:
    module = dict(model.named_modules())[layer]
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def cross_activation(
    models: Sequence[nn.Module],
    layer: str,
    units: Sequence[torch.Tensor],
    images: Sequence[torch.Tensor],
    means: Sequence[torch.Tensor],
    *,
    point: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``R[x, y, u]``: how strongly unit ``units[x][u]`` of model ``x`` responds to the image
    rendered for model ``y``'s unit ``u`` (``images[y][u]``), relative to its response to
    its own image, both above its mean over the data (``means[x]``), clipped to [0, 1]:
    1 = as to its own image (or more: an image of another unit may beat an own image that
    is not fully optimized), 0 = no more than to an average data image (or less). NaN
    where the own image does not excite the unit above its mean (nothing to compare
    with). Also each unit's raw response to its own image (x, u), the render's objective."""
    count = len(models)
    response = torch.stack(
        [
            torch.stack(
                [
                    unit_objective(
                        models[x],
                        layer=layer,
                        images=images[y],
                        channels=units[x].tolist(),
                        point=point,
                    )
                    for y in range(count)
                ]
            )
            for x in range(count)
        ]
    )  # (x, y, u)
    base = torch.stack([means[x][units[x]] for x in range(count)])  # (x, u)
    own = response.diagonal(dim1=0, dim2=1).T  # (x, u)
    above = own - base
    scaled = ((response - base[:, None]) / above.clamp_min(1e-12)[:, None]).clamp(0.0, 1.0)
    return torch.where(above[:, None] > 0, scaled, torch.nan), own
