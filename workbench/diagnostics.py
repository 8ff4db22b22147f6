"""Per-layer diagnostics of an alignment: how well the matched units correlate, group by
group, before and after; and which groups matter, from the barrier when only the first k
groups (in graph order) are aligned and the rest keep model B's order."""

from __future__ import annotations

import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from workbench.alignment import apply_permutation, collect_statistics, match
from workbench.data import DataLike
from workbench.figures import color_for, new_figure, paper_style
from workbench.graph import PermutationSpec
from workbench.lmc import lmc_curve

__all__ = [
    "matched_correlations",
    "partial_alignment",
    "plot_matched_correlations",
    "plot_partial_alignment",
]


def matched_correlations(
    model_a: nn.Module,
    model_b: nn.Module,
    data: DataLike,
    method: str = "activation",
    spec: PermutationSpec | None = None,
) -> pd.DataFrame:
    """Tidy table (group, unit, stage, correlation): for every unit of A in every observed
    group, the correlation of its activations with B's unit of the same index
    (``stage="before"``) and with B's unit that ``method`` matched to it (``"after"``)."""
    perm, spec = match(model_a, model_b, method, data, spec)
    stats = collect_statistics([model_a, model_b], data, spec, progress=False)
    rows = []
    for group, found in stats.items():
        correlation = found.correlation(0, 1)
        units = torch.arange(found.size)
        for stage, partner in (("before", units), ("after", perm[group])):
            values = correlation[units, partner].tolist()
            rows += [(group, u, stage, v) for u, v in zip(units.tolist(), values, strict=True)]
    return pd.DataFrame(rows, columns=["group", "unit", "stage", "correlation"])


def plot_matched_correlations(table: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Box plots of the matched units' correlations per group, before and after."""
    if ax is None:
        fig, ax = new_figure(aspect=0.6)
    else:
        fig = ax.figure
    groups = list(dict.fromkeys(table["group"]))
    with paper_style():
        for offset, stage, color in (
            (-0.18, "before", "0.6"),
            (0.18, "after", color_for("activation")),
        ):
            data = [
                table[(table.group == g) & (table.stage == stage)]["correlation"] for g in groups
            ]
            parts = ax.boxplot(
                data,
                positions=[i + offset for i in range(len(groups))],
                widths=0.3,
                patch_artist=True,
                showfliers=False,
            )
            for box in parts["boxes"]:
                box.set_facecolor(color)
            ax.plot([], [], "s", color=color, label=stage)
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
        ax.set_ylabel("Correlation of matched units")
        ax.legend(loc="lower left")
    return fig


def partial_alignment(
    model_a: nn.Module,
    model_b: nn.Module,
    data: DataLike,
    eval_data: DataLike,
    method: str = "weight",
    bn: str | None = "reset",
    alphas: int = 5,
    spec: PermutationSpec | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Barrier and midpoint accuracy on ``eval_data`` when only the first ``k`` groups of
    the spec (graph order) take ``method``'s permutation, for k = 0 .. number of groups.
    Every such partial permutation leaves B's function unchanged, so the differences are
    due to alignment alone."""
    perm, spec = match(model_a, model_b, method, data, spec)
    names = list(spec.groups)
    rows = []
    for k in tqdm(range(len(names) + 1), desc="partial alignment", disable=not progress):
        partial = {
            name: perm[name] if i < k else torch.arange(spec.groups[name].size)
            for i, name in enumerate(names)
        }
        aligned = apply_permutation(model_b, spec, partial)
        curve = lmc_curve(
            model_a,
            aligned,
            eval_data,
            alphas,
            bn,
            bn_data=data,
            spec=spec,
            label=method,
            progress=False,
        )
        rows.append(
            {
                "groups_aligned": k,
                "last_group": names[k - 1] if k else "-",
                "barrier": curve.barrier,
                "midpoint_accuracy": curve.midpoint_accuracy,
            }
        )
    return pd.DataFrame(rows)


def plot_partial_alignment(table: pd.DataFrame, ax: Axes | None = None) -> Figure:
    """Barrier against the number of groups aligned (labelled with the last group)."""
    if ax is None:
        fig, ax = new_figure()
    else:
        fig = ax.figure
    with paper_style():
        ax.plot(table["groups_aligned"], table["barrier"], marker="o", color=color_for("weight"))
        ax.set_xticks(table["groups_aligned"], table["last_group"], rotation=30, ha="right")
        ax.set_xlabel("Aligned up to group")
        ax.set_ylabel("Loss barrier")
    return fig
