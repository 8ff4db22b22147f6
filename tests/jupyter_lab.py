"""A private JupyterLab server and headless Chromium pages on it, driven as a user would:
shared by the real-browser test (tests/test_browser.py) and the dashboard latency benchmark
(benchmarks/dashboard_latency.py).

The server runs on localhost with its own HOME, config, runtime, settings and workspace
folders (nothing of the user's is read or written), every cell kept in the DOM (no virtual
scrolling) and no news or update checks; Chromium runs headless with background networking
off."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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
RUN_LIMIT = 420  # seconds for one notebook's Run All (each takes under 2 minutes here)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _settings(home: Path) -> None:
    """Every cell in the DOM (no virtual scrolling), so that a test sees all of them; no
    news fetched."""
    tracker = home / "settings" / "@jupyterlab" / "notebook-extension"
    tracker.mkdir(parents=True)
    (tracker / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    notifications = home / "settings" / "@jupyterlab" / "apputils-extension"
    notifications.mkdir(parents=True)
    (notifications / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')


@contextlib.contextmanager
def jupyter_lab(home: Path, work: Path) -> Iterator[str]:
    """A JupyterLab server serving ``work``, with ``home`` as its private home; yields its
    URL (the token is :data:`TOKEN`). Its kernels' connection files are in
    ``home / "runtime"``."""
    _settings(home)
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
    try:
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
            raise RuntimeError(f"JupyterLab did not start in 120 s; log: {home / 'server.log'}")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@contextlib.contextmanager
def chromium_page(driver, executable: Path, width: int = 1280, height: int = 1100) -> Iterator:
    """A page of a headless Chromium (``driver``: a started playwright) of the given size."""
    browser = driver.chromium.launch(executable_path=str(executable), args=BROWSER_ARGS)
    try:
        yield browser.new_page(viewport={"width": width, "height": height})
    finally:
        browser.close()


def _run_all(page) -> None:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def prompts(page) -> list[str]:
    """The input prompts of the open notebook's code cells (``[3]``, ``[*]``, ``[ ]``)."""
    return page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()


def open_and_run(page, url: str, name: str, cells: int, wait_error) -> None:
    """Open notebook ``name``, run all its cells and wait until every one has run. "Run All"
    is repeated while nothing has started (a click before the kernel is connected is lost),
    and a kernel chooser, if JupyterLab shows one, is answered with its proposal
    (``wait_error``: playwright's TimeoutError)."""
    # a workspace of its own (reset): only this notebook open, whatever ran before
    page.goto(f"{url}/lab/workspaces/{Path(name).stem}/tree/{name}?token={TOKEN}&reset")
    page.locator(".jp-Notebook .jp-CodeCell").first.wait_for(timeout=120_000)
    page.wait_for_function(
        f"document.querySelectorAll('.jp-CodeCell').length === {cells}", timeout=60_000
    )
    deadline = time.time() + RUN_LIMIT
    last_try = 0.0
    while time.time() < deadline:
        shown = prompts(page)
        if len(shown) == cells and all(re.search(r"\[\d+\]", p) for p in shown):
            return
        dialog = page.locator(".jp-Dialog")
        if dialog.count():
            dialog.locator(".jp-mod-accept").click()
            # on a loaded machine the kernel chooser can outlast 30 s after the click (seen
            # once, with a benchmark beside the suite): the next round answers it again
            with contextlib.suppress(wait_error):
                dialog.wait_for(state="detached", timeout=30_000)
            last_try = 0.0
        started = any(re.search(r"\[(\d+|\*)\]", p) for p in shown)
        if not started and time.time() - last_try > 15:
            # a kernel chooser that opens meanwhile blocks the menu: answered next round
            with contextlib.suppress(wait_error):
                _run_all(page)
            last_try = time.time()
        page.wait_for_timeout(1000)
    raise AssertionError(f"cells did not all run in {RUN_LIMIT} s: {prompts(page)}")
