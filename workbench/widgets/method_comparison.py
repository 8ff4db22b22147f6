"""MethodComparison: run compare_methods from a few controls, show the table and figure."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from torch import nn

from workbench.alignment import methods
from workbench.analysis.comparison import compare_methods, plot_comparison
from workbench.data import DataLike
from workbench.figures import EXPORT_DIR, bn_label, method_label, save_table
from workbench.vocabulary import MEASURED, keyword_only
from workbench.widgets.common import ComputeOnButton, ExportRow, FigureView, bn_choices, count_label


class MethodComparison(widgets.VBox):
    """Merge the first N of ``models`` (N from 2 to all) with the ticked methods (those
    registered when the dashboard is made; naive, weight and activation ticked) on
    ``data`` (training data), evaluate on ``eval_data``, and show the tidy table (accuracy in %) and the
    accuracy-vs-N figure, its axis zoomed to the data (endpoints and ensembles included).
    Merging takes seconds to minutes, so it runs when **Run** is pressed, with a progress
    bar; every merge and every evaluation of the models is cached on disk
    (:func:`~workbench.compare_methods`), so what a cell above already computed with the
    same models and data is read back at once. Changing a method or the BatchNorm handling
    takes the table and figure off the screen until **Run** (or shows at once what was run
    for that selection before). **Export** saves the figure and the table as CSV to
    ``figures/method_comparison_<bn>.*`` in the working directory (replaced when exported
    again, as :func:`~workbench.figures.save` does).

    Controls: ``.methods`` (checkboxes, wrapping to the window's width), ``.bn``, ``.run``;
    outputs: ``.status`` (HTML: what is shown and this run's seconds), ``.table`` (the
    DataFrame), ``.figure``, ``.table_view`` (HTML), ``.view``.
    """

    @keyword_only(
        ("eval_data", "data", "export_dir"), renamed={"train_data": "data"}, moved=MEASURED
    )
    def __init__(
        self,
        models: Sequence[nn.Module],
        *,
        eval_data: DataLike,
        data: DataLike,
        export_dir: str = EXPORT_DIR,
        **merge_options: Any,
    ) -> None:
        self._models, self._data, self._train = list(models), eval_data, data
        if len(self._models) < 2:
            raise ValueError(f"MethodComparison needs at least 2 models, got {len(models)}.")
        self._options, self._export_dir = merge_options, export_dir
        self.methods = {
            m: widgets.Checkbox(
                value=m in ("none", "weight", "activation"),
                description=method_label(m),
                indent=False,
                layout=widgets.Layout(width="auto", margin="0 12px 0 0"),
            )
            for m in methods()
        }
        choices = bn_choices(self._models[0])
        self.bn = widgets.Dropdown(
            options=choices, value=next((v for _, v in choices if v != "none"), "none"),
            description="BatchNorm",
        )  # fmt: skip
        self.run = widgets.Button(description="Run", icon="play", button_style="primary")
        self.status = widgets.HTML()
        self.progress = widgets.Output()
        self.table_view = widgets.HTML()
        self.view = FigureView()
        self.table: pd.DataFrame | None = None
        self._figures: dict[tuple, Figure] = {}  # selection -> its figure, drawn once
        self.export = ExportRow(lambda: self.figure, self._stem(), extra=self._write_csv)
        row = widgets.Layout(flex_flow="row wrap", width="100%")
        super().__init__(
            [
                widgets.HBox(list(self.methods.values()), layout=row),
                widgets.HBox([self.bn, self.run, self.status], layout=row),
                self.progress,
                self.table_view,
                self.view,
                self.export,
            ]
        )
        self.runner = ComputeOnButton(
            self.run,
            [*self.methods.values(), self.bn],
            key=lambda: (tuple(m for m, box in self.methods.items() if box.value), self.bn.value),
            compute=self._merge_and_evaluate,
            show=self._show,
            clear=self._clear,
            status=self.status,
            progress=self.progress,
            what="merging and evaluating",
        )
        self.runner.refresh()

    @property
    def figure(self) -> Figure | None:
        """The figure on screen, or None."""
        return self.view.figure

    def _write_csv(self, stem: Path) -> list[Path]:
        return [save_table(self.table, stem.with_name(f"{stem.name}.csv"))]

    def _merge_and_evaluate(self, key: tuple) -> tuple[pd.DataFrame, float]:
        chosen, bn = key
        if not chosen:
            raise ValueError("Tick at least one method.")
        started = time.perf_counter()
        table = compare_methods(
            self._models,
            data=self._train,
            eval_data=self._data,
            methods=list(chosen),
            bn=bn,
            **self._options,
        )
        return table, time.perf_counter() - started

    def _stem(self) -> str:
        """The export stem named after the BatchNorm handling (the methods are in the CSV)."""
        return f"{self._export_dir}/method_comparison_{self.bn.value}"

    def _clear(self) -> None:
        self.export.reset(self._stem())
        self.table = None
        self.table_view.value = ""
        self.view.clear()

    def _show(self, key: tuple, result: tuple[pd.DataFrame, float]) -> None:
        self.export.reset(self._stem())
        (chosen, bn), (self.table, seconds) = key, result
        sizes = sorted(self.table["n_models"].unique())
        handling = bn_label(bn) or "no BatchNorm handling"
        self.status.value = (
            f"<b>{len(chosen)} methods</b> ({', '.join(method_label(m) for m in chosen)}) "
            f"with {handling}, N = {', '.join(map(str, sizes))}: merged on "
            f"{count_label(self._train)}, accuracy on {count_label(self._data)}; this run "
            f"took {seconds:.2f} s (merges computed before are read from the cache)"
        )
        seconds = "merge seconds (when first computed)"
        shown = self.table.assign(accuracy=100 * self.table["accuracy"]).rename(
            columns={"accuracy": "accuracy (%)", "seconds": seconds}
        )
        formats = {"accuracy (%)": "{:.2f}", "loss": "{:.4f}", seconds: "{:.2f}"}
        self.table_view.value = shown.to_html(
            index=False, na_rep="-", formatters={c: f.format for c, f in formats.items()}
        )
        if key not in self._figures:
            self._figures[key] = plot_comparison(self.table)
            _zoom_to_data(self._figures[key].axes[0], 100 * self.table["accuracy"].to_numpy())
        self.view.show(self._figures[key], keep=True)


def _zoom_to_data(ax, values: np.ndarray) -> None:
    """Zoom the accuracy axis to the plotted values (merges, endpoints, ensembles) with a
    margin, so that differences of a point between methods can be told apart."""
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    margin = max(0.1 * (high - low), 0.5)
    ax.set_ylim(max(0.0, low - margin), min(100.0, high + margin))
    ax.set_ylabel("Accuracy (%), axis zoomed to the data")
