"""Figures of LMC curves: one line per curve, or the mean of many pairs with a band."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from workbench.figures import (
    METRIC_LABELS,
    color_for,
    figure_for,
    legend_above,
    linestyle_for,
    marker_for,
    paper_style,
    series_label,
)

if TYPE_CHECKING:  # the result draws itself with these functions
    from workbench.analysis.lmc.result import LMCCurve

__all__ = ["plot_bands", "plot_curves"]

_ALPHA_LABEL = r"Interpolation $\alpha$ (A $\rightarrow$ B)"


def _check_plot_input(curves: Sequence[LMCCurve], metric: str) -> None:
    if metric not in METRIC_LABELS:
        raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}.")
    if not curves:
        raise ValueError("Nothing to plot: no curves given.")


def _values(curve: LMCCurve, metric: str) -> np.ndarray:
    return curve.loss if metric == "loss" else 100 * curve.accuracy


def _finish(ax: Axes, metric: str, title: str | None, legend: bool) -> None:
    """Axis labels and honest ranges: a loss axis starts at 0 and an accuracy axis spans
    0-100%, so that a barrier of 0.05 does not look like one of 2."""
    ax.set_xlabel(_ALPHA_LABEL)
    ax.set_ylabel(METRIC_LABELS[metric])
    if metric == "loss":
        ax.set_ylim(bottom=0)
    else:
        ax.set_ylim(0, 100)
    if title:
        ax.set_title(title)
    if legend:
        legend_above(ax)


def _mark_diverged(ax: Axes, alphas: np.ndarray, name: str) -> None:
    """Crosses on the x axis where the loss diverged: never a silent gap in a line."""
    if len(alphas):
        ax.plot(
            alphas,
            np.zeros_like(alphas),
            "x",
            color="black",
            clip_on=False,
            label=f"{name}: diverged",
        )


def plot_curves(
    curves: Sequence[LMCCurve],
    metric: str = "loss",
    ax: Axes | None = None,
    title: str | None = None,
    legend: bool = True,
) -> Figure:
    """Plot ``metric`` ("loss" or "accuracy") against alpha for each curve.

    Colour and marker follow the method, line style the BatchNorm handling (solid: none,
    dashed: RESET, dotted: REPAIR); with several splits, train markers are hollow. The
    loss axis starts at 0 and the accuracy axis spans 0-100%; the legend sits above the
    axes. Points where the loss diverged (NaN) are marked with a cross on the axis rather
    than left as silent gaps. Where the far end is not B (:attr:`LMCCurve.far_end_is_b`),
    B's own value is drawn at alpha = 1 as an open star.
    """
    _check_plot_input(curves, metric)
    fig, ax = figure_for(ax)
    several_splits = len({c.split for c in curves}) > 1
    with paper_style():
        for index, curve in enumerate(curves):
            name = series_label(curve.label, curve.bn, curve.split if several_splits else None)
            color = color_for(curve.label, index)
            ax.plot(
                curve.alphas,
                _values(curve, metric),
                color=color,
                linestyle=linestyle_for(curve.bn),
                marker=marker_for(curve.label, index),
                markerfacecolor="white" if several_splits and curve.split == "train" else color,
                label=name,
            )
            if not curve.far_end_is_b:
                own = curve.loss_b if metric == "loss" else 100 * curve.accuracy_b
                ax.plot(
                    [1.0],
                    [own],
                    "*",
                    color=color,
                    markerfacecolor="white",
                    markersize=8,
                    clip_on=False,
                    label=f"{name}: model B itself",
                )
            _mark_diverged(ax, curve.diverged, name)
        _finish(ax, metric, title, legend)
    return fig


def plot_bands(
    curves: Sequence[LMCCurve],
    metric: str = "loss",
    band: str = "std",
    ax: Axes | None = None,
    title: str | None = None,
    legend: bool = True,
) -> Figure:
    """The mean curve of each (method, BN handling, split) over its pairs, with a band:
    ``band="std"`` (mean +/- one population standard deviation over the pairs) or
    ``"range"`` (the minimum to the maximum pair). Alphas where any pair diverged are
    marked with a cross on the axis (the mean is undefined there). Styles and axis ranges
    as in :func:`plot_curves`."""
    _check_plot_input(curves, metric)
    if band not in ("std", "range"):
        raise ValueError(f"band must be 'std' or 'range', got {band!r}.")
    groups: dict[tuple, list[LMCCurve]] = {}
    for curve in curves:
        groups.setdefault((curve.label, curve.bn, curve.split), []).append(curve)
    several_splits = len({split for _, _, split in groups}) > 1
    fig, ax = figure_for(ax)
    with paper_style():
        for index, ((label, bn, split), members) in enumerate(groups.items()):
            alphas = members[0].alphas
            if any(not np.array_equal(c.alphas, alphas) for c in members):
                raise ValueError(
                    f"Curves of {label!r} ({split}) use different alphas; compute them with "
                    "the same alphas to average them."
                )
            values = np.stack([_values(c, metric) for c in members])
            mean = values.mean(0)
            if band == "std":
                low, high = mean - values.std(0), mean + values.std(0)
            else:
                low, high = values.min(0), values.max(0)
            color = color_for(label, index)
            extra = f"{split}, {len(members)} pairs" if several_splits else f"{len(members)} pairs"
            name = series_label(label, bn, extra)
            ax.plot(alphas, mean, color=color, linestyle=linestyle_for(bn), label=name)
            ax.fill_between(alphas, low, high, color=color, alpha=0.2, linewidth=0)
            _mark_diverged(ax, alphas[~np.isfinite(values).all(0)], name)
        _finish(ax, metric, title, legend)
    return fig
