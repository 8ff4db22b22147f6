"""Loss and accuracy over the plane through three models in weight space.

The plane is spanned by the three models' parameter vectors (Garipov et al., 2018): with
``d2 = theta2 - theta1`` and ``d3 = theta3 - theta1`` over all floating-point parameters,
Gram-Schmidt gives the orthonormal basis ``u = d2 / |d2|`` and ``v`` (the part of ``d3``
orthogonal to ``u``, normalized), so that plane coordinates are true Euclidean distances
in parameter space and model 1 sits at the origin, model 2 on the x axis.

Every point ``theta1 + x u + y v`` is the affine combination
``(1 - a - b) theta1 + a theta2 + b theta3`` of the three models; BatchNorm running
statistics (buffers, not parameters) are combined with the same weights ``(1 - a - b, a,
b)``, which gives each model's own statistics at its own position, and with ``bn="reset"``
they are recomputed at every point instead (recommended: the combined statistics are not
the statistics of the combined network).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.colors as mcolors
import matplotlib.ticker as mticker
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from workbench.alignment import align, get_method
from workbench.cache import ResultCache, data_fingerprint, fingerprint
from workbench.data import DataLike
from workbench.figures import new_figure, paper_style, save_table
from workbench.graph import PermutationSpec, resolve_spec
from workbench.lmc import data_key
from workbench.merge import check_compatible, has_batchnorm
from workbench.weightspace import check_data, evaluate_points, reset_correction, resolve_cache

__all__ = ["LossPlane", "loss_plane", "loss_planes", "plane_basis", "plot_plane"]

_METRICS = {"loss": "Cross-entropy loss", "accuracy": "Accuracy (%)"}


@dataclass(frozen=True)
class LossPlane:
    """Loss and accuracy on a grid over the plane through three models.

    ``loss[i, j]`` and ``accuracy[i, j]`` are at plane coordinates ``(x[j], y[i])``;
    ``points`` holds the three models' coordinates (rows), ``labels`` their names.
    ``label`` is the alignment method that put models 2 and 3 into model 1's neuron order,
    ``settings`` everything else that determined the numbers (fingerprints, margin, ...).
    """

    x: np.ndarray
    y: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    points: np.ndarray
    split: str = "data"
    bn: str | None = None
    label: str = "none"
    labels: tuple[str, str, str] = ("model 1", "model 2", "model 3")
    settings: dict = field(default_factory=dict)

    @property
    def weights(self) -> np.ndarray:
        """``(len(y), len(x), 3)``: each grid point as weights of the three models."""
        return plane_weights(self.points, *np.meshgrid(self.x, self.y))

    @property
    def diverged(self) -> np.ndarray:
        """``(k, 2)`` coordinates of the grid points whose loss is NaN or infinite."""
        rows, cols = np.nonzero(~np.isfinite(self.loss))
        return np.stack([self.x[cols], self.y[rows]], axis=1)

    def to_frame(self) -> pd.DataFrame:
        """A tidy table: one row per grid point with its coordinates, the three models'
        weights, loss and accuracy."""
        xx, yy = np.meshgrid(self.x, self.y)
        frame = pd.DataFrame(
            {
                "label": self.label,
                "bn": self.bn or "none",
                "split": self.split,
                "x": xx.ravel(),
                "y": yy.ravel(),
            }
        )
        weights = self.weights.reshape(-1, 3)
        for k in range(3):
            frame[f"weight_{k + 1}"] = weights[:, k]
        frame["loss"] = self.loss.ravel()
        frame["accuracy"] = self.accuracy.ravel()
        return frame

    def summary(self) -> dict[str, float | str | int]:
        """The grid's lowest loss and highest accuracy, where they are, and how many points
        diverged."""
        finite = np.where(np.isfinite(self.loss), self.loss, np.inf)
        i, j = np.unravel_index(np.argmin(finite), finite.shape)
        return {
            "label": self.label,
            "bn": self.bn or "none",
            "split": self.split,
            "min_loss": float(self.loss[i, j]),
            "min_loss_x": float(self.x[j]),
            "min_loss_y": float(self.y[i]),
            "max_accuracy": float(np.nanmax(self.accuracy)),
            "diverged_points": len(self.diverged),
        }

    def write_csv(self, path: str | Path) -> Path:
        """Write :meth:`to_frame` to ``path`` (folders created)."""
        return save_table(self.to_frame(), path)

    def plot(self, metric: str = "loss", ax: Axes | None = None, **kwargs) -> Figure:
        """Contour plot of ``metric``; see :func:`plot_plane`."""
        return plot_plane(self, metric, ax=ax, **kwargs)


def _parameter_vector(model: nn.Module) -> torch.Tensor:
    """All floating-point parameters of ``model`` as one float64 vector (CPU)."""
    return torch.cat(
        [p.detach().double().reshape(-1).cpu() for p in model.parameters() if p.is_floating_point()]
    )


def plane_basis(models: Sequence[nn.Module]) -> np.ndarray:
    """The three models' coordinates ``(3, 2)`` in the orthonormal basis of their plane
    (model 1 at the origin, model 2 on the positive x axis, model 3 above it).

    Raises ``ValueError`` when the plane is undefined (two equal models, or three on a line).
    """
    theta1, theta2, theta3 = (_parameter_vector(m) for m in models)
    d2, d3 = theta2 - theta1, theta3 - theta1
    n2 = float(d2.norm())
    if n2 == 0:
        raise ValueError(
            "Models 1 and 2 have identical parameters, so they span no plane; pass three "
            "different models."
        )
    c = float(d3 @ d2) / n2
    s = float((d3 - c * d2 / n2).norm())
    if s <= 1e-6 * max(n2, float(d3.norm())):  # float32 rounding is ~1e-7
        raise ValueError(
            "The three models lie on one line in weight space (model 3 is a combination "
            "of models 1 and 2), so they span no plane; pass three independent models."
        )
    return np.array([[0.0, 0.0], [n2, 0.0], [c, s]])


def plane_weights(points: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weights ``(..., 3)`` of the three models at plane coordinates ``(x, y)``."""
    (n2, _), (c, s) = points[1], points[2]
    b = np.asarray(y, dtype=np.float64) / s
    a = (np.asarray(x, dtype=np.float64) - b * c) / n2
    return np.stack([1.0 - a - b, a, b], axis=-1)


def _grid(points: np.ndarray, resolution: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Evenly spaced coordinates covering the triangle's bounding box plus ``margin`` times
    its larger side on every side."""
    low, high = points.min(0), points.max(0)
    pad = margin * float((high - low).max())
    return (
        np.linspace(low[0] - pad, high[0] + pad, resolution),
        np.linspace(low[1] - pad, high[1] + pad, resolution),
    )


def _check_arguments(
    models: Sequence[nn.Module], bn: str | None, resolution: int, margin: float
) -> None:
    if len(models) != 3:
        raise ValueError(f"A plane needs exactly 3 models, got {len(models)}.")
    check_compatible(models)
    if bn not in (None, "reset"):
        raise ValueError(
            f"bn must be None or 'reset' for a plane, got {bn!r} (REPAIR's targets are "
            "undefined off the segment between two models)."
        )
    if bn == "reset" and not has_batchnorm(models[0]):
        raise ValueError(
            f"bn='reset' needs BatchNorm layers and {type(models[0]).__name__} has none."
        )
    if not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}.")
    if not np.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}.")


def loss_planes(
    models: Sequence[nn.Module],
    data: Mapping[str, DataLike],
    resolution: int = 21,
    bn: str | None = "reset",
    *,
    method: str = "none",
    margin: float = 0.2,
    bn_data: DataLike | None = None,
    labels: Sequence[str] = ("model 1", "model 2", "model 3"),
    spec: PermutationSpec | None = None,
    batch_size: int = 500,
    progress: bool = True,
    cache: ResultCache | bool = True,
) -> dict[str, LossPlane]:
    """Loss and accuracy on a ``resolution x resolution`` grid over the plane through
    three models, on every split of ``data`` (e.g. ``{"train": ..., "test": ...}``).

    Models 2 and 3 are first aligned to model 1 by ``method`` (any of
    :func:`workbench.methods`; data for matching and for RESET: ``bn_data``, else the
    first split). The grid covers the triangle of the three models plus ``margin`` times
    its larger side around it. ``bn="reset"`` recomputes BatchNorm statistics at every
    point (see the module notes). One working model serves all points; results are cached
    by the content of the models and data and by all settings (``cache=False`` bypasses).
    """
    models = list(models)
    aligner = get_method(method)
    _check_arguments(models, bn, resolution, margin)
    if len(labels) != 3:
        raise ValueError(f"labels must name the 3 models, got {list(labels)}.")
    if not data:
        raise ValueError("data must name at least one split, e.g. {'train': train_set}.")
    reset_data = bn_data if bn_data is not None else next(iter(data.values()))
    check_data(models[0], {**data, "bn_data": reset_data} if bn else data)
    store = resolve_cache(cache)
    key = store.key(
        models=[fingerprint(m) for m in models],
        method=aligner.name,
        match_data=data_fingerprint(reset_data) if aligner.needs_data else "-",
        data=data_key(data),
        bn=bn or "none",
        bn_data=data_fingerprint(reset_data) if bn else "-",
        resolution=resolution,
        margin=margin,
        batch_size=batch_size,
    )
    hit = store.load("plane", key)
    if hit is None:
        tensors, settings = _compute_planes(
            models,
            data,
            resolution,
            bn,
            aligner.name,
            margin,
            reset_data,
            spec,
            batch_size,
            progress,
        )
        store.store("plane", key, tensors, settings)
    else:
        tensors, settings = hit
    grid = {name: tensors[name].numpy() for name in ("x", "y", "points")}
    return {
        split: LossPlane(
            loss=tensors[f"{split}/loss"].numpy(),
            accuracy=tensors[f"{split}/accuracy"].numpy(),
            split=split,
            bn=bn,
            label=method,
            labels=tuple(labels),
            settings=settings,
            **grid,
        )
        for split in data
    }


def _compute_planes(
    models: list[nn.Module],
    data: Mapping[str, DataLike],
    resolution: int,
    bn: str | None,
    method: str,
    margin: float,
    reset_data: DataLike,
    spec: PermutationSpec | None,
    batch_size: int,
    progress: bool,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Align, build the basis and the grid, and evaluate every point."""
    spec = resolve_spec(models[0], spec, data=reset_data)
    models = [models[0]] + [
        align(models[0], m, method, data=reset_data, spec=spec) for m in models[1:]
    ]
    points = plane_basis(models)
    x, y = _grid(points, resolution, margin)
    weights = plane_weights(points, *np.meshgrid(x, y)).reshape(-1, 3)
    correct = reset_correction(models[0], reset_data, batch_size) if bn == "reset" else None
    results = evaluate_points(
        models[0],
        [m.state_dict() for m in models],
        weights.tolist(),
        data,
        correct=correct,
        batch_size=batch_size,
        progress=progress,
        desc=f"plane {method}",
    )
    tensors = {
        "x": torch.tensor(x),
        "y": torch.tensor(y),
        "points": torch.tensor(points),
    }
    for split, (loss, accuracy) in results.items():
        tensors[f"{split}/loss"] = torch.tensor(loss.reshape(resolution, resolution))
        tensors[f"{split}/accuracy"] = torch.tensor(accuracy.reshape(resolution, resolution))
    settings = {
        "method": method,
        "models": [fingerprint(m) for m in models],
        "resolution": resolution,
        "margin": margin,
        "batch_size": batch_size,
        "parameters": "all floating-point parameters; BN buffers combined with the same weights",
    }
    return tensors, settings


def loss_plane(
    models: Sequence[nn.Module],
    data: DataLike,
    resolution: int = 21,
    bn: str | None = "reset",
    *,
    method: str = "none",
    **kwargs,
) -> LossPlane:
    """The loss and accuracy plane through three models on one dataset; see
    :func:`loss_planes` for the arguments (``margin``, ``bn_data``, ``labels``, ``cache``, ...)."""
    split = getattr(data, "split", "data")
    return loss_planes(models, {split: data}, resolution, bn, method=method, **kwargs)[split]


def log_ticks(low: float, high: float, count: int = 5) -> np.ndarray:
    """About ``count`` colour-bar ticks evenly spaced on a log axis from ``low`` to ``high``,
    rounded to two significant digits so that they read as plain numbers (a narrow loss
    range holds no power of ten, so a decade locator would label nothing or one tick)."""
    raw = np.geomspace(low, high, count)
    digits = 1 - np.floor(np.log10(raw)).astype(int)
    ticks = np.array([round(float(v), int(d)) for v, d in zip(raw, digits, strict=True)])
    return np.unique(ticks[(ticks >= low * (1 - 1e-9)) & (ticks <= high * (1 + 1e-9))])


def plot_plane(
    plane: LossPlane,
    metric: str = "loss",
    ax: Axes | None = None,
    levels: int = 12,
    title: str | None = None,
    colorbar: bool = True,
) -> Figure:
    """Filled contours of ``metric`` over the plane, the three models marked and named and
    the straight paths between them dashed. Loss uses logarithmically spaced levels (a
    plane spans orders of magnitude); lower loss and higher accuracy are both darker.
    Diverged grid points (NaN loss) are marked with crosses, never left as silent holes.
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}.")
    values = plane.loss if metric == "loss" else 100 * plane.accuracy
    finite = values[np.isfinite(values)]
    if ax is None:
        # a figure as tall as the plane needs, so that the equal-aspect plot fills it
        ratio = float(np.ptp(plane.y)) / max(float(np.ptp(plane.x)), 1e-12)
        fig, ax = new_figure(aspect=float(np.clip(0.66 * ratio + 0.14, 0.4, 1.4)))
    else:
        fig = ax.figure
    with paper_style():
        masked = np.ma.masked_invalid(values)
        if len(finite) and metric == "loss" and finite.min() > 0 and finite.max() > finite.min():
            bounds = np.geomspace(finite.min(), finite.max(), levels + 1)
            norm = mcolors.LogNorm(finite.min(), finite.max())
            filled = ax.contourf(plane.x, plane.y, masked, bounds, norm=norm, cmap="viridis")
        else:
            cmap = "viridis" if metric == "loss" else "viridis_r"
            filled = ax.contourf(plane.x, plane.y, masked, levels, cmap=cmap)
        ax.contour(filled, colors="white", linewidths=0.3, alpha=0.6)
        if colorbar:
            # an inset keeps the bar exactly as tall as the (equal-aspect) plot
            bar = fig.colorbar(filled, cax=ax.inset_axes((1.04, 0.0, 0.05, 1.0)))
            bar.set_label(_METRICS[metric])
            if metric == "loss" and isinstance(filled.norm, mcolors.LogNorm):
                bar.ax.minorticks_off()
                bar.set_ticks(log_ticks(finite.min(), finite.max()))
                bar.ax.yaxis.set_major_formatter(mticker.FormatStrFormatter("%.3g"))
        corners = np.vstack([plane.points, plane.points[:1]])
        ax.plot(corners[:, 0], corners[:, 1], "--", color="white", linewidth=0.8)
        ax.plot(
            plane.points[:, 0],
            plane.points[:, 1],
            "o",
            color="black",
            markeredgecolor="white",
            markersize=5,
        )
        span = float(np.ptp(plane.y)) or 1.0
        for (px, py), name in zip(plane.points, plane.labels, strict=True):
            ax.annotate(
                name,
                (px, py),
                xytext=(px, py + 0.04 * span),
                ha="center",
                va="bottom",
                color="black",
                fontweight="bold",
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
            )
        bad = plane.diverged
        if len(bad):
            ax.plot(bad[:, 0], bad[:, 1], "x", color="red", markersize=3, label="diverged")
            ax.legend(loc="lower right")
        ax.set_aspect("equal")
        ax.grid(False)
        ax.set_xlabel("Direction 1 (parameter distance)")
        ax.set_ylabel("Direction 2")
        bn = {None: "", "reset": ", RESET"}[plane.bn]
        ax.set_title(title if title is not None else f"{plane.label}{bn} ({plane.split})")
    return fig
