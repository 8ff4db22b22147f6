"""What the ``workbench`` commands write, and the one overwrite policy: every file a
command would write is known before its work starts, and none is replaced without
``--overwrite``."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from workbench import figures

FORMATS = ("pdf", "svg", "png")  # every figure a command writes, in these formats


def outputs(stem: Path, tables: Sequence[str], formats: Sequence[str] = FORMATS) -> list[Path]:
    """The files of one result: ``<stem>.<format>`` for each figure format and
    ``<stem><suffix>.csv`` for each table."""
    figures_ = [stem.with_name(f"{stem.name}.{f}") for f in formats]
    return figures_ + [stem.with_name(f"{stem.name}{suffix}.csv") for suffix in tables]


def checkpoints(args: argparse.Namespace) -> list[Path]:
    """The checkpoint files ``workbench train`` writes."""
    parts = [f"_{args.split}-part{i}" if args.split else "" for i in range(len(args.seeds))]
    return [
        Path(args.out) / f"{args.arch}_{args.dataset}_seed{seed}{part}.safetensors"
        for seed, part in zip(args.seeds, parts, strict=True)
    ]


DEMO_FORMATS = ("pdf", "png")
# Where each command writes its figure and tables: <stem>.<format>, <stem><suffix>.csv.
STEMS = {
    "demo": lambda args: Path(args.out) / "lmc_methods",
    "lmc": lambda args: Path(args.out) / "lmc",
    "merge": lambda args: Path(args.out) / "merge",
    "plane": lambda args: Path(args.out) / f"plane_{args.method}",
    "sweep": lambda args: Path(args.out) / f"sweep_{args.parameter}",
}
# The files each command writes, checked before any work: none is replaced without
# --overwrite (one policy for every command that writes).
WRITES = {
    "train": checkpoints,
    "demo": lambda args: outputs(STEMS["demo"](args), ["", "_curves"], DEMO_FORMATS),
    "lmc": lambda args: outputs(STEMS["lmc"](args), ["", "_curves"]),
    "merge": lambda args: outputs(STEMS["merge"](args), [""]),
    "plane": lambda args: outputs(STEMS["plane"](args), [""]),
    "sweep": lambda args: outputs(STEMS["sweep"](args), ["", "_curves"]),
}


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, to replace files the command would write, unless
    ``--overwrite`` was given; the error names them."""
    existing = [str(p) for p in WRITES.get(args.command, lambda _: [])(args) if p.exists()]
    if existing and not args.overwrite:
        shown = ", ".join(existing[:4]) + (
            f" and {len(existing) - 4} more" if len(existing) > 4 else ""
        )
        raise FileExistsError(
            f"{shown} exist{'s' if len(existing) == 1 else ''} and would be replaced; pass "
            "--overwrite to replace them, or --out <another folder>."
        )


def write(fig: Figure, tables: dict[str, pd.DataFrame], stem: Path) -> list[Path]:
    """The figure as PDF, SVG and PNG, and each table as ``<stem><suffix>.csv``."""
    written = figures.save(fig, stem, formats=FORMATS)
    for suffix, table in tables.items():
        written.append(figures.save_table(table, stem.with_name(f"{stem.name}{suffix}.csv")))
    return written


def report(table: pd.DataFrame, written: list[Path], started: float) -> None:
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("Wrote " + ", ".join(map(str, written)))
    print(f"Done in {time.perf_counter() - started:.1f} s.")
