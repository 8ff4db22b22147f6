"""Paper style and export: figures that go into a paper as they are.

The style uses a colorblind-safe palette (Okabe & Ito), a small serif-free font sized for
print, embedded TrueType fonts in PDF (``pdf.fonttype = 42``: editable text, accepted by
every publisher) and standard one- and two-column widths.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from workbench.files import atomic_write, check_writable_dir

__all__ = [
    "COLUMN_WIDTH",
    "EXPORT_DIR",
    "METHOD_MARKERS",
    "METHOD_PALETTE",
    "PALETTE",
    "TEXT_WIDTH",
    "MethodStyle",
    "bn_label",
    "color_for",
    "forget_method_style",
    "legend_above",
    "linestyle_for",
    "marker_for",
    "method_label",
    "method_style",
    "model_label",
    "new_figure",
    "paper_style",
    "save",
    "save_table",
    "series_label",
    "set_bn_style",
    "set_method_style",
    "shared_legend",
]

# Okabe & Ito (2008), safe for the common forms of color blindness.
PALETTE = {
    "black": "#000000",
    "orange": "#E69F00",
    "sky": "#56B4E9",
    "green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "purple": "#CC79A7",
}
_CYCLE = [PALETTE[k] for k in ("blue", "vermillion", "green", "orange", "purple", "sky", "black")]

# The colours methods take, in the order a method registered without one gets the first
# that no other method has: Okabe-Ito (black is the ensembles'), then Paul Tol's muted
# scheme (also safe for colour blindness), yellow last (faint on white).
METHOD_PALETTE = [
    *(PALETTE[k] for k in ("vermillion", "blue", "green", "purple", "orange", "sky")),
    *("#882255", "#44AA99", "#999933", "#332288", "#CC6677", "#DDCC77", "#117733"),
    PALETTE["yellow"],
]
# The markers they take the same way: matplotlib's filled markers but the ensembles' "*",
# then a line marker (six methods beyond the built-in ones get one of their own).
METHOD_MARKERS = ["s", "o", "^", "D", "v", "P", "X", "h", "<", ">", "p", "d", "H", "8", "1"]

COLUMN_WIDTH = 3.25  # inches: one column of a two-column paper (ICML, NeurIPS single is 5.5)
TEXT_WIDTH = 6.75  # inches: full text width of a two-column paper

STYLE: dict[str, Any] = {
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans"],
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.frameon": False,
    "lines.linewidth": 1.3,
    "lines.markersize": 3.5,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.35,
    "axes.prop_cycle": mpl.cycler(color=_CYCLE),
    "figure.dpi": 110,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}


# One naming scheme for tables, figures, dashboards and the command line. The alignment
# method "none" (no alignment) is shown as "naive", its name in the literature; BatchNorm
# handling is a suffix ("weight + RESET"); models are numbered from 0, as in Python.
# BatchNorm handling is told apart by line style, not by a lighter shade of the method's
# colour (shades of one hue are hard to tell apart in print). Both are filled by the
# registry of handlings (workbench.merging.renorm), which this module does not import.
_BN_LABELS: dict[str, str] = {}
_BN_LINESTYLES: dict[str, str] = {}
_FIX = "pass a path in a folder you can write to"

EXPORT_DIR = "figures"
"""Where dashboards and the command line export by default: ``figures/`` in the working
directory (``notebooks/figures/`` for the notebooks; git-ignored)."""
METRIC_LABELS = {"loss": "Cross-entropy loss", "accuracy": "Accuracy (%)"}
"""Axis labels of the two metrics every analysis reports."""


@dataclass(frozen=True)
class MethodStyle:
    """How a method is shown: its display ``label``, ``color`` and ``marker``."""

    label: str
    color: str
    marker: str


# Filled by the registry of methods (workbench.alignment.register_method), which this module
# does not import; the ensembles, shown beside merges, are not a registered method.
_METHOD_STYLES = {"ensemble": MethodStyle("ensemble", PALETTE["black"], "*")}


def set_method_style(
    name: str, label: str | None = None, color: str | None = None, marker: str | None = None
) -> MethodStyle:
    """Record how the method ``name`` is shown (called by
    :func:`~workbench.alignment.register_method`): ``label`` (default the name), and the
    ``color`` and ``marker`` given, else the first of :data:`METHOD_PALETTE` and
    :data:`METHOD_MARKERS` that no other method has, so that every registered method has
    its own, the same in every figure."""
    others = [style for key, style in _METHOD_STYLES.items() if key != name]
    taken_colors, taken_markers = {o.color for o in others}, {o.marker for o in others}
    free_colors = [c for c in METHOD_PALETTE if c not in taken_colors]
    free_markers = [m for m in METHOD_MARKERS if m not in taken_markers]
    turn = len(others)  # once every one is taken, they are handed out in turn again
    style = MethodStyle(
        label or name,
        color or (free_colors[0] if free_colors else METHOD_PALETTE[turn % len(METHOD_PALETTE)]),
        marker or (free_markers[0] if free_markers else METHOD_MARKERS[turn % len(METHOD_MARKERS)]),
    )
    _METHOD_STYLES[name] = style
    return style


def forget_method_style(name: str) -> None:
    """Forget the style of ``name`` (an unregistered method): its colour is free again."""
    _METHOD_STYLES.pop(name, None)


def method_style(method: str) -> MethodStyle | None:
    """The style of a method named by its registry name or its display label (``"naive"``
    is ``"none"``'s), ``None`` for a name no method has."""
    if method in _METHOD_STYLES:
        return _METHOD_STYLES[method]
    return next((s for s in _METHOD_STYLES.values() if s.label == method), None)


def method_label(method: str) -> str:
    """The display name of an alignment or merging method (``"none"`` -> ``"naive"``)."""
    style = method_style(method)
    return style.label if style is not None else method


def set_bn_style(bn: str, label: str | None, linestyle: str | None = None) -> None:
    """Record (or, with ``label=None``, forget) how the BatchNorm handling ``bn`` is shown:
    the suffix of a series' name and its line style. Called by the registry of handlings
    (:func:`~workbench.merging.renorm.register_bn`)."""
    if label is None:
        _BN_LABELS.pop(bn, None)
        _BN_LINESTYLES.pop(bn, None)
        return
    _BN_LABELS[bn] = label
    _BN_LINESTYLES[bn] = linestyle or "-"


def bn_label(bn: str | None) -> str:
    """The display name of a registered BatchNorm handling (``None`` is ``"none"``):
    ``""``, ``"RESET"``, ``"REPAIR"``, ..."""
    name = "none" if bn is None else bn
    if name not in _BN_LABELS:
        raise ValueError(
            f"bn must be one of {list(_BN_LABELS)} (None for 'none'), got {bn!r}; a new "
            "handling is registered with workbench.register_bn."
        )
    return _BN_LABELS[name]


def series_label(method: str, bn: str | None = None, extra: str | None = None) -> str:
    """``"weight + RESET"``; ``extra`` is appended in parentheses (a split, a pair count)."""
    label = method_label(method)
    if bn_label(bn):
        label += f" + {bn_label(bn)}"
    return f"{label} ({extra})" if extra else label


def model_label(index: int) -> str:
    """``"model 0"``: models are numbered from 0 everywhere."""
    return f"model {index}"


def _style_of(label: str) -> MethodStyle | None:
    """The style of the method a series label names: the label without its BatchNorm
    suffix and extra (``"weight + RESET (test)"``), else its first word, lower case
    (``"Weight matching"``)."""
    if not label:
        return None
    base = label.split(" + ")[0].split(" (")[0]
    return method_style(base) or method_style(base.split()[0].lower())


def color_for(label: str, index: int = 0) -> str:
    """The colour of a method (its registry name, display name, or a series label that
    starts with either), the same in every figure; else the ``index``-th palette colour."""
    style = _style_of(label)
    return style.color if style is not None else _CYCLE[index % len(_CYCLE)]


def linestyle_for(bn: str | None) -> str:
    """The line style of a BatchNorm handling: solid (none), dashed (RESET), dotted
    (REPAIR), or the one it was registered with."""
    bn_label(bn)  # validates
    return _BN_LINESTYLES["none" if bn is None else bn]


def marker_for(label: str, index: int = 0) -> str:
    """The marker of a method (as in :func:`color_for`), else the ``index``-th marker."""
    style = _style_of(label)
    return style.marker if style is not None else METHOD_MARKERS[index % len(METHOD_MARKERS)]


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Apply the paper style inside a ``with`` block; the settings it changed are restored.

    Only the keys of :data:`STYLE` are saved and restored. ``matplotlib.rc_context`` would
    restore *every* setting, ``interactive`` included: IPython switches interactive mode on
    when the first figure of a session is made, so leaving an ``rc_context`` entered before
    that switched it off again, and no later figure reached the notebook.
    """
    saved = {key: mpl.rcParams[key] for key in STYLE}
    mpl.rcParams.update(STYLE)
    try:
        yield
    finally:
        mpl.rcParams.update(saved)


def new_figure(
    columns: int = 1, aspect: float = 0.68, nrows: int = 1, ncols: int = 1, **kwargs: Any
) -> tuple[Figure, Any]:
    """A figure one (``columns=1``) or two columns wide, in the paper style, and its axes.

    ``aspect`` is height / width of the whole figure.
    """
    if columns not in (1, 2):
        raise ValueError(f"columns must be 1 or 2, got {columns}.")
    width = COLUMN_WIDTH if columns == 1 else TEXT_WIDTH
    with paper_style():
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(width, width * aspect), layout="constrained", **kwargs
        )
    return fig, axes


def figure_for(ax: Axes | None, **kwargs: Any) -> tuple[Figure, Axes]:
    """``ax`` and its figure, or a new one-column figure (:func:`new_figure` with
    ``kwargs``) when ``ax`` is None: how every plotting function accepts an axes to draw on."""
    if ax is None:
        return new_figure(**kwargs)
    return ax.figure, ax


def shared_legend(fig: Figure, ax: Axes, ncols: int = 4) -> None:
    """One legend above all panels of ``fig``, with the entries of ``ax``."""
    with paper_style():
        fig.legend(*ax.get_legend_handles_labels(), loc="outside upper center", ncols=ncols)


def legend_above(ax: Axes, ncols: int = 2) -> None:
    """The legend of ``ax`` above its plotting area, where it can never hide a curve
    (``loc="best"`` still puts legends on data when the curves fill the axes). Its
    columns span the axes, or the whole figure where ``ax`` is its only panel: a
    one-column figure's axes leave too little width beside the tick labels for two
    columns of labels such as "ensemble (probabilities)", which then ran into each other."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    alone = len(ax.figure.axes) == 1
    span = blended_transform_factory(ax.figure.transFigure if alone else ax.transAxes, ax.transAxes)
    with paper_style():
        ax.legend(
            handles,
            labels,
            loc="lower left",
            bbox_to_anchor=(0.02, 1.02, 0.96, 0.1) if alone else (0.0, 1.02, 1.0, 0.1),
            bbox_transform=span,
            mode="expand",
            ncols=min(ncols, len(handles)),
            borderaxespad=0.0,
        )


def save(
    fig: Figure,
    stem: str | Path,
    formats: Sequence[str] = ("pdf", "png"),
    dpi: int = 300,
) -> list[Path]:
    """Write ``fig`` to ``stem.<format>`` for each format (``pdf``, ``svg``, ``png``, ...).

    Folders are created as needed, and checked writable before anything is drawn. Each file
    is written atomically (a crash never leaves half a figure; an existing file is replaced
    whole). PDFs embed their fonts as TrueType and carry no creation date, so re-running a
    notebook gives byte-identical files. Returns the written paths.
    """
    stem = Path(stem)
    supported = fig.canvas.get_supported_filetypes()
    unknown = [f for f in formats if f not in supported]
    if unknown:
        raise ValueError(f"Unsupported formats {unknown}; matplotlib writes {sorted(supported)}.")
    check_writable_dir(stem.parent, "figure folder", _FIX)
    metadata = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {"Software": None}}
    paths = []
    # A copy is saved where the figure can be copied: a tight-bbox save at another dpi leaves
    # constrained layout in a state where the next draw of the same figure (the notebook's
    # display after the export cell) collapses its axes.
    try:
        target = pickle.loads(pickle.dumps(fig))
    except (pickle.PicklingError, TypeError, AttributeError):
        target = fig
    try:
        with paper_style():
            for fmt in formats:
                path = stem.with_name(f"{stem.name}.{fmt}")
                atomic_write(
                    path,
                    lambda tmp, fmt=fmt: target.savefig(
                        tmp, format=fmt, dpi=dpi, metadata=metadata.get(fmt)
                    ),
                    overwrite=True,
                    what="figure folder",
                    fix=_FIX,
                )
                paths.append(path)
    finally:
        if target is not fig:
            plt.close(target)
    return paths


def save_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write ``table`` as CSV to ``path`` (folders created; written atomically, the folder
    proven writable before the table is formatted), numbers with 15 significant digits:
    ``0.3``, not ``0.30000000000000004``. Returns the path."""
    return atomic_write(
        path,
        lambda tmp: table.to_csv(tmp, index=False, float_format="%.15g"),
        overwrite=True,
        what="table folder",
        fix=_FIX,
    )
