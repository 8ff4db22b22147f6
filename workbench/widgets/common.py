"""Pieces shared by the dashboards: the BatchNorm choices; the status texts (a busy sign,
a prompt, an error); :class:`FigureView`, a figure shown as an image that is redrawn in
place, only what changed; :class:`ComputeOnButton`, the compute-on-button pattern with
no stale result on screen; and the export row (a file stem, a button, a status line) that
saves a figure with figures.save."""

from __future__ import annotations

import html
import io
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from workbench.figures import bn_label, save
from workbench.merging import bn_modes


def bn_choices(model: nn.Module) -> list[tuple[str, str]]:
    """``(label, name)`` of every registered BatchNorm handling that applies to ``model``
    (``"none"`` first): the options of a dashboard's BatchNorm control."""
    return [(bn_label(name) or "none", name) for name in bn_modes(model)]


def busy(text: str) -> str:
    """A status line that says a computation is running (an hourglass, in italics)."""
    return f"<span class='wb-busy' style='color:#a15c00'>&#8987; <i>{html.escape(text)}</i></span>"


def prompt(text: str) -> str:
    """A status line that asks for an action (nothing on screen is out of date)."""
    return f"<i>{html.escape(text)}</i>"


def failure(error: BaseException) -> str:
    """A status line with the error a computation raised."""
    return f"<span style='color:#b00'>{html.escape(str(error))}</span>"


def count_label(data: Any) -> str:
    """``"1000 test images"``: the size and split of a dataset, for readouts."""
    split = getattr(data, "split", None)
    return f"{len(data)} {split + ' ' if split else ''}images"


class FigureView(widgets.Image):
    """A matplotlib figure on screen as a PNG image widget that is redrawn in place.

    :meth:`show` draws a figure once (layout included) and keeps the pixels of everything
    but its ``dynamic`` artists (a marker, the images of a panel); :meth:`update` draws
    only those over the kept pixels (blitting on the Agg canvas) and sends the new image,
    a few milliseconds instead of a new figure and a tight-bbox render per step. A figure
    shown with ``keep=True`` keeps its pixels after another is shown (up to
    :attr:`KEPT` of them), so that showing it again draws only its dynamic artists. The
    image widget is replaced in the page, never cleared and displayed again, so it does
    not flicker. ``.figure`` is the figure shown (``None`` after :meth:`clear`).
    """

    KEPT = 32

    def __init__(self) -> None:
        # at its own size: a column of widgets would stretch it to the output's width
        super().__init__(
            format="png", layout=widgets.Layout(display="none", align_self="flex-start")
        )
        self.figure: Figure | None = None
        self._dynamic: list[Artist] = []
        self._background = None
        self._kept: dict[int, tuple[Figure, list[Artist], Any]] = {}

    def show(self, fig: Figure, dynamic: Iterable[Artist] = (), keep: bool = False) -> None:
        """Show ``fig``; its ``dynamic`` artists are redrawn by :meth:`update`. A kept
        figure shown again is not drawn again (its first ``dynamic`` artists stay)."""
        kept = self._kept.get(id(fig))
        if kept is None:
            plt.close(fig)  # shown through this widget only, never by the inline backend
            canvas = FigureCanvasAgg(fig)
            kept = (fig, list(dynamic), None)
            for artist in kept[1]:
                artist.set_animated(True)
            canvas.draw()
            kept = (fig, kept[1], canvas.copy_from_bbox(fig.bbox))
            fig.set_layout_engine("none")  # the layout is done: updates keep it
            if keep:
                while len(self._kept) >= self.KEPT:
                    self._kept.pop(next(iter(self._kept)))
                self._kept[id(fig)] = kept
        self.figure, self._dynamic, self._background = kept
        self.update()

    def update(self) -> None:
        """Redraw the dynamic artists (after their data changed) and send the image."""
        if self.figure is None:
            return
        canvas = self.figure.canvas
        canvas.restore_region(self._background)
        for artist in self._dynamic:
            self.figure.draw_artist(artist)
        width, height = canvas.get_width_height(physical=True)
        buffer = io.BytesIO()
        pixels = Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw")
        pixels.save(buffer, format="png", compress_level=1)
        self.value = buffer.getvalue()
        self.layout.display = None

    def clear(self) -> None:
        """Take the figure off the screen (what it showed no longer holds)."""
        self.figure, self._dynamic, self._background = None, [], None
        self.layout.display = "none"
        self.value = b""


def compute_showing_progress(
    status: widgets.HTML, progress: widgets.Output, what: str, compute: Callable[[], Any]
) -> Any:
    """``compute()``'s result, computed with a busy sign (``what``...) in ``status`` and its
    progress bars in ``progress`` (cleared after); an error is shown in ``status`` and
    raised. The core of every button that computes (:class:`ComputeOnButton`, the
    interpolation slider's finer grid)."""
    status.value = busy(f"{what}... (progress below)")
    progress.clear_output()
    try:
        with progress:
            return compute()
    except Exception as error:
        status.value = failure(error)
        raise
    finally:
        progress.clear_output()


class ComputeOnButton:
    """The dashboards' compute-on-button pattern, with never a stale result on screen.

    What the ``controls`` say is ``key()``. A result computed for a key is kept and shown
    again at once (``show(key, result)``) whenever the controls come back to it; for a
    key not computed yet, ``clear()`` takes the old result off the screen at once and the
    ``status`` line asks to press ``button``. Pressing it runs ``compute(key)`` (its
    progress bars go to ``progress``) with a busy sign in ``status`` and the button
    disabled; an error is shown in ``status`` and raised. ``.seconds`` is how long the
    last press took, ``.results`` the kept results, ``.current`` the one shown (or None).
    """

    def __init__(
        self,
        button: widgets.Button,
        controls: Sequence[widgets.ValueWidget],
        *,
        key: Callable[[], Hashable],
        compute: Callable[[Hashable], Any],
        show: Callable[[Hashable, Any], None],
        clear: Callable[[], None],
        status: widgets.HTML,
        progress: widgets.Output,
        what: str = "computing",
    ) -> None:
        self.button, self._key, self._compute = button, key, compute
        self._show, self._clear, self.status, self.progress = show, clear, status, progress
        self._what = what
        self.results: dict[Hashable, Any] = {}
        self.current: Any = None
        self.seconds: float | None = None
        for control in controls:
            control.observe(self.refresh, names="value")
        button.on_click(self.press)

    def refresh(self, _change: dict | None = None) -> None:
        """Show the kept result of what the controls say, or clear the screen and ask."""
        key = self._key()
        self.current = self.results.get(key)
        if self.current is None:
            self._clear()
            self.button.disabled = False
            self.status.value = prompt(
                f"Not computed yet for this selection: press {self.button.description}."
            )
            return
        self.button.disabled = True
        self._show(key, self.current)

    def press(self, _button: widgets.Button | None = None) -> None:
        """Compute the result of what the controls say, keep it and show it."""
        key = self._key()
        self.button.disabled = True
        self._clear()
        started = time.perf_counter()
        try:
            result = compute_showing_progress(
                self.status, self.progress, self._what, lambda: self._compute(key)
            )
        except Exception:
            self.button.disabled = False
            raise
        self.seconds = time.perf_counter() - started
        self.results[key] = result
        self.refresh()


class ExportRow(widgets.HBox):
    """A text box with the file stem and a button that saves ``current()``'s figure (and
    whatever ``extra(stem)`` writes, e.g. a CSV) in ``formats``; the status line lists the
    written files, or the error, until :meth:`reset` (the dashboard's selection changed).
    Files are replaced, as :func:`workbench.figures.save` does: a dashboard whose figures
    differ by selection names the stem after it (:meth:`reset` with ``stem``).

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
        self._fresh, self._default = fresh, stem
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
            self.status.value = failure(ValueError(f"Export failed: {error}"))
            return
        finally:
            if self._fresh:
                plt.close(fig)
        self.status.value = "wrote " + ", ".join(str(p) for p in self.written)

    def reset(self, stem: str | None = None) -> None:
        """Forget the last export's status (what it wrote no longer shows what is on
        screen); with ``stem``, the stem named after the new selection replaces the
        previous default (a stem the user typed stays)."""
        self.written = []
        self.status.value = ""
        if stem is not None:
            if self.path.value == self._default:
                self.path.value = stem
            self._default = stem
