"""Dataset exemplars: the images of a dataset that most excite each channel of a layer.

One streaming pass keeps, per channel, only the running top-k scores, their dataset
indices, their activation maps and the images themselves (as the model received them):
memory O(k x channels x (map + image size)), whatever the size of the dataset. A channel's
score on an image is the maximum of its activation map over positions (the strongest local
match; a mean would favour large, diffuse patterns).

Keeping the images (not looking them up afterwards) makes them the ones that produced the
scores, whatever the loader does: a shuffled or custom sampler, random augmentation. The
indices are those of the dataset (``data``, or a DataLoader's ``dataset``), recorded from
the loader's own batch sampler as it runs.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from tqdm.auto import tqdm

from workbench.batching import batches, choose_batch_size
from workbench.cache import ResultCache, resolve_cache
from workbench.data import DataLike
from workbench.evaluation import forward_checked
from workbench.featviz.display import montage, show_image
from workbench.featviz.points import (
    ObservationPoint,
    check_point,
    observation_point,
    observing,
    resolve_layer,
)
from workbench.featviz.render import check_channels
from workbench.figures import figure_for, paper_style
from workbench.modules import eval_mode, model_device
from workbench.results import Result
from workbench.vocabulary import keyword_only

__all__ = ["Exemplars", "indexed_batches", "top_exemplars", "unit_maps", "unit_scores"]


@dataclass(frozen=True)
class Exemplars(Result):
    """Per requested channel (rows), the ``k`` most exciting images, best first:
    ``indices`` into the dataset (C, k; -1 where the data has no indices: a DataLoader
    over an iterable-style dataset), ``scores`` (C, k), ``maps`` the activation maps
    (C, k, H, W; 1x1 for linear layers) and ``images`` (C, k, channels, height, width),
    exactly as the model received them (normalized, after the loader's transforms)."""

    layer: str
    channels: list[int]
    indices: torch.Tensor
    scores: torch.Tensor
    maps: torch.Tensor
    images: torch.Tensor

    def to_frame(self) -> pd.DataFrame:
        """One row per (channel, rank): the image's index in the dataset and its score."""
        k = self.scores.shape[1]
        return pd.DataFrame(
            {
                "layer": self.layer,
                "channel": np.repeat(self.channels, k),
                "rank": np.tile(np.arange(k), len(self.channels)),
                "index": self.indices.reshape(-1).numpy(),
                "score": self.scores.reshape(-1).float().numpy(),
            }
        )

    def plot(self, ax: Axes | None = None, columns: int | None = None) -> Figure:
        """The top images, one row per channel (best first, each scaled to its own range),
        tiled into one picture on ``ax``."""
        fig, ax = figure_for(ax)
        k = self.images.shape[1]
        columns = columns or k
        with paper_style():
            show_image(ax, montage(self.images.flatten(0, 1), columns=columns))
            ax.set_title(f"{self.layer}: top {k} images of units {list(self.channels)}", fontsize=7)
        return fig


class _RecordingSampler:
    """A loader's batch sampler that also queues every batch of indices it hands out, so
    that the batches the loader returns (in the same order) can be matched to them."""

    def __init__(self, batch_sampler: object) -> None:
        self.batch_sampler = batch_sampler
        self.pending: deque[list[int]] = deque()

    def __iter__(self) -> Iterator[list[int]]:
        for indices in self.batch_sampler:
            self.pending.append(list(indices))
            yield indices

    def __len__(self) -> int:
        return len(self.batch_sampler)


def indexed_batches(data: DataLike, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(inputs, dataset indices)`` of one pass over ``data`` in the order it is served:
    positions for a Dataset, the batch sampler's indices for a DataLoader (rebuilt on a
    recording copy of its sampler, same workers and collation), -1 for an iterable one;
    ``batch_size`` batches a Dataset."""
    if isinstance(data.dataset if isinstance(data, DataLoader) else data, IterableDataset):
        for inputs, _ in batches(data, batch_size):
            yield inputs, torch.full((len(inputs),), -1)
        return
    if not isinstance(data, DataLoader):
        seen = 0
        for inputs, _ in batches(data, batch_size):
            yield inputs, torch.arange(seen, seen + len(inputs))
            seen += len(inputs)
        return
    if data.batch_sampler is None:
        raise ValueError(
            "top_exemplars got a DataLoader with batch_size=None, which yields single "
            "unbatched examples; build it with a batch_size (e.g. DataLoader(dataset, "
            "batch_size=64))."
        )
    recorder = _RecordingSampler(data.batch_sampler)
    loader = DataLoader(
        data.dataset,
        batch_sampler=recorder,
        collate_fn=data.collate_fn,
        num_workers=data.num_workers,
        pin_memory=data.pin_memory,
        timeout=data.timeout,
        worker_init_fn=data.worker_init_fn,
        multiprocessing_context=data.multiprocessing_context,
        generator=data.generator,
        prefetch_factor=data.prefetch_factor,
        persistent_workers=data.persistent_workers,
        pin_memory_device=data.pin_memory_device,
        in_order=True,  # batches come back in the order the sampler gave them out
    )
    for inputs, _ in batches(loader):
        indices = torch.as_tensor(recorder.pending.popleft(), dtype=torch.long)
        if len(indices) != len(inputs):
            raise ValueError(
                f"The DataLoader's collate_fn made a batch of {len(inputs)} examples from "
                f"{len(indices)} dataset indices, so its images cannot be traced back to the "
                "dataset; use a collate_fn that keeps every example."
            )
        yield inputs, indices


def unit_maps(out: torch.Tensor) -> torch.Tensor:
    """A layer's observed output (B, C, ...) as activation maps (B, C, H, W): 1x1 for a
    linear layer, one row of positions for a 1-d conv."""
    out = out if out.ndim > 2 else out[:, :, None, None]
    return out if out.ndim == 4 else out.flatten(2).unsqueeze(-1)


def unit_scores(maps: torch.Tensor) -> torch.Tensor:
    """Each image's score for each channel (B, C): the maximum of its activation map
    (B, C, H, W) over positions, the strongest local match (a mean would favour large,
    diffuse patterns). How every exemplar ranking scores images."""
    return maps.flatten(2).amax(2)


def _scan(
    model: nn.Module,
    where: ObservationPoint,
    data: DataLike,
    channels: list[int],
    k: int,
    progress: bool,
) -> dict[str, torch.Tensor]:
    layer = where.layer
    captured: list[torch.Tensor] = []
    index = torch.tensor(channels)
    column = torch.arange(len(channels))
    best: dict[str, torch.Tensor] | None = None
    device = model_device(model)
    with eval_mode(model), torch.inference_mode(), observing(model, where, captured.append):
        for inputs, ids in tqdm(
            indexed_batches(data, choose_batch_size([model], data)),
            desc=f"exemplars {layer}",
            disable=not progress,
            leave=False,
        ):
            captured.clear()
            forward_checked(model, inputs.to(device))
            maps = unit_maps(captured[0].float().cpu())[:, index]
            inputs = inputs.cpu()
            if best is None:  # nothing kept yet: empty tensors of the right shapes
                best = {
                    "scores": maps.new_empty((0, len(channels))),
                    "indices": ids.new_empty((0, len(channels))),
                    "maps": maps[:0],
                    "images": inputs.new_empty((0, len(channels), *inputs.shape[1:])),
                }
            kept = len(best["scores"])
            scores = torch.cat([best["scores"], unit_scores(maps)])  # (kept + B, C)
            top = scores.topk(min(k, len(scores)), dim=0).indices  # (k, C)
            # The batch's images are shared by all channels: pick from one flat pool of
            # the kept images (row rank * C + channel), then the batch's.
            pool = torch.cat([best["images"].flatten(0, 1), inputs])
            width = len(column)
            pick = torch.where(top < kept, top * width + column, kept * width + top - kept)
            ids = torch.cat([best["indices"], ids[:, None].expand(-1, width)])
            best = {
                "scores": scores[top, column],
                "indices": ids[top, column],
                "maps": torch.cat([best["maps"], maps])[top, column[None, :]],
                "images": pool[pick],
            }
    if best is None:
        raise ValueError("Cannot find exemplars in an empty dataset.")
    return {name: tensor.transpose(0, 1) for name, tensor in best.items()}


def _complete(found: dict[str, torch.Tensor], channels: int, size: int) -> bool:
    """A cache entry's check: one row per channel in every tensor, equal ranks, and
    indices into the data (else a miss)."""
    indices = found["indices"]
    return (
        all(len(found[name]) == channels for name in ("indices", "scores", "maps", "images"))
        and indices.shape == found["scores"].shape == found["maps"].shape[:2]
        and found["images"].shape[:2] == indices.shape
        and bool(((indices >= 0) & (indices < size)).all())
    )


@keyword_only(("layer", "data", "channels", "k"))
def top_exemplars(
    model: nn.Module,
    *,
    layer: str,
    data: DataLike,
    channels: int | Sequence[int] | None = None,
    k: int = 9,
    point: str = "output",
    cache: ResultCache | bool = True,
    progress: bool = True,
) -> Exemplars:
    """The ``k`` images of ``data`` that excite each channel of ``layer`` most (all
    channels by default), from one streaming pass; cached on disk by model and data content
    (data without a content hash, such as a DataLoader, is scanned every time).

    The images are the very inputs that got the scores and the indices those of the
    dataset, whatever a DataLoader's order (shuffled, custom sampler); a DataLoader over an
    iterable-style dataset has no indices, so they are -1 there. ``point``: where the
    channels are read (:func:`~workbench.featviz.points.observation_point`: the layer's
    ``"output"``, after its normalization, ``"norm"``, or its nonlinearity, ``"relu"``).
    """
    module = resolve_layer(model, layer=layer)
    where = observation_point(model, layer=layer, point=check_point(point))
    count = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    channels = check_channels(model, layer, list(range(count)) if channels is None else channels)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    store = resolve_cache(cache)
    key = store.key(
        model=model,
        data=data,
        layer=layer,
        channels=channels,
        k=k,
        version=2,  # the images are part of the result
        **({} if point == "output" else {"point": point}),
    )
    found, _ = store.get_or_compute(
        "exemplars",
        key,
        lambda: (_scan(model, where, data, channels, k, progress), {"layer": layer}),
        expect=("indices", "scores", "maps", "images"),
        valid=lambda t, _: _complete(t, len(channels), len(data)),
    )
    return Exemplars(
        layer, channels, found["indices"], found["scores"], found["maps"], found["images"]
    )
