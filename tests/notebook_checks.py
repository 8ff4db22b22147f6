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
