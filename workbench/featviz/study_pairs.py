"""The unit study repeated over independently trained pairs, so that a per-layer number
comes with its spread: every summary is the mean over pairs of each pair's per-layer mean,
with the standard deviation over pairs (ddof 1) and the number of pairs, which every
figure prints in its caption. One pair's units are not independent observations of the
method (they share two networks); pairs are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from torch import nn

from workbench.data import DataLike
from workbench.featviz.points import describe_point
from workbench.featviz.study import layer_study
from workbench.featviz.study_results import LayerStudy
from workbench.figures import color_for, new_figure, paper_style, series_label

__all__ = ["PairsStudy", "pairs_study"]

DEFAULT_MEASURES = ("corr_parents", "corr_A", "corr_B", "cross_A", "cross_B", "frac_both")


@dataclass(frozen=True)
class PairsStudy:
    """One :class:`LayerStudy` per independently trained pair, all with the same settings."""

    studies: tuple[LayerStudy, ...]

    @property
    def pairs(self) -> int:
        return len(self.studies)

    def to_frame(self) -> pd.DataFrame:
        """Every unit of every layer of every pair (column ``pair``)."""
        frames = [s.to_frame().assign(pair=i) for i, s in enumerate(self.studies)]
        return pd.concat(frames, ignore_index=True)

    def per_pair(self) -> pd.DataFrame:
        """Each pair's per-layer summary (:meth:`LayerStudy.summary`), column ``pair``."""
        frames = [s.summary().assign(pair=i) for i, s in enumerate(self.studies)]
        return pd.concat(frames, ignore_index=True)

    def summary(self) -> pd.DataFrame:
        """One row per layer: for every measure of the per-layer summaries (the means over
        units and the label fractions), its mean over pairs (``<measure>``), standard
        deviation over pairs (``<measure>_sd``), and the number of pairs (``pairs``)."""
        frame = self.per_pair()
        keys = ["layer", "point", "method", "bn"]
        measures = [
            c
            for c in frame.columns
            if c not in (*keys, "alpha", "pair", "units") and not c.endswith("_std")
        ]
        grouped = frame.groupby(keys, sort=False)
        mean = grouped[measures].mean()
        spread = grouped[measures].std(ddof=1).add_suffix("_sd")
        found = pd.concat([mean, spread], axis=1).reset_index()
        found["pairs"] = self.pairs
        return found

    def plot(self, measures: Sequence[str] | None = None) -> Figure:
        """Per layer, one bar per measure: the mean over pairs with the standard deviation
        over pairs as an error bar; the caption gives the number of pairs. ``measures``
        default: :data:`DEFAULT_MEASURES`, without the cross-activations when the studies
        were not rendered."""
        frame = self.summary()
        if measures is None:
            rendered = self.studies[0].first.rendered
            measures = [m for m in DEFAULT_MEASURES if rendered or not m.startswith("cross_")]
        missing = [m for m in measures if m not in frame]
        if missing:
            raise ValueError(
                f"Measures {missing} are not in the summary; choose from "
                f"{[c for c in frame.columns if not c.endswith('_sd')][4:]}."
            )
        layers = list(frame["layer"])
        fig, ax = new_figure(columns=2, aspect=0.33)
        width = 0.8 / len(measures)
        first = self.studies[0].first
        with paper_style():
            for i, measure in enumerate(measures):
                x = np.arange(len(layers)) + (i - (len(measures) - 1) / 2) * width
                ax.bar(x, frame[measure], width * 0.9, yerr=frame[f"{measure}_sd"],
                       color=color_for("", i), label=measure, capsize=1.5,
                       error_kw={"linewidth": 0.7})  # fmt: skip
            ax.set_xticks(np.arange(len(layers)), layers)
            ax.set_ylabel("Mean over units")
            ax.set_ylim(0, 1.05)
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
            where = describe_point(first.point)
            ax.set_title(
                f"{series_label(first.method, first.bn)}; units observed {where}; "
                f"mean ± s.d. over n = {self.pairs} independently trained pairs"
            )
        return fig


def pairs_study(
    pairs: Sequence[tuple[nn.Module, nn.Module]],
    *,
    layers: Sequence[str] | None = None,
    data: DataLike,
    **kwargs: Any,
) -> PairsStudy:
    """:func:`~workbench.featviz.layer_study` (same keyword arguments) of every pair of
    ``pairs`` (at least 2 independently trained pairs, 3 or more for a paper)."""
    pairs = [tuple(p) for p in pairs]
    if len(pairs) < 2 or any(len(p) != 2 for p in pairs):
        raise ValueError(
            f"pairs must hold at least 2 pairs (model_a, model_b) of independently trained "
            f"models, to measure a spread over pairs; got {len(pairs)} entries."
        )
    return PairsStudy(
        tuple(layer_study(a, b, layers=layers, data=data, **kwargs) for a, b in pairs)
    )
