"""The notebooks and dashboards in a real JupyterLab, driven through headless Chromium.

Starts a JupyterLab server on localhost (private HOME, config and runtime folders, copies of
the notebooks) and opens each notebook in Debian's Chromium through Playwright, as a user
would: "Run All", then it checks what is on the page. Every cell that builds a figure shows
an image; no cell shows an error or a stderr box; every number the prose quotes (in bold)
is shown by an output above it. The dashboards are then used with the
mouse and keyboard: choosing a method, a BatchNorm treatment and a pair, pressing Compute,
Run and Render, moving sliders, and exporting. After each action the figure and the numbers
on the page must change, and exported files must exist. Screenshots go to the test's tmp
folder, or to ``docs/screenshots/`` with ``WORKBENCH_UPDATE_SCREENSHOTS=1``.

The result cache is the test session's (conftest), so notebooks run here cold. Where this
test runs, the nbclient run of the notebooks (tests/test_notebooks.py) is skipped: this
one checks the same on the page a user sees.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from tests.jupyter_lab import chromium_page, jupyter_lab, open_and_run
from tests.notebook_checks import CHROMIUM, NOTEBOOKS, builds_figure, check_quotes

ROOT = Path(__file__).resolve().parents[1]
STDERR = '[data-mime-type="application/vnd.jupyter.stderr"]'

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium (/usr/bin/chromium) is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow

# The three dashboards on small subsets, so that every button answers in seconds.
DASHBOARDS = [
    "import torch\nimport workbench as wb\n\n"
    "train = wb.load_dataset('mnist-5k', 'train').subset(torch.arange(0, 4000, 8), 'train')\n"
    "test = wb.load_dataset('mnist-5k', 'test').subset(torch.arange(0, 1000, 2), 'test')\n"
    "models = wb.load_quickstart_models(seeds=(0, 1, 2))",
    "wb.widgets.LMCExplorer(models, eval_data=test, data=train, alphas=5)",
    "wb.widgets.NeuronExplorer(models[0], models[1], data=train, steps=8, layer='features.conv1')",
    "wb.widgets.MethodComparison(models, eval_data=test, data=train, sizes=(2,))",
]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server serving a folder with copies of every notebook and a notebook
    of the three dashboards; yields its URL and the folder."""
    home = tmp_path_factory.mktemp("lab-home")
    work = tmp_path_factory.mktemp("lab-work") / "notebooks"
    work.mkdir()
    kernel = {"name": "python3", "display_name": "Python 3"}  # this interpreter
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        notebook.metadata["kernelspec"] = kernel
        nbformat.write(notebook, work / path.name)
    dashboards = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in DASHBOARDS])
    dashboards.metadata["kernelspec"] = kernel
    nbformat.write(dashboards, work / "dashboards.ipynb")
    with jupyter_lab(home, work) as url:
        yield url, work


@contextlib.contextmanager
def browser_page(tmp_path: Path) -> Iterator:
    """A Chromium page; on failure, a screenshot and the page's text go to ``tmp_path``."""
    with playwright.sync_playwright() as driver, chromium_page(driver, CHROMIUM) as page:
        try:
            yield page
        except Exception as error:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            (tmp_path / "page.txt").write_text(page.locator("body").inner_text())
            raise AssertionError(
                f"{error}\n(screenshot and page text of the failure in {tmp_path})"
            ) from error


def _shots(tmp_path: Path) -> Path:
    update = os.environ.get("WORKBENCH_UPDATE_SCREENSHOTS")
    shots = ROOT / "docs" / "screenshots" if update else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def _open_and_run(page, url: str, name: str, cells: int) -> None:
    open_and_run(page, url, name, cells, playwright.TimeoutError)


def _check_no_errors(page) -> None:
    text = page.locator(".jp-Notebook").inner_text()
    assert "Error displaying widget" not in text
    assert "Traceback" not in text, "a cell raised"
    assert page.get_by_text("Loading widget").count() == 0, "a widget is stuck loading"
    stderr = page.locator(f".jp-Notebook .jp-OutputArea-output{STDERR}")
    assert stderr.count() == 0, f"a cell shows a stderr box: {stderr.all_inner_texts()[:3]}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_shows_every_figure(lab, path, tmp_path):
    url, _ = lab
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    with browser_page(tmp_path) as page:
        _open_and_run(page, url, path.name, len(code))
        _check_no_errors(page)
        cells = page.locator(".jp-Notebook .jp-CodeCell")
        for index, cell in enumerate(code):
            if builds_figure(cell.source):
                shown = cells.nth(index).locator(".jp-OutputArea-output img")
                assert shown.count() >= 1, f"code cell {index + 1} builds a figure, shows none"
                box = shown.first.bounding_box()
                assert box and box["width"] > 100 and box["height"] > 50, f"cell {index + 1}"
        page.screenshot(path=str(tmp_path / f"{path.stem}.png"), full_page=True)
        shown = iter(
            cells.nth(i).locator(".jp-Cell-outputArea").inner_text() for i in range(len(code))
        )
        check_quotes(
            [
                (c.cell_type, next(shown) if c.cell_type == "code" else c.source)
                for c in notebook.cells
            ]
        )
        if path.stem == "01_quickstart":
            _move_the_quickstart_slider(page, _shots(tmp_path))


def _move_the_quickstart_slider(page, shots: Path) -> None:
    """The interpolation slider answers the keyboard; the README's screenshot."""
    slider = page.locator(".widget-slider").first
    readout = page.locator(".widget-html", has_text="alpha =").first
    before = readout.inner_text()
    slider.scroll_into_view_if_needed()
    handle = slider.locator(".noUi-handle").first
    handle.focus()
    handle.press("Home")  # alpha -> 0, model A itself
    after = _wait_changed(page, readout, before)
    assert "alpha = 0.00" in after
    assert float(re.search(r"accuracy (\d+\.\d)%", after).group(1)) > 95.0
    page.screenshot(path=str(shots / "quickstart.png"))


FIGURE = "img.widget-image"  # a dashboard's figure (common.FigureView)
PROMPT = "Not computed yet for this selection: press {}."  # common.ComputeOnButton


def _image(output) -> str:
    """The source of a dashboard's figure, once it is shown (a blob URL per image)."""
    image = output.locator(FIGURE).first
    image.wait_for(state="visible", timeout=120_000)
    return image.get_attribute("src")


def _figure_gone(output) -> None:
    """The dashboard's figure is off the screen (it no longer matched the controls)."""
    output.locator(FIGURE).first.wait_for(state="hidden", timeout=10_000)


def _wait_changed(page, locator, old: str, timeout: int = 180_000) -> str:
    """Wait until ``locator``'s inner text differs from ``old`` and shows no busy sign
    (the computation it announces has ended); return the new text."""
    page.wait_for_function(
        "([el, old]) => el.innerText !== old && el.querySelector('.wb-busy') === null",
        arg=[locator.element_handle(), old],
        timeout=timeout,
    )
    return locator.inner_text()


def _wait_image_changed(page, output, old: str) -> str:
    page.wait_for_function(
        "([el, old]) => { const i = el.querySelector('img.widget-image');"
        " return i !== null && i.getAttribute('src') !== old; }",
        arg=[output.element_handle(), old],
        timeout=180_000,
    )
    return _image(output)


def _export(page, output, work: Path, stem: str, suffixes: list[str]) -> None:
    """Type ``stem`` into the dashboard's "save as" box, press Export, check the files."""
    box = output.locator(".widget-text input").last
    box.fill(f"figures/{stem}")
    box.press("Enter")
    output.get_by_role("button", name="Export").click()
    status = output.locator(".widget-html", has_text="wrote")
    status.wait_for(timeout=60_000)
    for suffix in suffixes:
        path = work / "figures" / f"{stem}{suffix}"
        assert path.is_file() and path.stat().st_size > 0, path


def test_dashboards_answer_the_mouse_and_keyboard(lab, tmp_path):
    url, work = lab
    with browser_page(tmp_path) as page:
        _use_dashboards(page, url, work, _shots(tmp_path))


def _use_dashboards(page, url: str, work: Path, shots: Path) -> None:
    _open_and_run(page, url, "dashboards.ipynb", len(DASHBOARDS))
    _check_no_errors(page)
    outputs = page.locator(".jp-CodeCell .jp-Cell-outputWrapper")

    # LMCExplorer: compute, switch method and BN handling, move alpha, export
    lmc = outputs.nth(1)
    barrier = lmc.locator(".widget-html").first
    assert "press Compute" in barrier.inner_text()
    lmc.get_by_role("button", name="Compute").click()
    weight = _wait_changed(page, barrier, PROMPT.format("Compute"))
    # the default method's curve, as LMCExplorer._show words it: the method, then its barrier
    assert re.match(r"weight: loss barrier -?\d+\.\d{3}, accuracy barrier -?\d", weight), weight
    assert "A (alpha = 0) is model 0, B (alpha = 1) is model 1" in weight
    first = _image(lmc)
    lmc.locator(".widget-dropdown select").nth(1).select_option(label="naive")
    barrier.filter(has_text="press Compute").wait_for(timeout=30_000)
    _figure_gone(lmc)  # the weight curve no longer matches the controls
    assert lmc.locator(".widget-html", has_text=re.compile(r"^alpha =")).count() == 0
    lmc.get_by_role("button", name="Compute").click()
    naive = _wait_changed(page, barrier, PROMPT.format("Compute"))
    assert "naive" in naive and "Not computed" not in naive
    naive_image = _wait_image_changed(page, lmc, first)
    lmc.locator(".widget-toggle-button", has_text="RESET").click()
    barrier.filter(has_text="press Compute").wait_for(timeout=30_000)
    _figure_gone(lmc)
    lmc.get_by_role("button", name="Compute").click()
    reset = _wait_changed(page, barrier, PROMPT.format("Compute"))
    assert "RESET" in reset and reset != naive
    _wait_image_changed(page, lmc, naive_image)
    readout = lmc.locator(".widget-html", has_text=re.compile(r"^alpha ="))
    before = readout.inner_text()
    handle = lmc.locator(".widget-slider .noUi-handle").first
    handle.focus()
    handle.press("Home")
    after = _wait_changed(page, readout, before)
    assert "alpha = 0.00" in after
    accuracy = float(re.search(r"accuracy (\d+\.\d)%", after).group(1))
    assert accuracy > 95.0, "alpha = 0 is model 0 itself"
    lmc.locator(".widget-dropdown select").first.select_option(label="model 1 | model 2")
    barrier.filter(has_text="press Compute").wait_for(timeout=30_000)
    _figure_gone(lmc)
    lmc.locator(".widget-dropdown select").first.select_option(label="model 0 | model 1")
    _wait_changed(page, barrier, PROMPT.format("Compute"))
    _image(lmc)  # computed before: shown again at once
    _export(page, lmc, work, "browser_lmc", [".pdf", ".svg", ".png"])
    lmc.scroll_into_view_if_needed()
    lmc.screenshot(path=str(shots / "lmc_explorer.png"))

    # NeuronExplorer: render a layer, walk the ranks with the keyboard, export
    neurons = outputs.nth(2)
    info = neurons.locator(".widget-html").first
    neurons.get_by_role("button", name="Render layer").click()
    rank_1 = _wait_changed(page, info, info.inner_text(), timeout=300_000)
    assert "rank 1 of 32" in rank_1
    unit_image = _image(neurons)
    slider = neurons.locator(".widget-slider .noUi-handle").first
    slider.focus()
    slider.press("ArrowRight")
    second = _wait_changed(page, info, rank_1)
    assert "rank 2 of 32" in second
    _wait_image_changed(page, neurons, unit_image)
    neurons.locator(".widget-dropdown select").nth(1).select_option(label="activation")
    info.filter(has_text="press Render layer").wait_for(timeout=30_000)
    _figure_gone(neurons)
    neurons.locator(".widget-dropdown select").nth(1).select_option(label="weight")
    _image(neurons)  # rendered before: shown again at once
    _export(page, neurons, work, "browser_neurons", [".pdf", ".svg", ".png"])
    neurons.scroll_into_view_if_needed()
    neurons.screenshot(path=str(shots / "neuron_explorer.png"))

    # MethodComparison: tick a method, run, export figure and table
    comparison = outputs.nth(3)
    boxes = comparison.locator(".widget-checkbox")
    right = max(box.bounding_box()["x"] + box.bounding_box()["width"] for box in boxes.all())
    assert right <= 1280, "every method's checkbox is inside the window"
    comparison.locator(".widget-checkbox", has_text="activation").locator("input").uncheck()
    comparison.get_by_role("button", name="Run").click()
    comparison.locator(".wb-busy").wait_for(timeout=30_000)  # it says that it computes
    done = comparison.locator(".widget-html", has_text="this run took")
    done.wait_for(timeout=300_000)
    table = comparison.locator("table").inner_text()
    assert "naive" in table and "weight" in table and "endpoints" in table
    assert "activation" not in table and "accuracy (%)" in table
    _image(comparison)
    comparison.locator(".widget-dropdown select").first.select_option(label="REPAIR")
    comparison.locator(".widget-html", has_text="press Run").wait_for(timeout=30_000)
    _figure_gone(comparison)  # the RESET results no longer match the controls
    assert comparison.locator("table").count() == 0 and done.count() == 0
    comparison.locator(".widget-dropdown select").first.select_option(label="RESET")
    done.wait_for(timeout=30_000)  # run before: shown again at once
    _export(page, comparison, work, "browser_methods", [".pdf", ".svg", ".png", ".csv"])
    comparison.scroll_into_view_if_needed()
    comparison.screenshot(path=str(shots / "method_comparison.png"))
