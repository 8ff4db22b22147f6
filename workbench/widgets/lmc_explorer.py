"""LMCExplorer: pick two models, an alignment method and a BatchNorm treatment; see the
interpolation curve and its barriers, and move along the path."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure
from torch import nn

from workbench.alignment import pairwise_methods
from workbench.analysis.lmc import LMCCurve, pairwise_curves, plot_curves
from workbench.data import DataLike
from workbench.figures import (
    EXPORT_DIR,
    bn_label,
    method_label,
    model_label,
    new_figure,
    series_label,
)
from workbench.modules import check_compatible
from workbench.vocabulary import MEASURED, keyword_only
from workbench.widgets.common import ComputeOnButton, ExportRow, FigureView, bn_choices, count_label


class LMCExplorer(widgets.VBox):
    """Interpolation curves between any pair of ``models`` (a list, or a dict name ->
    model), evaluated on ``eval_data``; alignment (any method registered when the dashboard
    is made) and BatchNorm handling use ``data`` (training data; default ``eval_data``).

    **Compute** computes the curve of the chosen pair, method and BN handling (progress bar
    below); curves are cached on disk keyed by the two original models, the method, the
    data and the settings (:func:`~workbench.pairwise_curves`), so a curve computed before,
    here or in any cell with the same inputs, comes back in a file read, alignment
    included. A curve shown once is shown again at once when the controls come back to it;
    a selection not computed yet clears the figure. The ``alpha`` slider moves a marker
    over the curve's points (only the marker is redrawn) and reads the loss and accuracy of
    that interpolated model. **Export** saves the figure as a paper prints it (no marker)
    to ``figures/lmc_<A>-<B>_<method>_<bn>.*`` in the working directory, replacing an
    earlier export of the same selection as :func:`~workbench.figures.save` does.

    With a method that does not preserve model B's function (CCA), the far end of the path
    is B's image, not B: the line above the figure says so, the barrier is measured against
    B's own loss, and B's own value is drawn at alpha = 1 (see :class:`LMCCurve`).

    Controls: ``.pair``, ``.method``, ``.bn``, ``.compute``, ``.alpha``; outputs:
    ``.barrier`` and ``.readout`` (HTML), ``.view`` (the image), ``.figure`` (the current
    Figure), ``.curve``.
    """

    @keyword_only(
        ("eval_data", "data", "alphas", "metric", "export_dir"),
        renamed={"train_data": "data"},
        moved=MEASURED,
    )
    def __init__(
        self,
        models: Sequence[nn.Module] | Mapping[str, nn.Module],
        *,
        eval_data: DataLike,
        data: DataLike | None = None,
        alphas: int = 11,
        metric: str = "loss",
        export_dir: str = EXPORT_DIR,
    ) -> None:
        named = (
            dict(models)
            if isinstance(models, Mapping)
            else {model_label(i): m for i, m in enumerate(models)}
        )
        if len(named) < 2:
            raise ValueError(f"LMCExplorer needs at least 2 models, got {len(named)}.")
        check_compatible(list(named.values()))
        self._models, self._data = named, eval_data
        self._train = data if data is not None else eval_data
        self._alphas, self._metric, self._export_dir = alphas, metric, export_dir
        first = next(iter(named.values()))
        self.pair = widgets.Dropdown(
            options=[f"{a} | {b}" for a, b in itertools.combinations(named, 2)],
            description="pair",
        )
        self.method = widgets.Dropdown(
            options=[(method_label(m), m) for m in pairwise_methods()],
            value="weight",
            description="method",
        )
        self.bn = widgets.ToggleButtons(options=bn_choices(first), description="BatchNorm")
        self.compute = widgets.Button(description="Compute", icon="play", button_style="primary")
        self.alpha = widgets.SelectionSlider(
            options=[round(float(a), 4) for a in np.linspace(0, 1, alphas)],
            value=0.5,
            description="alpha",
            continuous_update=True,
        )
        self.barrier = widgets.HTML()
        self.readout = widgets.HTML()
        self.progress = widgets.Output()
        self.view = FigureView()
        self.curve: LMCCurve | None = None
        self._marker = None
        self._figures: dict[tuple, tuple] = {}  # selection -> (figure, marker), drawn once
        self.export = ExportRow(self._paper_figure, self._stem(), fresh=True)
        super().__init__(
            [
                widgets.HBox([self.pair, self.method]),
                widgets.HBox([self.bn, self.compute]),
                self.barrier,
                self.progress,
                self.view,
                self.alpha,
                self.readout,
                self.export,
            ]
        )
        self.runner = ComputeOnButton(
            self.compute,
            [self.pair, self.method, self.bn],
            key=lambda: (self.pair.value, self.method.value, self.bn.value),
            compute=self._curve_of,
            show=self._show,
            clear=self._clear,
            status=self.barrier,
            progress=self.progress,
            what="aligning and computing the curve",
        )
        self.alpha.observe(self._alpha_changed, names="value")
        self.runner.refresh()

    @property
    def figure(self) -> Figure | None:
        """The figure on screen (with the alpha marker), or None."""
        return self.view.figure

    def _ends(self, pair: str) -> tuple[str, str]:
        name_a, name_b = pair.split(" | ")
        return name_a, name_b

    def _stem(self) -> str:
        """The export stem named after the selection: pair, method and BN handling."""
        ends = "-".join(name.replace(" ", "") for name in self._ends(self.pair.value))
        return f"{self._export_dir}/lmc_{ends}_{self.method.value}_{self.bn.value}"

    def _curve_of(self, key: tuple) -> LMCCurve:
        pair, method, bn = key
        name_a, name_b = self._ends(pair)
        split = getattr(self._data, "split", "data")
        (curve,) = pairwise_curves(
            [self._models[name_a], self._models[name_b]],
            eval_data={split: self._data},
            alphas=self._alphas,
            bn=bn,
            method=method,
            data=self._train,
        )
        return dataclasses.replace(curve, label=method)

    def _clear(self) -> None:
        self.export.reset(self._stem())
        self.curve = None
        self.readout.value = ""
        self.view.clear()

    def _show(self, key: tuple, curve: LMCCurve) -> None:
        self.export.reset(self._stem())
        self.curve = curve
        name_a, name_b = self._ends(key[0])
        handling = f" and {bn_label(curve.bn)}" if bn_label(curve.bn) else ""
        text = (
            f"<b>{series_label(curve.label, curve.bn)}</b>: loss barrier "
            f"<b>{curve.barrier:.3f}</b>, accuracy barrier {100 * curve.accuracy_barrier:.1f} "
            f"points, midpoint accuracy {100 * curve.midpoint_accuracy:.1f}%<br>"
            f"A (alpha = 0) is {name_a}, B (alpha = 1) is {name_b} aligned to it by "
            f"{method_label(curve.label)}; measured on {count_label(self._data)}, "
            f"alignment{handling} on {count_label(self._train)}"
        )
        if not curve.far_end_is_b:
            end = len(curve.alphas) - 1
            text += (
                f"<br><span style='color:#b00'>The far end is {method_label(curve.label)}'s "
                f"image of {name_b}, not {name_b}: it computes another function (loss "
                f"{curve.loss[end]:.3f}, accuracy {100 * curve.accuracy[end]:.1f}%; "
                f"{name_b} itself: {curve.loss_b:.3f}, {100 * curve.accuracy_b:.1f}%). "
                f"The barriers are measured against {name_b}'s own loss and accuracy.</span>"
            )
        self.barrier.value = text
        if key not in self._figures:
            fig = self._paper_figure()
            ax = fig.axes[0]
            low, high = ax.get_ylim()  # headroom: the marker stays inside at the highest point
            ax.set_ylim(low, max(high, np.nanmax(self._values(curve)) + 0.06 * (high - low)))
            (marker,) = ax.plot([], [], "o", color="black", markersize=6, zorder=5)
            self._figures[key] = (fig, marker)
        fig, self._marker = self._figures[key]
        self.view.show(fig, [self._marker], keep=True)
        self._alpha_changed()

    def _paper_figure(self) -> Figure | None:
        """The current curve as a paper prints it: no alpha marker, honest axis ranges."""
        if self.curve is None:
            return None
        fig, ax = new_figure()
        plot_curves([self.curve], self._metric, ax=ax)
        name_a, name_b = self._ends(self.pair.value)
        ax.set_xlabel(rf"$\alpha$: A = {name_a} (0) $\rightarrow$ B = {name_b} (1)")
        ax.set_ylabel(f"{ax.get_ylabel()}, {count_label(self._data)}")
        return fig

    def _values(self, curve: LMCCurve) -> np.ndarray:
        """The plotted metric of ``curve`` (accuracy in %)."""
        return curve.loss if self._metric == "loss" else 100 * curve.accuracy

    def _alpha_changed(self, _change: dict | None = None) -> None:
        if self.curve is None:
            return
        alpha = self.alpha.value
        index = int(np.argmin(np.abs(self.curve.alphas - alpha)))
        loss, accuracy = self.curve.loss[index], self.curve.accuracy[index]
        self.readout.value = (
            f"<b>alpha = {alpha:.2f}</b> ({1 - alpha:.0%} A + {alpha:.0%} B): accuracy "
            f"<b>{100 * accuracy:.1f}%</b>, loss {loss:.3f} on {count_label(self._data)}"
        )
        self._marker.set_data([self.curve.alphas[index]], [self._values(self.curve)[index]])
        self.view.update()
