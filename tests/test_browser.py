"""The quickstart notebook in a real JupyterLab, driven through headless Chromium.

Starts a JupyterLab server on localhost (private HOME, config and runtime folders, a copy of
the notebook), opens the notebook in Debian's Chromium through Playwright, runs all cells,
checks that every widget rendered, moves the interpolation slider with the keyboard and
checks that the displayed accuracy changed, and saves a screenshot (into
``docs/screenshots/`` when ``WORKBENCH_UPDATE_SCREENSHOTS=1``, else into the test's tmp dir).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "workbench-browser-test"
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium (/usr/bin/chromium) is not installed", allow_module_level=True)

pytestmark = pytest.mark.slow

# The three dashboards, their slow steps triggered from Python (as a click would), on small
# subsets so that the page is ready in seconds.
DASHBOARDS = [
    "import torch\nimport workbench as wb\n\n"
    "train = wb.load_dataset('mnist-5k', 'train').subset(torch.arange(0, 4000, 4), 'train')\n"
    "test = wb.load_dataset('mnist-5k', 'test')\n"
    "models = wb.load_quickstart_models(seeds=(0, 1, 2))",
    "lmc = wb.widgets.LMCExplorer(models, test, train, alphas=11)\n"
    "lmc.bn.value = 'RESET'\nlmc.compute.click()\nlmc",
    "neurons = wb.widgets.NeuronExplorer(models[0], models[1], train, steps=64)\n"
    "neurons.method.value = 'activation'\nneurons.layer.value = 'features.conv2'\n"
    "neurons.render.click()\nneurons",
    "comparison = wb.widgets.MethodComparison(models, test, train)\n"
    "comparison.run.click()\ncomparison",
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server serving a folder with a copy of the quickstart notebook."""
    home = tmp_path_factory.mktemp("lab-home")
    work = tmp_path_factory.mktemp("lab-work") / "notebooks"
    work.mkdir()
    notebook = nbformat.read(ROOT / "notebooks" / "01_quickstart.ipynb", as_version=4)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
    nbformat.write(notebook, work / "01_quickstart.ipynb")
    dashboards = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in DASHBOARDS])
    dashboards.metadata["kernelspec"] = notebook.metadata["kernelspec"]
    nbformat.write(dashboards, work / "dashboards.ipynb")
    # every cell in the DOM (no virtual scrolling), so that the test sees all of them
    tracker = home / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    notifications = home / "settings" / "@jupyterlab" / "apputils-extension"
    notifications.mkdir(parents=True)
    (notifications / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    port = _free_port()
    env = {
        **os.environ,
        "HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
    }
    command = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={TOKEN}",
        f"--ServerApp.root_dir={work}",
        "--ServerApp.open_browser=False",
        "--allow-root",  # CI containers run as root
        "--LabApp.news_url=",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    log = (home / "server.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2)
            break
        except OSError:
            if server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited; log: {home / 'server.log'}") from None
            time.sleep(0.5)
    else:
        server.terminate()
        raise RuntimeError(f"JupyterLab did not start in 120 s; log: {home / 'server.log'}")
    yield url, work
    server.terminate()
    server.wait(timeout=30)
    log.close()


def notebook_cells() -> list:
    return nbformat.read(ROOT / "notebooks" / "01_quickstart.ipynb", as_version=4).cells


def _run_all(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def _prompts(page) -> list[str]:
    return page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()


def _open_and_run(page, url: str, name: str, cells: int) -> None:
    """Open notebook ``name``, run all its cells and wait until every one has run. "Run All"
    is repeated while nothing has started (a click before the kernel is connected is lost),
    and a kernel chooser, if JupyterLab shows one, is answered with its proposal."""
    # a workspace of its own (reset): only this notebook open, whatever ran before
    page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/{name}?token={TOKEN}&reset")
    page.locator(".jp-Notebook .jp-CodeCell").first.wait_for(timeout=120_000)
    page.wait_for_function(
        f"document.querySelectorAll('.jp-CodeCell').length === {cells}", timeout=60_000
    )
    deadline = time.time() + 420
    last_try = 0.0
    while time.time() < deadline:
        prompts = _prompts(page)
        if len(prompts) == cells and all(re.search(r"\[\d+\]", p) for p in prompts):
            return
        dialog = page.locator(".jp-Dialog")
        if dialog.count():
            dialog.locator(".jp-mod-accept").click()
            dialog.wait_for(state="detached", timeout=30_000)
            last_try = 0.0
        started = any(re.search(r"\[(\d+|\*)\]", p) for p in prompts)
        if not started and time.time() - last_try > 15:
            _run_all(page)
            last_try = time.time()
        page.wait_for_timeout(1000)
    raise AssertionError(f"cells did not all run in 420 s: {_prompts(page)}")


def _check_widgets(page) -> None:
    text = page.locator(".jp-Notebook").inner_text()
    assert "Error displaying widget" not in text
    assert "Traceback" not in text, "a cell raised"
    assert page.get_by_text("Loading widget").count() == 0, "a widget is stuck loading"


def test_dashboards_render(lab, tmp_path):
    url, _ = lab
    shots = _shots(tmp_path)
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1100})
        try:
            _open_and_run(page, url, "dashboards.ipynb", len(DASHBOARDS))
            _check_widgets(page)
            outputs = page.locator(".jp-CodeCell .jp-Cell-outputWrapper")
            for index, name in (
                (1, "lmc_explorer"),
                (2, "neuron_explorer"),
                (3, "method_comparison"),
            ):
                output = outputs.nth(index)
                output.locator("img").first.wait_for(timeout=60_000)  # its figure is shown
                assert output.locator(".widget-button").count() >= 1
                output.scroll_into_view_if_needed()
                output.screenshot(path=str(shots / f"{name}.png"))
            assert "loss barrier" in outputs.nth(1).inner_text()
            assert "correlation" in outputs.nth(2).inner_text()
            assert "endpoints" in outputs.nth(3).inner_text()
        except Exception as error:
            _fail(page, tmp_path, error)
        finally:
            browser.close()


def _shots(tmp_path: Path) -> Path:
    update = os.environ.get("WORKBENCH_UPDATE_SCREENSHOTS")
    shots = ROOT / "docs" / "screenshots" if update else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    return shots


def _fail(page, tmp_path: Path, error: Exception) -> None:
    page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
    (tmp_path / "page.txt").write_text(page.locator("body").inner_text())
    raise AssertionError(
        f"{error}\n(screenshot and page text of the failure in {tmp_path})"
    ) from error


def test_quickstart_runs_and_the_slider_moves(lab, tmp_path):
    url, _ = lab
    shots = _shots(tmp_path)
    cells = sum(c.cell_type == "code" for c in notebook_cells())
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        try:
            _open_and_run(page, url, "01_quickstart.ipynb", cells)
            _check_widgets(page)
            slider = page.locator(".widget-slider").first
            slider.wait_for(timeout=30_000)
            readout = page.locator(".widget-html", has_text="alpha =").first
            before = readout.inner_text()
            assert re.search(r"accuracy \d+\.\d%", before), before
            slider.scroll_into_view_if_needed()
            handle = slider.locator(".noUi-handle").first
            handle.focus()
            handle.press("Home")  # alpha -> 0, model A itself
            page.wait_for_function(
                "([el, old]) => el.innerText !== old && el.innerText.includes('alpha = 0.00')",
                arg=[readout.element_handle(), before],
                timeout=60_000,
            )
            after = readout.inner_text()
            accuracy = lambda s: float(re.search(r"accuracy (\d+\.\d)%", s).group(1))  # noqa: E731
            assert accuracy(after) != accuracy(before)
            assert accuracy(after) > 95.0, "alpha = 0 is model A (97.7% on the test set)"
            page.screenshot(path=str(shots / "quickstart.png"))
        except Exception as error:
            _fail(page, tmp_path, error)
        finally:
            browser.close()
