"""Loss and accuracy over the plane through three models in weight space.

The plane is spanned by ``d2 = theta_2 - theta_1`` and ``d3 = theta_3 - theta_1`` over all
floating-point parameters, with an orthonormal basis by Gram-Schmidt (``e1`` along ``d2``),
so that distances in the figure are Euclidean distances between weight vectors. A grid
point ``theta_1 + x e1 + y e2`` equals ``theta_1 + a d2 + b d3`` for unique ``(a, b)``; the
model there is ``(1 - a - b) M1 + a M2 + b M3`` for every tensor, BatchNorm running
statistics included (with ``bn="reset"`` those are then recomputed on ``bn_data``). One
working model is reloaded in place for every point.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from workbench.alignment import align
from workbench.cache import ResultCache, data_fingerprint, default_cache, fingerprint
from workbench.data import DataLike
from workbench.evaluation import evaluate
from workbench.figures import new_figure, paper_style
from workbench.merge import check_compatible, has_batchnorm, load_weighted_average_, reset_bn_

__all__ = ["LossPlane", "loss_plane", "plane_basis"]


@dataclass(frozen=True)
class LossPlane:
    """Loss and accuracy on an R x R grid (``loss[i, j]`` at ``x[j]``, ``y[i]``) in the
    plane of three models, whose own coordinates are ``points`` (3 x 2)."""

    x: np.ndarray
    y: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    points: np.ndarray
    labels: tuple[str, str, str]
    bn: str | None
    split: str
    settings: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        """One row per grid point: x, y, loss, accuracy (tidy, for CSV)."""
        xx, yy = np.meshgrid(self.x, self.y)
        return pd.DataFrame(
            {
                "x": xx.ravel(),
                "y": yy.ravel(),
                "loss": self.loss.ravel(),
                "accuracy": self.accuracy.ravel(),
                "bn": self.bn or "none",
                "split": self.split,
            }
        )

    def plot(self, metric: str = "loss", ax: Axes | None = None, levels: int = 12) -> Figure:
        """Filled contours of ``metric`` with the three models marked and labelled. Loss
        uses a log scale of levels (basins are deep and barriers tall)."""
        if metric not in ("loss", "accuracy"):
            raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}.")
        values = self.loss if metric == "loss" else 100 * self.accuracy
        if ax is None:
            fig, ax = new_figure(aspect=0.85)
        else:
            fig = ax.figure
        with paper_style():
            finite = values[np.isfinite(values)]
            if metric == "loss":
                bounds = np.geomspace(max(finite.min(), 1e-3), finite.max(), levels)
                cmap = "viridis"
            else:
                bounds = np.linspace(finite.min(), finite.max(), levels)
                cmap = "viridis_r"
            filled = ax.contourf(self.x, self.y, values, levels=bounds, cmap=cmap, extend="both")
            ax.contour(self.x, self.y, values, levels=bounds, colors="white", linewidths=0.3)
            bar = fig.colorbar(filled, ax=ax, shrink=0.9)
            bar.set_label("Cross-entropy loss" if metric == "loss" else "Accuracy (%)")
            if metric == "loss":
                bar.ax.set_yscale("log")
            ax.plot(
                self.points[:, 0],
                self.points[:, 1],
                "o",
                color="white",
                markeredgecolor="black",
                markersize=5,
            )
            for (px, py), label in zip(self.points, self.labels, strict=True):
                ax.annotate(
                    label,
                    (px, py),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=7,
                    color="white",
                )
            ax.set_xlabel("Distance along $\\theta_2 - \\theta_1$")
            ax.set_ylabel("Orthogonal distance")
            ax.set_aspect("equal")
            ax.grid(False)
        return fig


def _vector(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().double().reshape(-1).cpu() for p in model.parameters()])


def plane_basis(models: Sequence[nn.Module]) -> tuple[np.ndarray, float, float, float]:
    """The models' coordinates in their plane (3 x 2) and the numbers that convert a grid
    point to mixing weights: ``|d2|``, ``d3 . e1``, ``d3 . e2``."""
    origin, second, third = (_vector(m) for m in models)
    d2, d3 = second - origin, third - origin
    norm2 = float(d2.norm())
    if norm2 == 0:
        raise ValueError("Models 1 and 2 are identical: they span no plane.")
    e1 = d2 / norm2
    c1 = float(d3 @ e1)
    rest = d3 - c1 * e1
    c2 = float(rest.norm())
    if c2 <= 1e-6 * max(norm2, float(d3.norm())):
        raise ValueError("The three models lie on one line: they span no plane.")
    points = np.array([[0.0, 0.0], [norm2, 0.0], [c1, c2]])
    return points, norm2, c1, c2


def loss_plane(
    models: Sequence[nn.Module],
    data: DataLike,
    resolution: int = 21,
    bn: str | None = "reset",
    *,
    method: str = "none",
    bn_data: DataLike | None = None,
    margin: float = 0.2,
    labels: Sequence[str] = ("model 1", "model 2", "model 3"),
    batch_size: int = 500,
    progress: bool = True,
    cache: ResultCache | bool = True,
) -> LossPlane:
    """Loss and accuracy on a ``resolution`` x ``resolution`` grid over the plane through
    three models, extending ``margin`` (a fraction of the triangle's extent) beyond it.

    ``method`` aligns models 2 and 3 to model 1 first (``"weight"``, ``"activation"``,
    ``"cca"``; data: ``bn_data``, else ``data``). ``bn="reset"`` recomputes BatchNorm
    statistics at every point on ``bn_data`` (default ``data``: pass training data).
    Cached on disk like the curves (``cache=False`` bypasses). Models are not modified.
    """
    models = list(models)
    if len(models) != 3:
        raise ValueError(f"A plane needs exactly 3 models, got {len(models)}.")
    if bn not in (None, "reset"):
        raise ValueError(f"bn must be None or 'reset', got {bn!r}.")
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}.")
    check_compatible(models)
    if bn == "reset" and not has_batchnorm(models[0]):
        raise ValueError(f"bn='reset' needs BatchNorm layers; {type(models[0]).__name__} has none.")
    reset_data = bn_data if bn_data is not None else data
    if method != "none":
        models = [models[0]] + [align(models[0], m, method, data=reset_data) for m in models[1:]]
    points, norm2, c1, c2 = plane_basis(models)
    span = points.max(0) - points.min(0)
    low, high = points.min(0) - margin * span, points.max(0) + margin * span
    x = np.linspace(low[0], high[0], resolution)
    y = np.linspace(low[1], high[1], resolution)
    store = default_cache() if cache is True else (cache or ResultCache(enabled=False))
    settings = {
        "method": method,
        "resolution": resolution,
        "margin": margin,
        "batch_size": batch_size,
        "models": [fingerprint(m) for m in models],
    }
    key = None
    if store.enabled:
        key = store.key(
            data=data_fingerprint(data),
            bn_data=data_fingerprint(reset_data) if bn else "-",
            bn=bn or "none",
            **settings,
        )
    split = getattr(data, "split", "data")

    def compute() -> tuple[dict[str, torch.Tensor], dict]:
        states = [m.state_dict() for m in models]
        work = copy.deepcopy(models[0])
        loss = np.zeros((resolution, resolution))
        accuracy = np.zeros((resolution, resolution))
        grid = [(i, j) for i in range(resolution) for j in range(resolution)]
        for i, j in tqdm(grid, desc="loss plane", disable=not progress, leave=False):
            b = y[i] / c2
            a = (x[j] - b * c1) / norm2
            load_weighted_average_(work, states, [1.0 - a - b, a, b])
            if bn == "reset":
                reset_bn_(work, reset_data, batch_size)
            metrics = evaluate(work, data, batch_size)
            loss[i, j], accuracy[i, j] = metrics.loss, metrics.accuracy
        return {"loss": torch.from_numpy(loss), "accuracy": torch.from_numpy(accuracy)}, {}

    found, _ = store.get_or_compute("plane", key, compute)
    return LossPlane(
        x,
        y,
        found["loss"].double().numpy(),
        found["accuracy"].double().numpy(),
        points,
        tuple(labels),
        bn,
        split,
        settings,
    )
