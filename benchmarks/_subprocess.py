"""Measurements in a fresh subprocess each, shared by the scaling benchmarks: CPU time
(all threads; steadier than wall time on a shared machine) and peak memory as the
process's maximum resident set size (``resource.getrusage``: tracemalloc does not see
torch's allocations)."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch


def cpu_seconds() -> float:
    """CPU time of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_bytes() -> int:
    """The most memory this process has held (maximum resident set size)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def add_child_arguments(parser: argparse.ArgumentParser, *names: str) -> None:
    """``--child NAME...`` (run one measurement here), ``--spec`` and ``--threads``."""
    parser.add_argument("--child", nargs=len(names), metavar=names)
    parser.add_argument("--spec", type=Path, help="where the spec is saved and read")
    parser.add_argument("--threads", type=int, default=2)


def run_child(script: str, *arguments: str) -> dict:
    """Run ``script --child ...`` in a fresh process: its last line of output as JSON, or
    ``{"error": <its last line of errors>}``."""
    done = subprocess.run([sys.executable, script, *arguments], capture_output=True, text=True)
    if done.returncode:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_or_run_child(
    parser: argparse.ArgumentParser, child: Callable[[argparse.Namespace], dict]
) -> argparse.Namespace | None:
    """The parsed arguments, with torch's threads set; under ``--child``, the measurement
    ``child(args)`` runs here, is printed as JSON, and ``None`` is returned."""
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not args.child:
        return args
    print(json.dumps(child(args)))
    return None
