"""How fast the four dashboards answer in a real browser, against the direct computation.

Starts a private JupyterLab (tests/jupyter_lab.py, as tests/test_browser.py does) with one
notebook that makes the four dashboards on the shipped models (500 training and 500 test
images of mnist-5k, the browser test's subsets; an empty result cache), opens it in
headless Chromium and uses every control as a user would. Latency is measured in the
page: from the event (a key on a slider handle, a changed dropdown, a click) to the update
painted (the text the control changes shown without a busy sign, its image loaded, two
animation frames later). Each is set beside the **direct computation** of what the control
shows, timed in the same kernel (a second client on it) in the same cache state:

* a button press on a selection never computed (cold): the library calls the dashboard
  makes, with the result cache off, and its figure drawn to a PNG;
* a button press whose results are on disk (warm): the same calls reading the cache, and
  the figure drawn;
* a slider or dropdown step over computed results: what showing that answer costs without
  the dashboard (the interpolation slider: computing the point, RESET included, as it did
  before; a figure with its marker or unit: drawing it to a PNG; a dropdown back to a
  computed selection: reading it from the cache and drawing it).

Prints one JSON document (medians in ms, every sample, ratio = latency / direct) and writes
it to benchmarks/results/dashboard_latency.json; targets: steps under 150 ms, warm presses
under 300 ms, cold presses within 1.2x of the direct computation.

    python benchmarks/dashboard_latency.py [--repeats 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

import nbformat
import torch
from jupyter_client import BlockingKernelClient
from playwright.sync_api import TimeoutError as WaitError
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.jupyter_lab import TOKEN, chromium_page, jupyter_lab, open_and_run  # noqa: E402
from tests.notebook_checks import CHROMIUM  # noqa: E402

SETUP = """\
import contextlib, io, json, os, time
import matplotlib.pyplot as plt
import torch
import workbench as wb
from workbench.featviz import compare_layer, layer_exemplars, plot_unit_comparison, unit_study

train = wb.load_dataset("mnist-5k", "train").subset(torch.arange(0, 4000, 8), "train")
test = wb.load_dataset("mnist-5k", "test").subset(torch.arange(0, 1000, 2), "test")
models = wb.load_quickstart_models(seeds=(0, 1, 2))
splits = {"train": train, "test": test}


def png(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)


def timed(fn, n=1, uncached=False):
    seconds = []
    for _ in range(n):
        if uncached:
            os.environ["WORKBENCH_CACHE"] = "off"
        start = time.perf_counter()
        try:
            fn()
        finally:
            os.environ.pop("WORKBENCH_CACHE", None)
        seconds.append(time.perf_counter() - start)
    print(json.dumps(seconds))


def lmc_direct(pair, method, bn):
    (curve,) = wb.pairwise_curves([models[i] for i in pair], eval_data={"test": test}, data=train,
                                  alphas=11, bn=bn, method=method, progress=False)
    fig, ax = wb.figures.new_figure()
    png(wb.plot_curves([curve], ax=ax))


def neurons_direct(layer, method, unit=None):
    # what NeuronExplorer's Render computes: the comparison, the unit study, the exemplars
    c = compare_layer(models[0], models[1], layer=layer, data=train, method=method)
    study = unit_study(models[0], models[1], layer=layer, data=train, method=method,
                       bn="reset", point="relu", steps=16, k=6)
    names = dict(zip(c.models, (*study.parents, *study.variants)))
    images = {shown: study.images[name] for shown, name in names.items()}
    units = list(range(len(c.match.matched)))
    ex = layer_exemplars(c, train, units, 6, point="relu")
    png(plot_unit_comparison(c, c.match.order()[unit or 0], images, ex, units))


def compare_direct(methods, bn):
    table = wb.compare_methods(models, data=train, eval_data=test, methods=methods, sizes=(2, 3),
                               bn=bn, progress=False)
    png(wb.plot_comparison(table))
"""
CELLS = [
    SETUP,
    'slider = wb.widgets.InterpolationSlider(models[0], models[1], eval_data=splits, bn="reset")'
    "\nslider",
    "lmc = wb.widgets.LMCExplorer(models, eval_data=test, data=train)\nlmc",
    "neurons = wb.widgets.NeuronExplorer(models[0], models[1], data=train, steps=16, "
    'layer="features.conv1")\nneurons',
    "comparison = wb.widgets.MethodComparison(models, eval_data=test, data=train, sizes=(2, 3))"
    "\ncomparison",
]

# In the page: trigger a control of output ``root`` and resolve with the ms from the event
# to the painted answer (``done`` true, the shown figure loaded, two frames later).
MEASURE = """async ({root, trigger, done}) => {
  const el = document.querySelectorAll('.jp-CodeCell .jp-Cell-outputWrapper')[root];
  const figure = () => { const i = el.querySelector('img.widget-image');
                         return i && i.offsetParent !== null ? i : null; };
  const state = () => ({text: el.innerText, src: figure() ? figure().src : null,
                        busy: el.querySelector('.wb-busy') !== null});
  const before = state();
  const isDone = new Function('now', 'before', done);
  const loaded = () => { const i = figure(); return !i || (i.complete && i.naturalWidth > 0); };
  return await new Promise((resolve, reject) => {
    let start = 0, answered = false;
    const check = () => {  // on every change of the page and every 5 ms, whichever first
      const now = state();
      if (!answered && !now.busy && isDone(now, before)) { answered = true; }
      if (answered && loaded()) {
        clearInterval(poll); observer.disconnect();
        requestAnimationFrame(() => requestAnimationFrame(() => resolve(performance.now() - start)));
      }
    };
    const observer = new MutationObserver(check);
    observer.observe(el, {subtree: true, childList: true, attributes: true, characterData: true});
    const poll = setInterval(check, 5);
    setTimeout(() => { clearInterval(poll); observer.disconnect(); reject(new Error(
      'no answer: ' + JSON.stringify(state()).slice(0, 400))); }, 600000);
    start = performance.now();
    (new Function('el', trigger))(el);
  });
}"""


def key(index: int, name: str) -> str:
    """JS: press ``name`` on the ``index``-th slider handle of the output."""
    return (
        f"el.querySelectorAll('.noUi-handle')[{index}].dispatchEvent("
        f"new KeyboardEvent('keydown', {{key: '{name}', bubbles: true}}));"
    )


def click(label: str) -> str:
    """JS: click the output's button labelled ``label``."""
    return (
        f"[...el.querySelectorAll('button')].find(b => b.textContent.trim() === '{label}').click();"
    )


def choose(index: int, label: str) -> str:
    """JS: choose ``label`` in the output's ``index``-th dropdown."""
    return (
        f"const s = el.querySelectorAll('.widget-dropdown select')[{index}];"
        f"s.value = [...s.options].find(o => o.textContent === '{label}').value;"
        "s.dispatchEvent(new Event('change', {bubbles: true}));"
    )


def shows(*texts: str, new_figure: bool = True) -> str:
    """JS ``done``: every text is on screen and (``new_figure``) another figure is shown."""
    found = " && ".join(f"now.text.includes({json.dumps(t)})" for t in texts) or "true"
    figure = " && now.src !== null && now.src !== before.src" if new_figure else ""
    return f"return {found}{figure};"


class Kernel:
    """A second client on the notebook's kernel: runs code there and reads what it prints."""

    def __init__(self, url: str, runtime: Path) -> None:
        with urllib.request.urlopen(f"{url}/api/sessions?token={TOKEN}") as answer:
            (session,) = json.loads(answer.read())
        self.client = BlockingKernelClient()
        self.client.load_connection_file(runtime / f"kernel-{session['kernel']['id']}.json")
        self.client.start_channels()

    def run(self, code: str) -> str:
        out: list[str] = []

        def hook(message: dict) -> None:
            content = message["content"]
            if message["header"]["msg_type"] == "stream" and content["name"] == "stdout":
                out.append(content["text"])  # not stderr: progress bars
            if message["header"]["msg_type"] == "error":
                raise RuntimeError("\n".join(message["content"]["traceback"]))

        self.client.execute_interactive(code, store_history=False, output_hook=hook, timeout=900)
        return "".join(out)

    def timed(self, call: str, n: int = 1, uncached: bool = False) -> list[float]:
        """Seconds of ``call`` (an expression), ``n`` times, in the kernel."""
        return json.loads(self.run(f"timed(lambda: {call}, {n}, {uncached})"))


class Bench:
    """Measures controls in the page and collects latency and direct seconds per row."""

    def __init__(self, page, kernel: Kernel) -> None:
        self.page, self.kernel, self.rows = page, kernel, []
        self.outputs = page.locator(".jp-CodeCell .jp-Cell-outputWrapper")

    def latency(self, root: int, trigger: str, done: str) -> float:
        self.outputs.nth(root).scroll_into_view_if_needed()  # what the user looks at
        ms = self.page.evaluate(MEASURE, {"root": root, "trigger": trigger, "done": done})
        self.page.wait_for_timeout(300)  # the kernel idle again before the next event
        return ms / 1000

    def add(self, dashboard: str, control: str, latency: list[float], direct: list[float]):
        row = {
            "dashboard": dashboard,
            "control": control,
            "latency_ms": 1000 * statistics.median(latency),
            "direct_ms": 1000 * statistics.median(direct) if direct else None,
            "latency_samples_ms": [round(1000 * s, 1) for s in latency],
            "direct_samples_ms": [round(1000 * s, 1) for s in direct],
        }
        row["ratio"] = row["latency_ms"] / row["direct_ms"] if direct else None
        self.rows.append(row)
        print(json.dumps(row), file=sys.stderr)


def interpolation_slider(bench: Bench, repeats: int) -> None:
    latency = []
    for _ in range(repeats):
        latency.append(
            bench.latency(1, key(0, "ArrowRight"), shows("alpha = 0.60", new_figure=False))
        )
        latency.append(
            bench.latency(1, key(0, "ArrowLeft"), shows("alpha = 0.50", new_figure=False))
        )
    direct = bench.kernel.timed(
        'wb.lmc_curves(models[0], models[1], eval_data=splits, alphas=[0.6], bn="reset", '
        "progress=False)",
        repeats,
        uncached=True,
    )
    bench.add("InterpolationSlider", "alpha step (arrow key)", latency, direct)
    cold = [bench.latency(1, click("Finer grid"), shows("21 points computed", new_figure=False))]
    middles = "[round(0.05 + 0.1 * i, 12) for i in range(10)]"
    direct = bench.kernel.timed(
        f'wb.lmc_curves(models[0], models[1], eval_data=splits, alphas={middles}, bn="reset", '
        "progress=False)",
        uncached=True,
    )
    bench.add("InterpolationSlider", "Finer grid (cold, 10 new points)", cold, direct)


def lmc_explorer(bench: Bench, repeats: int) -> None:
    lmc, pairs = bench.outputs.nth(2), ["model 0 | model 1", "model 0 | model 2"]
    cold, direct = [], []
    for index, pair in enumerate(pairs):
        lmc.locator(".widget-dropdown select").first.select_option(label=pair)
        cold.append(bench.latency(2, click("Compute"), shows("loss barrier")))
        direct += bench.kernel.timed(f'lmc_direct((0, {index + 1}), "weight", "none")', 1, True)
    bench.add("LMCExplorer", "Compute (cold: align, 11 points)", cold, direct)
    # on disk (computed here by the kernel), not yet in the dashboard: a warm press
    warm_selections = [(i, bn) for i in range(len(pairs)) for bn in ("none", "RESET", "REPAIR")]
    for i, bn in warm_selections:
        bench.kernel.run(f'lmc_direct((0, {i + 1}), "activation", "{bn.lower()}")')
    lmc.locator(".widget-dropdown select").nth(1).select_option(label="activation")
    warm, direct = [], []
    for i, bn in warm_selections[:repeats]:
        lmc.locator(".widget-dropdown select").first.select_option(label=pairs[i])
        lmc.locator(".widget-toggle-button", has_text=bn).click()
        bench.page.wait_for_timeout(300)
        warm.append(bench.latency(2, click("Compute"), shows("loss barrier")))
        direct += bench.kernel.timed(f'lmc_direct((0, {i + 1}), "activation", "{bn.lower()}")')
    bench.add("LMCExplorer", "Compute (warm: curve on disk)", warm, direct)
    steps = []
    for _ in range(repeats):
        steps.append(bench.latency(2, key(0, "ArrowRight"), shows("alpha = 0.60")))
        steps.append(bench.latency(2, key(0, "ArrowLeft"), shows("alpha = 0.50")))
    bench.add("LMCExplorer", "alpha step (arrow key)", steps, _redrawn_lmc_figure(bench, repeats))
    lmc.locator(".widget-toggle-button", has_text="none").click()  # (0 | 2, activation)
    bench.page.wait_for_timeout(300)
    back = []
    for _ in range(repeats):
        back.append(bench.latency(2, choose(1, "weight"), shows("weight: loss barrier")))
        back.append(bench.latency(2, choose(1, "activation"), shows("activation: loss barrier")))
    direct = bench.kernel.timed('lmc_direct((0, 2), "weight", "none")', repeats)
    bench.add("LMCExplorer", "method dropdown (computed curve)", back, direct)


def _redrawn_lmc_figure(bench: Bench, repeats: int) -> list[float]:
    """Seconds to draw a curve's figure with a marker and render it (a step before)."""
    bench.kernel.run(
        "def lmc_marker():\n"
        "    fig, ax = wb.figures.new_figure()\n"
        "    wb.plot_curves([lmc.curve], ax=ax)\n"
        "    ax.plot([0.6], [lmc.curve.loss[6]], 'o', color='black')\n"
        "    png(fig)\n"
    )
    return bench.kernel.timed("lmc_marker()", repeats)


def neuron_explorer(bench: Bench, repeats: int) -> None:
    neurons = bench.outputs.nth(3)
    cold = [bench.latency(3, click("Render layer"), shows("rank 1 of 32"))]
    direct = bench.kernel.timed('neurons_direct("features.conv1", "weight")', 1, True)
    bench.add("NeuronExplorer", "Render layer (cold: conv1, 16 steps)", cold, direct)
    steps = []
    for _ in range(repeats):
        steps.append(bench.latency(3, key(0, "ArrowRight"), shows("rank 2 of 32")))
        steps.append(bench.latency(3, key(0, "ArrowLeft"), shows("rank 1 of 32")))
    bench.kernel.run(
        "def unit_figure(rank):\n"
        "    comparison, images, exemplars, _ = neurons.runner.current\n"
        "    units = list(range(len(comparison.match.matched)))\n"
        "    unit = comparison.match.order()[rank]\n"
        "    png(plot_unit_comparison(comparison, unit, images, exemplars, units))\n"
    )
    direct = bench.kernel.timed("unit_figure(1)", repeats)
    bench.add("NeuronExplorer", "rank step (arrow key)", steps, direct)
    bench.kernel.run('neurons_direct("features.conv1", "activation")')  # on disk, not shown
    neurons.locator(".widget-dropdown select").nth(1).select_option(label="activation")
    bench.page.wait_for_timeout(300)
    warm = [bench.latency(3, click("Render layer"), shows("activation matching"))]
    for _ in range(repeats - 1):  # the same press, after the dashboard forgot it
        bench.kernel.run("neurons.runner.results.clear(); neurons.runner.refresh()")
        try:
            neurons.locator(".widget-html", has_text="press Render layer").wait_for(timeout=10_000)
        except WaitError:  # the page did not hear the other client: one sample only
            break
        warm.append(bench.latency(3, click("Render layer"), shows("activation matching")))
    direct = bench.kernel.timed('neurons_direct("features.conv1", "activation")', repeats)
    bench.add("NeuronExplorer", "Render layer (warm: on disk)", warm, direct)


def method_comparison(bench: Bench, repeats: int) -> None:
    comparison, methods = bench.outputs.nth(4), ["none", "weight", "activation"]
    cold = [bench.latency(4, click("Run"), shows("this run took"))]
    direct = bench.kernel.timed(f'compare_direct({methods}, "reset")', 1, True)
    bench.add("MethodComparison", "Run (cold: 3 methods, N = 2, 3)", cold, direct)
    labels = {"none": "naive", "weight": "weight", "activation": "activation"}

    def box(method: str):
        return comparison.locator(".widget-checkbox", has_text=labels[method]).locator("input")

    warm, direct = [], []
    for left_out in methods[: min(repeats, 3)]:  # each subset's merges are on disk
        box(left_out).uncheck()
        bench.page.wait_for_timeout(300)
        warm.append(bench.latency(4, click("Run"), shows("this run took")))
        chosen = [m for m in methods if m != left_out]
        direct += bench.kernel.timed(f'compare_direct({chosen}, "reset")')
        box(left_out).check()
        bench.page.wait_for_timeout(300)
    bench.add("MethodComparison", "Run (warm: merges on disk)", warm, direct)
    box("none").uncheck()  # back and forth between selections run before: shown at once
    bench.page.wait_for_timeout(300)
    toggle = (
        "[...el.querySelectorAll('.widget-checkbox')]"
        ".find(c => c.innerText.trim() === 'naive').querySelector('input').click();"
    )
    back = []
    for _ in range(repeats):
        back.append(bench.latency(4, toggle, shows("3 methods")))
        back.append(bench.latency(4, toggle, shows("2 methods")))
    direct = bench.kernel.timed(f'compare_direct({methods}, "reset")', repeats)
    bench.add("MethodComparison", "method checkbox (run before)", back, direct)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks/results/dashboard_latency.json"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        home, work = Path(folder) / "home", Path(folder) / "work"
        home.mkdir(), work.mkdir()
        os.environ["WORKBENCH_CACHE_DIR"] = str(Path(folder) / "cache")  # empty: cold
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in CELLS])
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3"}
        nbformat.write(notebook, work / "latency.ipynb")
        with (
            jupyter_lab(home, work) as url,
            sync_playwright() as driver,
            chromium_page(driver, CHROMIUM) as page,
        ):
            open_and_run(page, url, "latency.ipynb", len(CELLS), WaitError)
            bench = Bench(page, Kernel(url, home / "runtime"))
            for measure in (interpolation_slider, lmc_explorer, neuron_explorer, method_comparison):
                measure(bench, args.repeats)
            bench.kernel.client.stop_channels()
    result = {
        "benchmark": "dashboard_latency",
        "machine": platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "browser": "Debian chromium, headless, 1280 x 1100, JupyterLab",
        "data": "quickstart cnn seeds 0, 1, 2; mnist-5k, 500 train (every 8th), 500 test (every 2nd)",
        "latency": "from the event in the page to the answer painted (text without a busy sign, "
        "figure loaded, two animation frames)",
        "direct": "the same answer computed in the same kernel (see the script's docstring)",
        "repeats": args.repeats,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "targets_ms": {"steps": 150, "warm presses": 300, "cold presses": "ratio <= 1.2"},
        "rows": bench.rows,
    }
    text = json.dumps(result, indent=2)
    args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
