"""Every notebook runs top to bottom on the embedded data, as a new user would run it, and
shows what it promises: an image for every cell that builds a figure, no stderr output."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.notebook_checks import IN_BROWSER, NOTEBOOKS, builds_figure, check_quotes, quoted_numbers

ROOT = Path(__file__).resolve().parents[1]
RUN_TIMES = ROOT / "benchmarks" / "results" / "notebook_times.json"


@pytest.mark.slow
@pytest.mark.skipif(
    IN_BROWSER, reason="tests/test_browser.py runs every notebook in JupyterLab and checks the same"
)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_shows_its_figures(path: Path, tmp_path: Path) -> None:
    # a copy in a folder of its own: exports land in tmp_path/figures, not in the checkout
    shutil.copy(path, tmp_path / path.name)
    notebook = nbformat.read(tmp_path / path.name, as_version=4)
    # "python3" is the kernel of the interpreter running the tests (the project's .venv),
    # whether or not `make lab` registered the named kernel. A cell that raises fails here.
    client = NotebookClient(
        notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()
    code = [c for c in notebook.cells if c.cell_type == "code"]
    for number, cell in enumerate(code, start=1):
        outputs = cell.get("outputs", [])
        stderr = [o.text for o in outputs if o.output_type == "stream" and o.name == "stderr"]
        assert not stderr, f"code cell {number} writes to stderr: {stderr[0][:300]}"
        if builds_figure(cell.source):
            images = [o for o in outputs if "image/png" in o.get("data", {})]
            assert images, f"code cell {number} builds a figure but shows no image"
    check_quotes([(c.cell_type, _shown_text(c)) for c in notebook.cells])


def _shown_text(cell) -> str:
    """A markdown cell's source, or the text a code cell's outputs show."""
    if cell.cell_type != "code":
        return cell.source
    texts = [o.get("text", "") for o in cell.get("outputs", []) if o.output_type == "stream"]
    texts += [o.get("data", {}).get("text/plain", "") for o in cell.get("outputs", [])]
    return "\n".join(texts)


def test_every_notebook_states_its_measured_run_time_and_uses_the_project_kernel() -> None:
    """The first cell says how long a first run takes: the number measured by
    benchmarks/notebook_times.py (to the nearest 5 s), which must be under 2 minutes."""
    measured = json.loads(RUN_TIMES.read_text())["notebooks"]
    assert sorted(measured) == [p.stem for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        assert notebook.metadata["kernelspec"]["name"] == "merge-workbench", path.name
        stated = re.search(r"Runs in about (\d+) s\b", notebook.cells[0].source)
        assert stated, f"{path.name}: the first cell must say 'Runs in about N s'"
        seconds = measured[path.stem]["seconds"]
        assert int(stated.group(1)) == 5 * round(seconds / 5), (path.name, seconds)
        assert seconds < 120, f"{path.name} takes {seconds:.0f} s with FULL = False"


def test_quoted_numbers_are_checked_against_the_outputs_above() -> None:
    assert quoted_numbers("falls to **0.31** (from **0.87**), **96.5%** of it; **not** one") == [
        "0.31", "0.87", "96.5"
    ]  # fmt: skip
    check_quotes([("code", "corr 0.87\nacc 96.5"), ("markdown", "**0.87** and **96.5%**")])
    with pytest.raises(AssertionError, match=r"cell 2 quotes 0\.8,"):
        check_quotes([("code", "corr 0.87"), ("markdown", "**0.8**")])
    with pytest.raises(AssertionError, match=r"cell 1 quotes 0\.87"):  # below is too late
        check_quotes([("markdown", "**0.87**"), ("code", "corr 0.87")])


def test_figure_cells_are_recognized() -> None:
    assert builds_figure("fig = wb.plot_curves(curves)")
    assert builds_figure("fig, ax = wb.figures.new_figure()")
    assert builds_figure("fig = result.plot('barrier')")
    assert not builds_figure("table = wb.barrier_table(curves)")
    assert not builds_figure("wb.figures.save(fig, 'figures/x')")


def test_notebooks_are_the_numbered_ones_the_readme_lists() -> None:
    """notebooks/ holds exactly the notebooks of the README's table (the question each
    answers), in its order, numbered 01, 02, ... without a gap, the quickstart first."""
    names = [p.stem for p in NOTEBOOKS]
    readme = (ROOT / "README.md").read_text()
    table = readme.split("| notebook | the question it answers | run time |\n", 1)[1]
    rows = table.split("\n\n", 1)[0].splitlines()[1:]  # after the | --- | row
    listed = [re.fullmatch(r"\| `(\w+)` \| .+ \| \d+ s \|", row)[1] for row in rows]
    assert names and names == listed
    assert [name[:3] for name in names] == [f"{i:02d}_" for i in range(1, len(names) + 1)]
    assert names[0] == "01_quickstart"


def test_notebooks_are_stored_without_outputs() -> None:
    """Outputs are produced by running, not committed (clean diffs, no stale numbers)."""
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code"), path
