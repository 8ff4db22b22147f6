"""How long each notebook and ``workbench demo`` take, as a new user runs them.

Every notebook is executed top to bottom with ``FULL = False`` (as shipped) in a real
kernel (nbclient), from a temporary copy, with an empty result cache: the first run a user
sees, not a cached re-run. ``workbench demo`` runs as a subprocess the same way, then
once more from the cache. Prints one JSON document: seconds per notebook (and its slowest
cell), seconds of the demo's first and second runs. The
notebooks' first cells and the README quote these numbers (a test checks them).

    python benchmarks/notebook_times.py [--notebooks 01_quickstart ...] [--out FILE]
    python benchmarks/notebook_times.py --demo-only --out benchmarks/results/notebook_times.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import pandas as pd
import torch
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def time_notebook(path: Path, work: Path) -> dict:
    """Execute ``path`` cell by cell in a fresh kernel whose working folder is ``work``."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    )
    cells = {}
    started = time.perf_counter()
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            began = time.perf_counter()
            client.execute_cell(cell, index)
            cells[index] = time.perf_counter() - began
    slowest = max(cells, key=cells.get)
    return {
        "seconds": time.perf_counter() - started,
        "slowest_cell": slowest,
        "slowest_cell_seconds": cells[slowest],
        "cell_seconds": {str(i): round(s, 2) for i, s in cells.items()},
    }


def time_demo(work: Path) -> dict:
    """Wall-clock seconds of ``workbench demo`` (start-up included), run in ``work``: a
    first run on an empty cache, then the same command again (from the cache); the table
    it printed (from its CSV), and its figure copied to ``docs/figures/demo.png`` for the
    README."""
    seconds = []
    for overwrite in ([], ["--overwrite"]):
        command = [sys.executable, "-m", "workbench.cli", "demo", "--out", str(work / "figures")]
        started = time.perf_counter()
        subprocess.run([*command, *overwrite], cwd=work, check=True, capture_output=True)
        seconds.append(time.perf_counter() - started)
    shutil.copy(work / "figures" / "lmc_methods.png", ROOT / "docs" / "figures" / "demo.png")
    table = pd.read_csv(work / "figures" / "lmc_methods.csv")
    return {
        "demo_seconds": seconds[0],
        "demo_cached_seconds": seconds[1],
        "demo_table": table.to_dict(orient="records"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--notebooks", nargs="*", help="stems to run (default: all)")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument(
        "--demo-only",
        action="store_true",
        help="time only the demo, keeping the notebooks' times of the JSON at --out",
    )
    args = parser.parse_args()
    if args.demo_only:
        if not args.out or not Path(args.out).is_file():
            parser.error("--demo-only updates an existing result: pass --out <its JSON>")
        result = json.loads(Path(args.out).read_text())
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["WORKBENCH_CACHE_DIR"] = str(Path(tmp) / "cache")
            result.update(time_demo(Path(tmp)))
        text = json.dumps(result, indent=2)
        print(text)
        Path(args.out).write_text(text + "\n")
        return
    paths = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.notebooks:
        paths = [p for p in paths if p.stem in args.notebooks]
    results = {}
    demo = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in paths:
            work = Path(tmp) / path.stem
            work.mkdir()
            shutil.copy(path, work / path.name)
            os.environ["WORKBENCH_CACHE_DIR"] = str(work / "cache")  # cold: a first run
            print(f"running {path.name}", file=sys.stderr, flush=True)
            results[path.stem] = time_notebook(work / path.name, work)
            print(f"  {results[path.stem]['seconds']:.1f} s", file=sys.stderr, flush=True)
        if not args.notebooks:
            work = Path(tmp) / "demo"
            work.mkdir()
            os.environ["WORKBENCH_CACHE_DIR"] = str(work / "cache")
            demo = time_demo(work)
    result = {
        "benchmark": "notebook_times",
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cache": "empty at the start of each notebook (a first run)",
        "notebooks": results,
        **demo,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
