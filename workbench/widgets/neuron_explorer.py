"""NeuronExplorer: a unit of model A beside its match in model B and the merged unit, with
feature visualizations, dataset exemplars and the correlation of the matched pair."""

from __future__ import annotations

import ipywidgets as widgets
from matplotlib.figure import Figure
from torch import nn

from workbench.alignment import matching_methods
from workbench.data import DataLike
from workbench.featviz import compare_layer, layer_exemplars, plot_unit_comparison, render_layer
from workbench.featviz.views import LayerComparison
from workbench.figures import EXPORT_DIR, method_label
from workbench.graph import resolve_spec
from workbench.vocabulary import keyword_only
from workbench.widgets.common import ComputeOnButton, ExportRow, FigureView, count_label


class NeuronExplorer(widgets.VBox):
    """Choose a layer and a matching method, press **Render layer** (the matching, feature
    visualizations of every unit in the four models, batched, and dataset exemplars, with
    a progress bar, all cached on disk: a layer rendered before comes back in well under a
    second), then move the **rank** slider, which walks A's units from the best matched
    (rank 1) to the worst; each step replaces the figure's images and titles in place.
    Changing the layer or method takes the figure off the screen until it is rendered (or
    shows at once what was rendered for it before). ``layer`` is the layer shown first
    (default: the first conv/linear layer).

    **Export** saves the unit's figure to ``figures/neurons_<layer>_<method>_unit<i>.*``
    (replaced when the same unit is exported again, as :func:`~workbench.figures.save`
    does).

    Controls: ``.layer``, ``.method``, ``.render``, ``.unit``; outputs: ``.info`` (HTML),
    ``.view`` (the image), ``.figure``, ``.comparison``; ``.export`` saves the figure.
    """

    @keyword_only(("data", "steps", "k", "layer", "export_dir"))
    def __init__(
        self,
        model_a: nn.Module,
        model_b: nn.Module,
        *,
        data: DataLike,
        steps: int = 128,
        k: int = 6,
        layer: str | None = None,
        export_dir: str = EXPORT_DIR,
    ) -> None:
        self._a, self._b, self._data, self._steps, self._k = model_a, model_b, data, steps, k
        self._export_dir = export_dir
        spec = resolve_spec(model_a, None, data=data)
        layers = [p for g in spec.groups.values() for p in g.producers]
        if layer is not None and layer not in layers:
            raise ValueError(f"layer must be one of the model's layers {layers}, got {layer!r}.")
        self.layer = widgets.Dropdown(options=layers, value=layer or layers[0], description="layer")
        self.method = widgets.Dropdown(
            options=[(method_label(m), m) for m in matching_methods()],
            description="method",
        )
        self.render = widgets.Button(
            description="Render layer", icon="play", button_style="primary"
        )
        self.unit = widgets.IntSlider(min=1, max=1, description="rank", disabled=True)
        self.info = widgets.HTML()
        self.progress = widgets.Output()
        self.view = FigureView()
        self.comparison: LayerComparison | None = None
        self._unit_figure: Figure | None = None  # one figure, its images replaced per unit
        self._changing: list = []
        self.export = ExportRow(self._paper_figure, f"{export_dir}/neurons", fresh=True)
        super().__init__(
            [
                widgets.HBox([self.layer, self.method, self.render]),
                self.info,
                self.progress,
                self.unit,
                self.view,
                self.export,
            ]
        )
        self.runner = ComputeOnButton(
            self.render,
            [self.layer, self.method],
            key=lambda: (self.layer.value, self.method.value),
            compute=self._render,
            show=self._show_layer,
            clear=self._clear,
            status=self.info,
            progress=self.progress,
            what="matching and rendering the layer",
        )
        self.unit.observe(self._show_unit, names="value")
        self.runner.refresh()

    @property
    def figure(self) -> Figure | None:
        """The figure on screen, or None."""
        return self.view.figure

    def _render(self, key: tuple) -> tuple:
        layer, method = key
        # no spec: the cache key of a cell's compare_layer(a, b, layer, data, method)
        comparison = compare_layer(self._a, self._b, layer=layer, data=self._data, method=method)
        units = list(range(len(comparison.match.matched)))
        images = render_layer(comparison, units, self._steps)
        exemplars = layer_exemplars(comparison, self._data, units, self._k)
        return comparison, images, exemplars

    def _clear(self) -> None:
        self.export.reset()
        self.comparison = None
        self.unit.disabled = True
        self.view.clear()

    def _show_layer(self, _key: tuple, rendered: tuple) -> None:
        self.comparison = rendered[0]
        self.unit.max = len(self.comparison.match.matched)
        self.unit.disabled = False
        self._show_unit()

    def _selected(self) -> int:
        """A's unit at the slider's rank."""
        return self.comparison.match.order()[self.unit.value - 1]

    def _paper_figure(self, into: Figure | None = None) -> Figure | None:
        if self.comparison is None:
            return None
        comparison, images, exemplars = self.runner.current
        units = list(range(len(comparison.match.matched)))
        return plot_unit_comparison(
            comparison, self._selected(), images, exemplars, units, into=into
        )

    def _show_unit(self, _change: dict | None = None) -> None:
        if self.comparison is None:
            return
        match, unit = self.comparison.match, self._selected()
        layer = match.layer.replace(".", "-")
        self.export.reset(f"{self._export_dir}/neurons_{layer}_{match.method}_unit{unit}")
        self.info.value = (
            f"<b>{method_label(match.method)} matching</b>, {match.layer}: rank "
            f"{self.unit.value} of {len(match.matched)}: A's unit <b>{unit}</b> matched to "
            f"B's unit <b>{int(match.matched[unit])}</b>, correlation "
            f"<b>{float(match.correlation[unit]):.2f}</b> on {count_label(self._data)}"
        )
        if self._unit_figure is None:
            fig = self._unit_figure = self._paper_figure()
            self._changing = [ax.images[0] for ax in fig.axes] + [ax.title for ax in fig.axes]
            self._changing += fig.texts
        else:
            self._paper_figure(into=self._unit_figure)
        if self.view.figure is self._unit_figure:
            self.view.update()
        else:
            self.view.show(self._unit_figure, self._changing, keep=True)
