"""Paper style and export: figures that go into a paper as they are.

The style uses a colorblind-safe palette (Okabe & Ito), a small serif-free font sized for
print, embedded TrueType fonts in PDF (``pdf.fonttype = 42``: editable text, accepted by
every publisher) and standard one- and two-column widths.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

__all__ = [
    "COLUMN_WIDTH",
    "PALETTE",
    "TEXT_WIDTH",
    "color_for",
    "new_figure",
    "paper_style",
    "save",
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

# One colour per method, the same in every figure of the workbench.
METHOD_COLORS = {
    "naive": PALETTE["vermillion"],
    "none": PALETTE["vermillion"],  # alignment method "none" is naive interpolation
    "weight": PALETTE["blue"],
    "activation": PALETTE["green"],
    "cca": PALETTE["purple"],
    "ensemble": PALETTE["black"],
}

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


def color_for(label: str, index: int = 0, light: bool = False) -> str:
    """The colour of a method (``"weight"``, ``"cca"``, ...), else the ``index``-th palette
    colour; ``light`` gives the same hue mixed with white, for a variant of the method
    (e.g. after BatchNorm reset)."""
    key = label.split()[0].lower() if label else ""
    color = METHOD_COLORS.get(key, _CYCLE[index % len(_CYCLE)])
    if not light:
        return color
    rgb = mpl.colors.to_rgb(color)
    return mpl.colors.to_hex([0.55 * c + 0.45 for c in rgb])


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Apply the paper style inside a ``with`` block (matplotlib's settings are restored)."""
    with mpl.rc_context(STYLE):
        yield


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


def shared_legend(fig: Figure, ax: Axes, ncols: int = 4) -> None:
    """One legend above all panels of ``fig``, with the entries of ``ax``."""
    with paper_style():
        fig.legend(*ax.get_legend_handles_labels(), loc="outside upper center", ncols=ncols)


def save(
    fig: Figure,
    stem: str | Path,
    formats: Sequence[str] = ("pdf", "png"),
    dpi: int = 300,
) -> list[Path]:
    """Write ``fig`` to ``stem.<format>`` for each format (``pdf``, ``svg``, ``png``, ...).

    Folders are created as needed. PDFs embed their fonts as TrueType and carry no creation
    date, so re-running a notebook gives byte-identical files. Returns the written paths.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    supported = fig.canvas.get_supported_filetypes()
    unknown = [f for f in formats if f not in supported]
    if unknown:
        raise ValueError(f"Unsupported formats {unknown}; matplotlib writes {sorted(supported)}.")
    metadata = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {"Software": None}}
    paths = []
    with paper_style():
        for fmt in formats:
            path = stem.with_name(f"{stem.name}.{fmt}")
            fig.savefig(path, format=fmt, dpi=dpi, metadata=metadata.get(fmt))
            paths.append(path)
    return paths
