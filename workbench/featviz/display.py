"""Drawing images on axes: one picture without ticks or frame, and many tiled into one,
as the feature-visualization figures and results show them."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.axes import Axes

__all__ = ["montage", "pixels", "show_image"]


def pixels(image: torch.Tensor) -> np.ndarray:
    """``image`` ((C, H, W) or (H, W, C)) as imshow takes it: (H, W) grey or (H, W, 3)."""
    image = image.detach().cpu().float()
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.permute(1, 2, 0)  # (C, H, W) -> (H, W, C)
    return image[..., 0].numpy() if image.shape[-1] == 1 else image.clamp(0, 1).numpy()


def show_image(ax: Axes, image: torch.Tensor, title: str | None = None) -> None:
    """Draw ``image`` ((H, W, C) or (C, H, W); gray for one channel) on ``ax`` without
    ticks, grid or frame, with an optional small title (a dashboard replaces it in place
    with ``ax.images[0].set_data(pixels(new))``)."""
    values = pixels(image)
    grey = {"cmap": "gray"} if values.ndim == 2 else {}
    ax.imshow(values, interpolation="nearest", **grey)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=7)


def montage(images: torch.Tensor, columns: int = 3) -> torch.Tensor:
    """``images`` (k, C, H, W), normalized per image to [0, 1], tiled into one (H', W', C)."""
    k, c, h, w = images.shape
    rows = -(-k // columns)
    low = images.flatten(1).amin(1).view(-1, 1, 1, 1)
    high = images.flatten(1).amax(1).view(-1, 1, 1, 1)
    scaled = (images - low) / (high - low).clamp_min(1e-8)
    canvas = torch.ones(c, rows * (h + 1) - 1, columns * (w + 1) - 1)
    for i in range(k):
        r, col = divmod(i, columns)
        canvas[:, r * (h + 1) : r * (h + 1) + h, col * (w + 1) : col * (w + 1) + w] = scaled[i]
    return canvas.permute(1, 2, 0)
