"""The coefficients NP Merge learned, layer by layer: how far each layer moves from the
plain average.

:func:`~workbench.merging.learned.np_merge` keeps per-layer quantiles of its learned
coefficients in ``report.coefficients`` (learning problem -> layer -> statistics); the
figure here draws them as one box per layer and problem (box: the 25-75% quantiles, line:
the median, whiskers: 5-95%, dot: the mean), with each problem's starting value as a
dashed line (0.5 for two models; k / (k + 1) for the k-th successive merge; one line at
1 / N for the joint softmax weights).
"""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from workbench.figures import PALETTE, figure_for, legend_above, paper_style
from workbench.merging import MergeReport, MergeResult

__all__ = ["plot_coefficients"]

_COLORS = [PALETTE[k] for k in ("blue", "vermillion", "green", "orange", "purple", "sky")]


def _coefficients(result: MergeResult | MergeReport) -> dict[str, dict[str, dict[str, float]]]:
    report = result.report if isinstance(result, MergeResult) else result
    if not isinstance(report, MergeReport):
        raise TypeError(
            f"plot_coefficients takes np_merge's MergeResult (or its report), got "
            f"{type(result).__name__}."
        )
    if not report.coefficients:
        raise ValueError(
            "This result has no learned coefficients: pass the result of "
            "wb.np_merge(...) (or merge_many(..., merge='learned')) with steps > 0."
        )
    return report.coefficients


def plot_coefficients(result: MergeResult | MergeReport, ax: Axes | None = None) -> Figure:
    """A box per layer (x axis, in the model's order) of the coefficients NP Merge
    learned, one colour per learning problem (successive merges or, for the joint
    softmax, the models), with the starting value of each as a dashed line."""
    found = _coefficients(result)
    layers = list(next(iter(found.values())))
    fig, ax = figure_for(ax, columns=2 if len(layers) > 10 else 1)
    width = 0.8 / len(found)
    with paper_style():
        for index, (problem, per_layer) in enumerate(found.items()):
            color = _COLORS[index % len(_COLORS)]
            offset = (index - (len(found) - 1) / 2) * width
            stats = [
                {
                    "label": layer,
                    "med": s["q50"],
                    "q1": s["q25"],
                    "q3": s["q75"],
                    "whislo": s["q05"],
                    "whishi": s["q95"],
                    "mean": s["mean"],
                    "fliers": [],
                }
                for layer, s in ((layer, per_layer[layer]) for layer in layers)
            ]
            boxes = ax.bxp(
                stats,
                positions=[i + offset for i in range(len(layers))],
                widths=0.85 * width,
                showmeans=True,
                showfliers=False,
                patch_artist=True,
                manage_ticks=False,
                boxprops={"facecolor": color, "alpha": 0.45, "edgecolor": color},
                medianprops={"color": color},
                whiskerprops={"color": color},
                capprops={"color": color},
                meanprops={"marker": ".", "markerfacecolor": "black", "markeredgecolor": "none"},
            )
            boxes["boxes"][0].set_label(problem)
        inits = [next(iter(per_layer.values()))["init"] for per_layer in found.values()]
        shared = len(set(inits)) == 1  # the joint weights all start at 1 / N
        for index, init in enumerate(inits[:1] if shared else inits):
            color = PALETTE["black"] if shared else _COLORS[index % len(_COLORS)]
            ax.axhline(init, color=color, linestyle="--", linewidth=0.8)
        ax.set_xticks(range(len(layers)), layers)
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        ax.set_xlim(-0.6, len(layers) - 0.4)
        ax.set_ylim(0.0, 1.0)
        ax.set_xlabel("Layer")
        ax.set_ylabel("Learned coefficient")
    if len(found) > 1:
        legend_above(ax, ncols=min(len(found), 4))
    return fig
