"""The contour plot of a loss plane, the three models marked and named."""

from __future__ import annotations

from typing import TYPE_CHECKING

import matplotlib.colors as mcolors
import matplotlib.ticker as mticker
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from workbench.figures import METRIC_LABELS, bn_label, new_figure, paper_style

if TYPE_CHECKING:  # the plane draws itself with plot_plane
    from workbench.analysis.planes.result import LossPlane

__all__ = ["log_ticks", "plot_plane"]


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
    if metric not in METRIC_LABELS:
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
            bar.set_label(METRIC_LABELS[metric])
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
        bn = f", {bn_label(plane.bn)}" if bn_label(plane.bn) else ""
        ax.set_title(title if title is not None else f"{plane.label}{bn} ({plane.split})")
    return fig
