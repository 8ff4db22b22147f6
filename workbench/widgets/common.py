"""Pieces shared by the dashboards: the BatchNorm choices, showing a figure in an output
area, and the export row (a file stem, a button, a status line) that saves the current
figure with figures.save."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import ipywidgets as widgets
import matplotlib.pyplot as plt
from IPython.display import display
from matplotlib.figure import Figure
from torch import nn

from workbench.figures import bn_label, save
from workbench.merging import bn_modes


def bn_choices(model: nn.Module) -> list[tuple[str, str]]:
    """``(label, name)`` of every registered BatchNorm handling that applies to ``model``
    (``"none"`` first): the options of a dashboard's BatchNorm control."""
    return [(bn_label(name) or "none", name) for name in bn_modes(model)]


def show_figure(output: widgets.Output, fig: Figure) -> None:
    """Replace what ``output`` shows by ``fig`` (rendered once, as a static image)."""
    output.clear_output(wait=True)
    with output:
        display(fig)


class ExportRow(widgets.HBox):
    """A text box with the file stem and a button that saves ``current()``'s figure (and
    whatever ``extra(stem)`` writes, e.g. a CSV) in ``formats``; the status line lists the
    written files, or the error, until :meth:`reset` (the dashboard's selection changed).

    ``current`` should build the figure as a paper prints it (no UI markers); it is
    closed after saving when ``fresh=True``."""

    def __init__(
        self,
        current: Callable[[], Figure | None],
        stem: str,
        formats: Sequence[str] = ("pdf", "svg", "png"),
        extra: Callable[[Path], list[Path]] | None = None,
        fresh: bool = False,
    ) -> None:
        self._current, self._formats, self._extra = current, tuple(formats), extra
        self._fresh = fresh
        self.path = widgets.Text(value=stem, description="save as", continuous_update=False)
        self.button = widgets.Button(description="Export", icon="download")
        self.status = widgets.HTML()
        self.written: list[Path] = []
        super().__init__([self.path, self.button, self.status])
        self.button.on_click(self._export)

    def _export(self, _button: widgets.Button | None = None) -> None:
        fig = self._current()
        if fig is None:
            self.status.value = "Nothing to export yet."
            return
        stem = Path(self.path.value).expanduser()
        try:
            self.written = save(fig, stem, self._formats)
            if self._extra is not None:
                self.written += self._extra(stem)
        except (OSError, ValueError) as error:
            self.status.value = f"<span style='color:#b00'>Export failed: {error}</span>"
            return
        finally:
            if self._fresh:
                plt.close(fig)
        self.status.value = "wrote " + ", ".join(str(p) for p in self.written)

    def reset(self) -> None:
        """Forget the last export's status (what it wrote no longer shows what is on screen)."""
        self.written = []
        self.status.value = ""
