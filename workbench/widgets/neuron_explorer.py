"""NeuronExplorer: a unit of model A beside its match in model B and the merged unit, with
feature visualizations, dataset exemplars, the unit study's measures and label (units
sorted by any of them), and the morph strip of the selected unit along the path."""

from __future__ import annotations

import html

import ipywidgets as widgets
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from torch import nn

from workbench.alignment import matching_methods
from workbench.data import DataLike
from workbench.featviz import (
    compare_layer,
    layer_exemplars,
    path_study,
    plot_morph_strip,
    plot_unit_comparison,
    unit_study,
)
from workbench.featviz.points import check_point, describe_point, observable_layers
from workbench.featviz.study_results import UnitStudy
from workbench.featviz.views import LayerComparison
from workbench.figures import EXPORT_DIR, method_label
from workbench.graph import resolve_spec
from workbench.modules import has_batchnorm
from workbench.vocabulary import keyword_only
from workbench.widgets.common import ComputeOnButton, ExportRow, FigureView, count_label

SORT_BY = {
    "match": "correlation of the matched pair",
    "corr_A": "merged unit's correlation with A's",
    "corr_B": "merged unit's correlation with B's",
    "cross_A": "cross-activation with A's",
    "cross_B": "cross-activation with B's",
    "overlap_A": "exemplar overlap with A's",
    "overlap_B": "exemplar overlap with B's",
    "std_ratio": "variance ratio (collapse: low)",
}
"""The measures the rank slider can walk the units by (highest first)."""

MORPH_ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


class NeuronExplorer(widgets.VBox):
    """Choose a layer and a matching method, press **Render layer** (the matching, the
    unit study of the layer (:func:`~workbench.featviz.unit_study`: every unit's
    correlations, cross-activations, exemplar overlaps, variance ratio and label) with
    its feature visualizations of every unit in the four models, batched, and dataset
    exemplars, with a progress bar, all cached on disk), then move the **rank** slider,
    which walks A's units from the highest to the lowest value of the **sort by**
    measure (default: the correlation of the matched pair); each step replaces the
    figure's images and titles in place, and the info line gives the unit's label and
    measures. **Morph strip** renders the selected unit of the interpolated model at
    alpha = 0, 0.25, 0.5, 0.75, 1 on the naive and the aligned path. Changing the layer
    or method takes the figures off the screen until they are computed (or shows at once
    what was computed for them before). ``layer`` is the layer shown first (default: the
    first layer that has the observation ``point``); pictures, exemplars and measures are
    all read at ``point`` (:data:`~workbench.featviz.points.POINTS`).

    **Export** saves the unit's figure to ``figures/neurons_<layer>_<method>_unit<i>.*``
    (replaced when the same unit is exported again, as :func:`~workbench.figures.save`
    does).

    Controls: ``.layer``, ``.method``, ``.render``, ``.sort``, ``.unit``, ``.morph``;
    outputs: ``.info`` (HTML), ``.view`` (the image), ``.figure``, ``.comparison``,
    ``.study``, ``.morph_view``; ``.export`` saves the figure.
    """

    @keyword_only(("data", "steps", "k", "layer", "point", "export_dir"))
    def __init__(
        self,
        model_a: nn.Module,
        model_b: nn.Module,
        *,
        data: DataLike,
        steps: int = 128,
        k: int = 6,
        layer: str | None = None,
        point: str = "relu",
        export_dir: str = EXPORT_DIR,
    ) -> None:
        self._a, self._b, self._data, self._steps, self._k = model_a, model_b, data, steps, k
        self._point, self._export_dir = check_point(point), export_dir
        self._bn = "reset" if has_batchnorm(model_a) else "none"
        layers = _observable_layers(model_a, data, self._point)
        if layer is not None and layer not in layers:
            raise ValueError(
                f"layer must be one of the model's layers observable at point={point!r} "
                f"{layers}, got {layer!r}."
            )
        self.layer = widgets.Dropdown(options=layers, value=layer or layers[0], description="layer")
        self.method = widgets.Dropdown(
            options=[(method_label(m), m) for m in matching_methods()],
            description="method",
        )
        self.render = widgets.Button(
            description="Render layer", icon="play", button_style="primary"
        )
        self.sort = widgets.Dropdown(
            options=[(text, name) for name, text in SORT_BY.items()], description="sort by"
        )
        self.unit = widgets.IntSlider(min=1, max=1, description="rank", disabled=True)
        self.info = widgets.HTML()
        self.progress = widgets.Output()
        self.view = FigureView()
        self.morph = widgets.Button(description="Morph strip", icon="film", disabled=True)
        self.morph_info = widgets.HTML()
        self.morph_view = FigureView()
        self.comparison: LayerComparison | None = None
        self.study: UnitStudy | None = None
        self._order: list[int] = []
        self._unit_figure: Figure | None = None  # one figure, its images replaced per unit
        self._changing: list = []
        self.export = ExportRow(self._paper_figure, f"{export_dir}/neurons", fresh=True)
        super().__init__(
            [
                widgets.HBox([self.layer, self.method, self.render]),
                self.info,
                self.progress,
                widgets.HBox([self.sort, self.unit]),
                self.view,
                self.export,
                widgets.HBox([self.morph, self.morph_info]),
                self.morph_view,
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
            what="matching, studying and rendering the layer",
        )
        self.morphs = ComputeOnButton(
            self.morph,
            [],  # refreshed by the layer's runner and the unit's steps (_refresh_morph)
            key=self._morph_key,
            compute=self._morph_strip,
            show=lambda _key, fig: self.morph_view.show(fig, keep=True),
            clear=self.morph_view.clear,
            status=self.morph_info,
            progress=self.progress,
            what="rendering the unit along the naive and the aligned path",
        )
        self.sort.observe(self._sort, names="value")
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
        study = unit_study(
            self._a, self._b, layer=layer, data=self._data, method=method, bn=self._bn,
            point=self._point, steps=self._steps, k=self._k,
        )  # fmt: skip
        if not np.array_equal(study.matched[1].numpy(), comparison.match.matched.numpy()):
            raise RuntimeError(
                f"The unit study matched {layer}'s units differently from the comparison "
                f"({method} matching on the same data): please report this."
            )
        names = dict(zip(comparison.models, (*study.parents, *study.variants), strict=True))
        images = {shown: study.images[name] for shown, name in names.items()}
        units = list(range(len(comparison.match.matched)))
        exemplars = layer_exemplars(comparison, self._data, units, self._k, point=self._point)
        return comparison, images, exemplars, study

    def _clear(self) -> None:
        self.export.reset()
        self.comparison = self.study = None
        self.unit.disabled = True
        self.view.clear()
        self._refresh_morph()

    def _show_layer(self, _key: tuple, rendered: tuple) -> None:
        self.comparison, self.study = rendered[0], rendered[3]
        self.unit.max = len(self.comparison.match.matched)
        self.unit.disabled = False
        self._sort()

    def _sort(self, _change: dict | None = None) -> None:
        """Order A's units by the chosen measure, highest first (undefined ones last)."""
        if self.comparison is None:
            return
        if self.sort.value == "match":
            self._order = [int(u) for u in self.comparison.match.order()]
        else:
            frame = self.study.to_frame()
            values = frame[self.sort.value].to_numpy(dtype=float)
            ranked = np.argsort(np.where(np.isnan(values), np.inf, -values), kind="stable")
            self._order = [int(frame["unit"].iloc[i]) for i in ranked]
        if self.unit.value == 1:
            self._show_unit()
        else:
            self.unit.value = 1

    def _selected(self) -> int:
        """A's unit at the slider's rank."""
        return self._order[self.unit.value - 1]

    def _paper_figure(self, into: Figure | None = None) -> Figure | None:
        if self.comparison is None:
            return None
        comparison, images, exemplars, _ = self.runner.current
        units = list(range(len(comparison.match.matched)))
        return plot_unit_comparison(
            comparison, self._selected(), images, exemplars, units, into=into
        )

    def _refresh_morph(self) -> None:
        """The selected unit's morph strip if computed before; the button only once a
        layer is rendered."""
        self.morphs.refresh()
        if self.comparison is None:
            self.morph.disabled = True
            self.morph_info.value = ""

    def _show_unit(self, _change: dict | None = None) -> None:
        self._refresh_morph()
        if self.comparison is None:
            return
        match, unit = self.comparison.match, self._selected()
        layer = match.layer.replace(".", "-")
        self.export.reset(f"{self._export_dir}/neurons_{layer}_{match.method}_unit{unit}")
        self.info.value = (
            f"<b>{method_label(match.method)} matching</b>, {match.layer} (units observed "
            f"{describe_point(self._point)}): rank {self.unit.value} of {len(match.matched)} "
            f"by {html.escape(SORT_BY[self.sort.value], quote=False)}: A's unit <b>{unit}</b> matched to "
            f"B's unit <b>{int(match.matched[unit])}</b>, correlation "
            f"<b>{float(match.correlation[unit]):.2f}</b> on {count_label(self._data)}<br>"
            f"{_measures(self.study, unit)}"
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

    def _morph_key(self) -> tuple | None:
        if self.comparison is None:
            return None
        return (self.layer.value, self.method.value, self._selected())

    def _morph_strip(self, key: tuple | None) -> Figure:
        if key is None:
            raise ValueError("Render the layer first: the morph strip is of its selected unit.")
        layer, method, unit = key
        paths = [
            path_study(
                self._a, self._b, layer=layer, data=self._data, alphas=MORPH_ALPHAS,
                method=name, bn=self._bn, point=self._point, units=[unit],
                steps=self._steps, k=self._k,
            )
            for name in ("none", method)
        ]  # fmt: skip
        return plot_morph_strip(paths, unit=unit)


def _observable_layers(model: nn.Module, data: DataLike, point: str) -> list[str]:
    """The layers whose units are permuted and that have the observation ``point``."""
    spec = resolve_spec(model, None, data=data)
    producers = [p for g in spec.groups.values() for p in g.producers]
    found = observable_layers(model, layers=producers, point=point)
    if not found:
        raise ValueError(
            f"{type(model).__name__} has no permuted layer observable at point={point!r}; "
            "try point='output'."
        )
    return found


def _measures(study: UnitStudy, unit: int) -> str:
    """The info line's second row: the unit's label and measures from the unit study."""
    row = study.to_frame().set_index("unit").loc[unit]
    shown = [
        f"{name} {float(row[name]):.2f}"
        for name in SORT_BY
        if name in row.index and not pd.isna(row[name])
    ]
    return f"label <b>{html.escape(str(row['label']))}</b>; " + ", ".join(shown)
