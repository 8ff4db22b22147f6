"""LMCExplorer: pick two models, an alignment method and a BatchNorm treatment; see the
interpolation curve and its barriers, and move along the path."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure
from torch import nn

from workbench.alignment import align, pairwise_methods
from workbench.analysis.lmc import LMCCurve, lmc_curve, plot_curves
from workbench.data import DataLike
from workbench.figures import EXPORT_DIR, method_label, model_label, new_figure, series_label
from workbench.graph import resolve_spec
from workbench.modules import check_compatible
from workbench.widgets.common import ExportRow, bn_choices, show_figure


class LMCExplorer(widgets.VBox):
    """Interpolation curves between any pair of ``models`` (a list, or a dict name ->
    model), evaluated on ``data``; alignment (any method registered when the dashboard is
    made) and BatchNorm handling use ``train_data`` (default ``data``).

    Choosing a pair, method or BN handling shows its curve at once if it was computed
    before (here, or anywhere with the same models and data: curves are cached on disk);
    otherwise the **Compute** button computes it (progress bar below). The ``alpha``
    slider moves over the curve's points and reads the loss and accuracy of that
    interpolated model, marked on the curve. **Export** saves the figure as a paper prints
    it (no marker) to ``figures/lmc.*`` in the working directory.

    With a method that does not preserve model B's function (CCA), the far end of the path
    is B's image, not B: the line above the figure says so, the barrier is measured against
    B's own loss, and B's own value is drawn at alpha = 1 (see :class:`LMCCurve`).

    Controls: ``.pair``, ``.method``, ``.bn``, ``.compute``, ``.alpha``; outputs:
    ``.barrier`` and ``.readout`` (HTML), ``.figure`` (the current Figure), ``.curve``.
    """

    def __init__(
        self,
        models: Sequence[nn.Module] | Mapping[str, nn.Module],
        data: DataLike,
        train_data: DataLike | None = None,
        alphas: int = 11,
        metric: str = "loss",
        export_stem: str = f"{EXPORT_DIR}/lmc",
    ) -> None:
        named = (
            dict(models)
            if isinstance(models, Mapping)
            else {model_label(i): m for i, m in enumerate(models)}
        )
        if len(named) < 2:
            raise ValueError(f"LMCExplorer needs at least 2 models, got {len(named)}.")
        check_compatible(list(named.values()))
        self._models, self._data = named, data
        self._train = train_data if train_data is not None else data
        self._alphas, self._metric = alphas, metric
        first = next(iter(named.values()))
        self._spec = resolve_spec(first, None, data=self._train)
        self._curves: dict[tuple, LMCCurve] = {}
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
        self.plot = widgets.Output()
        self.figure: Figure | None = None
        self.curve: LMCCurve | None = None
        self.export = ExportRow(self._paper_figure, export_stem, fresh=True)
        super().__init__(
            [
                widgets.HBox([self.pair, self.method]),
                widgets.HBox([self.bn, self.compute]),
                self.progress,
                self.barrier,
                self.plot,
                self.alpha,
                self.readout,
                self.export,
            ]
        )
        for control in (self.pair, self.method, self.bn):
            control.observe(self._selection_changed, names="value")
        self.compute.on_click(self._compute)
        self.alpha.observe(self._alpha_changed, names="value")
        self._selection_changed()

    def _key(self) -> tuple:
        return (self.pair.value, self.method.value, self.bn.value)

    def _selection_changed(self, _change: dict | None = None) -> None:
        self.export.reset()
        self.curve = self._curves.get(self._key())
        if self.curve is None:
            self.compute.disabled = False
            self.barrier.value = "<i>Not computed yet: press Compute.</i>"
            self.readout.value = ""
            self.plot.clear_output()
            self.figure = None
            return
        self.compute.disabled = True
        self._show()

    def _compute(self, _button: widgets.Button | None = None) -> None:
        pair, method, bn = self._key()
        name_a, name_b = pair.split(" | ")
        model_a, model_b = self._models[name_a], self._models[name_b]
        self.compute.disabled = True
        self.progress.clear_output()
        with self.progress:
            aligned = align(model_a, model_b, method=method, data=self._train, spec=self._spec)
            self._curves[(pair, method, bn)] = lmc_curve(
                model_a,
                aligned,
                eval_data=self._data,
                data=self._train,
                alphas=self._alphas,
                bn=bn,
                label=method,
                spec=self._spec,
                original_b=model_b,
            )
        self.progress.clear_output()
        self._selection_changed()

    def _show(self) -> None:
        curve = self.curve
        name_b = self.pair.value.split(" | ")[1]
        text = (
            f"<b>{series_label(curve.label, curve.bn)}</b>: loss barrier "
            f"<b>{curve.barrier:.3f}</b>, accuracy barrier {100 * curve.accuracy_barrier:.1f} "
            f"points, midpoint accuracy {100 * curve.midpoint_accuracy:.1f}%"
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
        if self.figure is not None:
            plt.close(self.figure)
        self.figure = self._paper_figure()
        ax = self.figure.axes[0]
        (self._marker,) = ax.plot([], [], "o", color="black", markersize=7, zorder=5)
        plt.close(self.figure)  # shown through the output area only
        self._alpha_changed()

    def _paper_figure(self) -> Figure | None:
        """The current curve as a paper prints it: no alpha marker, honest axis ranges."""
        if self.curve is None:
            return None
        fig, ax = new_figure()
        plot_curves([self.curve], self._metric, ax=ax)
        return fig

    def _alpha_changed(self, _change: dict | None = None) -> None:
        if self.curve is None:
            return
        alpha = self.alpha.value
        index = int(np.argmin(np.abs(self.curve.alphas - alpha)))
        loss, accuracy = self.curve.loss[index], self.curve.accuracy[index]
        self.readout.value = (
            f"<b>alpha = {alpha:.2f}</b>: accuracy <b>{100 * accuracy:.1f}%</b>, loss {loss:.3f}"
        )
        value = loss if self._metric == "loss" else 100 * accuracy
        self._marker.set_data([self.curve.alphas[index]], [value])
        show_figure(self.plot, self.figure)
