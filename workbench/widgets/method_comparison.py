"""MethodComparison: run compare_methods from a few controls, show the table and figure."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import HTML, display
from matplotlib.figure import Figure
from torch import nn

from workbench.alignment import methods
from workbench.analysis.comparison import compare_methods, plot_comparison
from workbench.data import DataLike
from workbench.figures import EXPORT_DIR, method_label, save_table
from workbench.widgets.common import ExportRow, bn_choices, show_figure


class MethodComparison(widgets.VBox):
    """Merge the first N of ``models`` (N from 2 to all) with the ticked methods (those
    registered when the dashboard is made; naive, weight and activation ticked) on
    ``train_data``, evaluate on ``data``, and show the tidy table and the accuracy-vs-N
    figure. Merging takes seconds to minutes, so it runs when **Run** is pressed, with a
    progress bar; every merge is cached on disk (:func:`~workbench.compare_methods`), so
    what a cell above already computed with the same models and data is read back at
    once. **Export** saves the figure and the table as CSV to ``figures/`` in the working
    directory.

    Controls: ``.methods`` (ToggleButtons-like checkboxes), ``.bn``, ``.run``; outputs:
    ``.table`` (the DataFrame), ``.figure``, ``.table_view``, ``.plot``.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        data: DataLike,
        train_data: DataLike,
        export_stem: str = f"{EXPORT_DIR}/method_comparison",
        **merge_options,
    ) -> None:
        self._models, self._data, self._train = list(models), data, train_data
        if len(self._models) < 2:
            raise ValueError(f"MethodComparison needs at least 2 models, got {len(models)}.")
        self._options = merge_options
        self.methods = {
            m: widgets.Checkbox(
                value=m in ("none", "weight", "activation"), description=method_label(m)
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
        self.table_view = widgets.Output()
        self.plot = widgets.Output()
        self.table: pd.DataFrame | None = None
        self.figure: Figure | None = None
        self.export = ExportRow(lambda: self.figure, export_stem, extra=self._write_csv)
        super().__init__(
            [
                widgets.HBox(list(self.methods.values())),
                widgets.HBox([self.bn, self.run, self.status]),
                self.progress,
                self.table_view,
                self.plot,
                self.export,
            ]
        )
        self.run.on_click(self._run)
        for control in (*self.methods.values(), self.bn):
            control.observe(lambda _change: self.export.reset(), names="value")

    def _write_csv(self, stem: Path) -> list[Path]:
        return [save_table(self.table, stem.with_name(f"{stem.name}.csv"))]

    def _run(self, _button: widgets.Button | None = None) -> None:
        chosen = [m for m, box in self.methods.items() if box.value]
        if not chosen:
            self.status.value = "<span style='color:#b00'>Tick at least one method.</span>"
            return
        bn = self.bn.value
        self.run.disabled = True
        self.status.value = "running..."
        self.progress.clear_output()
        try:
            with self.progress:
                self.table = compare_methods(
                    self._models,
                    data=self._train,
                    eval_data=self._data,
                    methods=chosen,
                    bn=bn,
                    **self._options,
                )
        finally:
            self.run.disabled = False
        self.progress.clear_output()
        self.export.reset()
        sizes = sorted(self.table["n_models"].unique())
        self.status.value = f"done: {len(chosen)} methods, N = {', '.join(map(str, sizes))}"
        self.table_view.clear_output(wait=True)
        with self.table_view:
            display(HTML(self.table.round(4).to_html(index=False)))
        if self.figure is not None:
            plt.close(self.figure)
        self.figure = plot_comparison(self.table)
        plt.close(self.figure)
        show_figure(self.plot, self.figure)
