"""Dataset exemplars: the images of a dataset that most excite each channel of a layer.

One streaming pass keeps, per channel, only the running top-k scores, their dataset
indices and their activation maps: memory O(k x channels x map size), whatever the size
of the dataset. A channel's score on an image is the maximum of its activation map over
positions (the strongest local match; a mean would favour large, diffuse patterns).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.cache import ResultCache, data_fingerprint, default_cache, fingerprint
from workbench.data import DataLike, batches
from workbench.evaluation import forward_checked
from workbench.featviz.render import check_channels, resolve_layer
from workbench.modules import eval_mode, model_device

__all__ = ["Exemplars", "top_exemplars"]


@dataclass
class Exemplars:
    """Per requested channel (rows), the ``k`` most exciting images, best first:
    ``indices`` into the dataset (C, k), ``scores`` (C, k), ``maps`` the activation maps
    (C, k, H, W; 1x1 for linear layers) and ``images`` (C, k, channels, height, width),
    as stored in the dataset (normalized)."""

    layer: str
    channels: list[int]
    indices: torch.Tensor
    scores: torch.Tensor
    maps: torch.Tensor
    images: torch.Tensor


def _images(data: DataLike, indices: torch.Tensor) -> torch.Tensor:
    flat = indices.reshape(-1)
    stored = getattr(data, "images", None)
    if stored is not None:
        picked = stored[flat]
    else:
        dataset = getattr(data, "dataset", data)
        picked = torch.stack([dataset[int(i)][0] for i in flat])
    return picked.reshape(*indices.shape, *picked.shape[1:])


def _scan(
    model: nn.Module, layer: str, data: DataLike, channels: list[int], k: int, progress: bool
) -> dict[str, torch.Tensor]:
    module = resolve_layer(model, layer)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    index = torch.tensor(channels)
    best_scores = best_indices = best_maps = None
    seen = 0
    device = model_device(model)
    try:
        with eval_mode(model), torch.inference_mode():
            for inputs, _ in tqdm(
                batches(data, 500), desc=f"exemplars {layer}", disable=not progress, leave=False
            ):
                captured.clear()
                forward_checked(model, inputs.to(device))
                out = captured[0].float().cpu()
                out = out[:, index] if out.ndim > 2 else out[:, index, None, None]
                maps = out if out.ndim == 4 else out.flatten(2).unsqueeze(-1)
                scores = maps.flatten(2).amax(2)  # (B, C)
                ids = torch.arange(seen, seen + len(scores)).expand(len(channels), -1).T
                seen += len(scores)
                if best_scores is not None:
                    scores = torch.cat([best_scores, scores])
                    ids = torch.cat([best_indices, ids])
                    maps = torch.cat([best_maps, maps])
                top = scores.topk(min(k, len(scores)), dim=0).indices  # (k, C)
                column = torch.arange(len(channels))
                best_scores = scores[top, column]
                best_indices = ids[top, column]
                best_maps = maps[top, column[None, :]]
    finally:
        handle.remove()
    if best_scores is None:
        raise ValueError("Cannot find exemplars in an empty dataset.")
    return {"indices": best_indices.T, "scores": best_scores.T, "maps": best_maps.transpose(0, 1)}


def top_exemplars(
    model: nn.Module,
    layer: str,
    data: DataLike,
    channels: int | Sequence[int] | None = None,
    k: int = 9,
    *,
    cache: ResultCache | bool = True,
    progress: bool = True,
) -> Exemplars:
    """The ``k`` images of ``data`` that excite each channel of ``layer`` most (all
    channels by default), from one streaming pass; cached on disk by model and data content
    (data without a content hash, such as a DataLoader, is scanned every time)."""
    module = resolve_layer(model, layer)
    count = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    channels = check_channels(model, layer, list(range(count)) if channels is None else channels)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}.")
    store = default_cache() if cache is True else (cache or ResultCache(enabled=False))
    key = store.key(
        model=fingerprint(model) if store.enabled else None,
        data=data_fingerprint(data) if store.enabled else None,
        layer=layer,
        channels=channels,
        k=k,
    )
    found, _ = store.get_or_compute(
        "exemplars",
        key,
        lambda: (_scan(model, layer, data, channels, k, progress), {"layer": layer}),
    )
    return Exemplars(
        layer,
        channels,
        found["indices"],
        found["scores"],
        found["maps"],
        _images(data, found["indices"]),
    )
