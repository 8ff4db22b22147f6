"""What the notebook tests (nbclient and the real browser) share: which notebooks there are
and which cells build a figure, so that both check that such a cell shows an image."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
CHROMIUM = Path("/usr/bin/chromium")
# Whether tests/test_browser.py runs every notebook in JupyterLab (Debian's Chromium and
# playwright present, as in CI): it checks what the nbclient run checks (every figure
# cell shows an image; no error, no stderr) on the page a user sees, so the nbclient run
# is needed only where there is no browser.
IN_BROWSER = CHROMIUM.exists() and importlib.util.find_spec("playwright") is not None

# A call that returns or draws a figure: wb.plot_*, featviz.plot_*, new_figure, .plot(...).
_FIGURE_CALL = re.compile(r"\b(plot_\w+|new_figure)\(|\.plot\(")


def builds_figure(source: str) -> bool:
    """Whether a code cell's ``source`` builds a figure (and must therefore show one)."""
    return bool(_FIGURE_CALL.search(source))


# A number the prose quotes from a measurement: written in bold, e.g. **0.87** or **96.5%**.
_QUOTED = re.compile(r"\*\*(-?\d+(?:\.\d+)?)%?\*\*")


def quoted_numbers(markdown: str) -> list[str]:
    """The numbers a markdown cell quotes (in bold), as written."""
    return _QUOTED.findall(markdown)


def check_quotes(cells: list[tuple[str, str]]) -> None:
    """Every number a markdown cell quotes appears in the printed output of a code cell
    above it. ``cells``: ``(cell_type, text)`` in notebook order, where a code cell's text
    is what its outputs show (as the page or the executed notebook has it)."""
    shown = ""
    for number, (kind, text) in enumerate(cells, start=1):
        if kind == "code":
            shown += "\n" + text
            continue
        for quoted in quoted_numbers(text):
            assert re.search(rf"(?<![\d.]){re.escape(quoted)}(?![\d])", shown), (
                f"cell {number} quotes {quoted}, which no output above it shows: the prose "
                "must quote the computed numbers (rerun the notebook and update the text)"
            )
