"""NeuronExplorer: a unit of model A beside its match in model B and the merged unit, with
feature visualizations, dataset exemplars and the correlation of the matched pair."""

from __future__ import annotations

import ipywidgets as widgets
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from torch import nn

from workbench.alignment import matching_methods
from workbench.data import DataLike
from workbench.featviz import compare_layer, layer_exemplars, plot_unit_comparison, render_layer
from workbench.featviz.views import LayerComparison
from workbench.figures import EXPORT_DIR, method_label
from workbench.graph import resolve_spec
from workbench.widgets.common import ExportRow, show_figure


class NeuronExplorer(widgets.VBox):
    """Choose a layer and a matching method, press **Render layer** (feature
    visualizations of every unit in the four models, batched, with a progress bar, cached
    on disk), then move the **rank** slider, which walks A's units from the best matched
    (rank 1) to the worst and shows each one instantly. ``layer`` is the layer shown first
    (default: the first conv/linear layer).

    Controls: ``.layer``, ``.method``, ``.render``, ``.unit``; outputs: ``.info`` (HTML),
    ``.figure``, ``.comparison``; ``.export`` saves the figure.
    """

    def __init__(
        self,
        model_a: nn.Module,
        model_b: nn.Module,
        data: DataLike,
        steps: int = 128,
        k: int = 6,
        layer: str | None = None,
        export_stem: str = f"{EXPORT_DIR}/neurons",
    ) -> None:
        self._a, self._b, self._data, self._steps, self._k = model_a, model_b, data, steps, k
        spec = resolve_spec(model_a, None, data=data)
        layers = [p for g in spec.groups.values() for p in g.producers]
        self._spec = spec
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
        self.plot = widgets.Output()
        self.figure: Figure | None = None
        self.comparison: LayerComparison | None = None
        self._rendered: dict[tuple, tuple] = {}
        self.export = ExportRow(lambda: self.figure, export_stem)
        super().__init__(
            [
                widgets.HBox([self.layer, self.method, self.render]),
                self.progress,
                self.unit,
                self.info,
                self.plot,
                self.export,
            ]
        )
        self.layer.observe(self._selection_changed, names="value")
        self.method.observe(self._selection_changed, names="value")
        self.render.on_click(self._render)
        self.unit.observe(self._show, names="value")
        self._selection_changed()

    def _key(self) -> tuple:
        return (self.layer.value, self.method.value)

    def _selection_changed(self, _change: dict | None = None) -> None:
        self.export.reset()
        found = self._rendered.get(self._key())
        if found is None:
            self.comparison = None
            self.unit.disabled, self.render.disabled = True, False
            self.info.value = "<i>Press Render layer to visualize this layer's units.</i>"
            self.plot.clear_output()
            self.figure = None
            return
        self.comparison = found[0]
        self.unit.max = len(self.comparison.match.matched)
        self.unit.disabled, self.render.disabled = False, True
        self._show()

    def _render(self, _button: widgets.Button | None = None) -> None:
        layer, method = self._key()
        self.render.disabled = True
        self.progress.clear_output()
        with self.progress:
            comparison = compare_layer(self._a, self._b, layer, self._data, method, self._spec)
            units = list(range(len(comparison.match.matched)))
            images = render_layer(comparison, units, self._steps)
            exemplars = layer_exemplars(comparison, self._data, units, self._k)
        self.progress.clear_output()
        self._rendered[(layer, method)] = (comparison, images, exemplars)
        self._selection_changed()

    def _show(self, _change: dict | None = None) -> None:
        self.export.reset()
        comparison, images, exemplars = self._rendered[self._key()]
        match = comparison.match
        unit = match.order()[self.unit.value - 1]
        self.info.value = (
            f"rank {self.unit.value} of {len(match.matched)}: A's unit <b>{unit}</b> "
            f"matched to B's unit <b>{int(match.matched[unit])}</b>, correlation "
            f"<b>{float(match.correlation[unit]):.2f}</b>"
        )
        if self.figure is not None:
            plt.close(self.figure)
        units = list(range(len(match.matched)))
        self.figure = plot_unit_comparison(comparison, unit, images, exemplars, units)
        plt.close(self.figure)
        show_figure(self.plot, self.figure)
