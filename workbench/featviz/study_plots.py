"""Figures of the unit study, in the paper style (export with
:func:`workbench.figures.save`): the render grid, the labels by method, the inheritance
scatter, the heat map of cross-activation, the morph strip and the path curves. Every
figure names the observation point; renders that did not converge (quality below the
study's ``converged_quality``) carry an asterisk and a red frame.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from workbench.featviz.display import show_image
from workbench.featviz.points import describe_point
from workbench.featviz.study_results import LayerStudy, PathStudy, UnitStudy
from workbench.figures import PALETTE, color_for, figure_for, new_figure, paper_style, series_label

__all__ = [
    "LABEL_COLORS",
    "plot_cross_heatmap",
    "plot_inheritance",
    "plot_labels",
    "plot_morph_strip",
    "plot_path",
    "plot_unit_grid",
]

LABEL_COLORS = {
    "both": PALETTE["green"],
    "all": PALETTE["green"],
    "several": PALETTE["sky"],
    "A": PALETTE["blue"],
    "B": PALETTE["vermillion"],
    "neither": "0.7",
}
"""The colour of each label (a parent of N that has none: the method palette's)."""


def _where(study: UnitStudy) -> str:
    """``"features.conv1 after nonlinearity"``: the layer and its observation point."""
    return f"{study.layer} {describe_point(study.point)}"


def _point_words(study: UnitStudy) -> str:
    return describe_point(study.point)


def _title(study: UnitStudy) -> str:
    alpha = "" if study.alpha in (None, 0.5) else f", alpha = {study.alpha:g}"
    return f"{series_label(study.method, study.bn)}{alpha}; units observed {_point_words(study)}"


def _mark(ax: Axes, converged: bool) -> None:
    if not converged:
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_edgecolor(PALETTE["vermillion"])
            spine.set_linewidth(1.2)


def _rows(study: UnitStudy, count: int) -> list[int]:
    """``count`` positions spread over the units ranked by the parents' correlation (the
    best matched, ..., the worst)."""
    order = torch.argsort(study.corr_parents, descending=True)
    picks = np.unique(np.linspace(0, len(order) - 1, min(count, len(order))).round().astype(int))
    return order[picks].tolist()


def plot_unit_grid(study: LayerStudy, units: int = 3) -> Figure:
    """Rows: ``units`` units of each layer (spread from the best matched to the worst);
    columns: A, B's matched unit, the merged unit before and after BatchNorm handling.
    Each title carries the unit's numbers: render quality ``q`` for the parents, the
    parents' correlation ``r``; for the merged units the correlation with each parent and
    the cross-activation ``x`` (mean over parents) and the label."""
    first = study.first
    if not first.rendered:
        raise ValueError("The study was run with render=False: there are no images to show.")
    names = first.names
    rows = [(s, u) for s in study.studies.values() for u in _rows(s, units)]
    fig, axes = new_figure(
        columns=2, aspect=len(rows) / len(names) * 0.9, nrows=len(rows), ncols=len(names),
        squeeze=False,
    )  # fmt: skip
    with paper_style():
        for r, (s, u) in enumerate(rows):
            done = s.converged()
            for c, name in enumerate(names):
                ax = axes[r, c]
                quality = float(s.quality[c, u])
                star = "" if bool(done[c, u]) else "*"
                if c < len(s.parents):
                    title = f"{name} {int(s.matched[c, u])}{star} q={quality:.1f}"
                    if c == 1:
                        title += f" r={float(s.corr_parents[u]):.2f}"
                else:
                    v = c - len(s.parents)
                    corr = "/".join(f"{float(x):.2f}" for x in s.correlation[v, :, u])
                    title = f"{name}{star} r={corr} x={float(s.cross[v, :, u].mean()):.2f}"
                    if v == len(s.variants) - 1:
                        title += f" {s.labels[u]}"
                show_image(ax, s.images[name][u], title)
                ax.title.set_fontsize(5.5)
                _mark(ax, bool(done[c, u]))
            axes[r, 0].set_ylabel(f"{s.layer}\nunit {int(s.units[u])}", fontsize=6)
        fig.suptitle(
            f"{_title(first)}\nr: correlation, x: cross-activation, q: render quality "
            "(* not converged)",
            fontsize=7,
        )
    return fig


def plot_labels(studies: Sequence[LayerStudy]) -> Figure:
    """One panel per layer, one stacked bar per study (method and BatchNorm handling):
    the share of merged units labelled both / A / B / neither."""
    studies = list(studies)
    if not studies:
        raise ValueError("studies is empty: pass the layer studies of the methods to compare.")
    layers = studies[0].layers
    first = studies[0].first
    labels = ("both", *first.parents) if len(first.parents) == 2 else ("all", "several")
    labels = (*labels, *(first.parents if len(first.parents) > 2 else ()), "neither")
    fig, axes = new_figure(columns=2, aspect=0.34, ncols=len(layers), sharey=True, squeeze=False)
    names = [series_label(s.first.method, s.first.bn) for s in studies]
    with paper_style():
        for ax, layer in zip(axes[0], layers, strict=True):
            bottom = np.zeros(len(studies))
            for j, label in enumerate(labels):
                share = np.array([np.mean(np.array(s.studies[layer].labels) == label)
                                  for s in studies])  # fmt: skip
                ax.bar(np.arange(len(studies)), share, 0.8, bottom=bottom,
                       color=LABEL_COLORS.get(label, color_for("", j)), edgecolor="white",
                       linewidth=0.3, label=label)  # fmt: skip
                bottom += share
            ax.set_xticks(np.arange(len(studies)), names, rotation=40, ha="right", fontsize=6)
            ax.set_title(layer, fontsize=7)
            ax.set_ylim(0, 1)
        axes[0, 0].set_ylabel("Share of merged units")
        axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        fig.suptitle(f"Labels by method; units observed {_point_words(first)}", fontsize=8)
    return fig


def plot_inheritance(study: UnitStudy, ax: Axes | None = None) -> Figure:
    """Each merged unit's correlation with its unit of A (x) against with B's (y),
    coloured by label, with the thresholds."""
    fig, ax = figure_for(ax, aspect=0.9)
    corr = study.correlation[-1]
    threshold = study.thresholds["correlation"]
    with paper_style():
        for label in dict.fromkeys(study.labels):
            keep = np.array(study.labels) == label
            ax.scatter(corr[0, keep].numpy(), corr[1, keep].numpy(), s=6,
                       color=LABEL_COLORS.get(label, "0.3"), label=label, linewidths=0)  # fmt: skip
        ax.axvline(threshold, color="0.5", linestyle=":", linewidth=0.8)
        ax.axhline(threshold, color="0.5", linestyle=":", linewidth=0.8)
        ax.plot([-0.2, 1], [-0.2, 1], color="0.8", linewidth=0.6)
        ax.set_xlim(-0.2, 1.0)
        ax.set_ylim(-0.2, 1.0)
        ax.set_xlabel(f"Correlation with {study.parents[0]}'s unit")
        ax.set_ylabel(f"Correlation with {study.parents[1]}'s unit")
        ax.set_title(f"{_where(study)}\n{series_label(study.method, study.bn)}", fontsize=7)
        ax.legend(loc="lower left", fontsize=6)
    return fig


def plot_cross_heatmap(studies: Sequence[LayerStudy]) -> Figure:
    """Layers (rows) by methods (columns): the mean cross-activation of the merged units
    with their parents' units (mean over parents and the units where it is defined),
    annotated; "n/a" where it is defined for none (no render excites its unit above the
    unit's mean: too few steps)."""
    studies = [s for s in studies if s.first.rendered]
    if not studies:
        raise ValueError("No study with renders: the cross-activation needs render=True.")
    layers = studies[0].layers
    values = np.array(
        [[_defined_mean(s.studies[name].cross[-1].numpy()) for s in studies] for name in layers]
    )
    fig, ax = new_figure(aspect=0.25 + 0.12 * len(layers))
    with paper_style():
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=1, aspect="auto")
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center",
                    va="center", fontsize=6, color="black" if value >= 0.6 else "white")  # fmt: skip
        ax.set_xticks(range(len(studies)),
                      [series_label(s.first.method, s.first.bn) for s in studies],
                      rotation=30, ha="right")  # fmt: skip
        ax.set_yticks(range(len(layers)), layers)
        ax.grid(False)
        fig.colorbar(image, ax=ax, label="Cross-activation")
        ax.set_title(f"Mean cross-activation; units observed {_point_words(studies[0].first)}")
    return fig


def _defined_mean(values: np.ndarray) -> float:
    """The mean of the values that are not NaN, NaN if there is none."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def plot_morph_strip(paths: Sequence[PathStudy], unit: int) -> Figure:
    """One row per path (e.g. naive and weight matching): the render of merged ``unit``
    at each alpha, with its correlation with A's and B's unit in the titles, so that one
    sees the feature survive or dissolve along the path."""
    paths = list(paths)
    if not paths or not all(p.studies[0].rendered for p in paths):
        raise ValueError("Pass path studies run with render=True.")
    alphas = paths[0].alphas
    fig, axes = new_figure(columns=2, aspect=len(paths) / len(alphas) * 1.05,
                           nrows=len(paths), ncols=len(alphas), squeeze=False)  # fmt: skip
    with paper_style():
        for r, path in enumerate(paths):
            for c, study in enumerate(path.studies):
                found = (study.units == unit).nonzero()
                if not len(found):
                    raise ValueError(f"Unit {unit} was not studied; studied: {study.units[:8]}.")
                u = int(found[0])
                name = study.variants[-1]
                done = bool(study.converged()[len(study.parents) + len(study.variants) - 1, u])
                corr = "/".join(f"{float(x):.2f}" for x in study.correlation[-1, :, u])
                show_image(axes[r, c], study.images[name][u],
                            f"alpha={study.alpha:g}{'' if done else '*'}\nr={corr}")  # fmt: skip
                _mark(axes[r, c], done)
            first = path.studies[0]
            axes[r, 0].set_ylabel(series_label(first.method, first.bn), fontsize=7)
        first = paths[0].studies[0]
        fig.suptitle(f"{_where(first)}, unit {unit} along the path (r: correlation with "
                     "A's / B's unit; * not converged)", fontsize=7)  # fmt: skip
    return fig


def plot_path(path: PathStudy, ax: Axes | None = None) -> Figure:
    """The mean correlation (solid) and cross-activation (dashed) of the interpolated
    model's units with each parent's, against alpha."""
    fig, ax = figure_for(ax)
    frame = path.summary()
    first = path.studies[0]
    with paper_style():
        for p, parent in enumerate(first.parents):
            color = color_for("", p)
            ax.plot(frame["alpha"], frame[f"corr_{parent}"], "o-", color=color,
                    label=f"correlation with {parent}")  # fmt: skip
            if first.rendered:
                ax.plot(frame["alpha"], frame[f"cross_{parent}"], "s--", color=color,
                        label=f"cross-activation with {parent}")  # fmt: skip
        ax.set_xlabel("alpha (0: A, 1: aligned B)")
        ax.set_ylabel("Mean over units")
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{_where(first)}, {series_label(first.method, first.bn)}", fontsize=7)
        ax.legend(loc="lower center", fontsize=6)
    return fig
