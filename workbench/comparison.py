"""Comparing merging methods: accuracy of the merged model against the number of models.

One row per (method, N, BN handling): the merged model's accuracy and loss on the
evaluation data and the seconds the merge took; ``"endpoints"`` rows give the mean
accuracy of the N models themselves, the ceiling a merge is measured against.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from workbench.data import DataLike
from workbench.evaluation import evaluate
from workbench.figures import color_for, new_figure, paper_style
from workbench.merging import MERGE_METHODS, merge_many

__all__ = ["COLUMNS", "compare_methods", "plot_comparison"]

COLUMNS = ["method", "n_models", "bn", "accuracy", "loss", "seconds", "gamma", "reference"]


def compare_methods(
    models: Sequence[nn.Module],
    data: DataLike,
    eval_data: DataLike,
    methods: Sequence[str] = MERGE_METHODS,
    sizes: Sequence[int] | None = None,
    bn: str | None = "reset",
    *,
    csv: str | Path | None = None,
    progress: bool = True,
    **merge_options,
) -> pd.DataFrame:
    """Merge the first N of ``models`` for each N in ``sizes`` (default 2..len(models))
    with each method in ``methods``, on training ``data``; evaluate on ``eval_data``.

    Returns a tidy table with the columns in :data:`COLUMNS` (``bn`` as text, ``"none"``
    for no handling), written to ``csv`` too when given. ``merge_options`` go to
    :func:`workbench.merging` (e.g. ``gamma=``, ``reference=``).
    """
    models = list(models)
    sizes = list(sizes) if sizes is not None else list(range(2, len(models) + 1))
    unknown = [m for m in methods if m not in MERGE_METHODS]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from {MERGE_METHODS}.")
    bad = [n for n in sizes if not 2 <= n <= len(models)]
    if bad:
        raise ValueError(f"sizes must lie in 2..{len(models)} (the models given), got {bad}.")
    endpoint = [evaluate(m, eval_data) for m in models]
    rows = []
    jobs = [(n, method) for n in sizes for method in methods]
    for n, method in tqdm(jobs, desc="compare methods", disable=not progress):
        merged = merge_many(models[:n], data, method, bn=bn, progress=False, **merge_options)
        metrics = evaluate(merged, eval_data)
        report = merged.workbench_merge
        row = (method, n, str(bn).lower(), metrics.accuracy, metrics.loss, report.seconds)
        rows.append([*row, report.gamma, report.reference])
    for n in sizes:
        accuracy = float(np.mean([m.accuracy for m in endpoint[:n]]))
        loss = float(np.mean([m.loss for m in endpoint[:n]]))
        rows.append(["endpoints", n, "-", accuracy, loss, 0.0, None, None])
    table = pd.DataFrame(rows, columns=COLUMNS)
    if csv is not None:
        path = Path(csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path, index=False)
    return table


def plot_comparison(
    table: pd.DataFrame, metric: str = "accuracy", ax: Axes | None = None
) -> Figure:
    """Merged ``metric`` (``"accuracy"`` in %, or ``"loss"``) against the number of models,
    one line per method and BN handling, the endpoints' mean as a dashed grey line."""
    if metric not in ("accuracy", "loss"):
        raise ValueError(f"metric must be 'accuracy' or 'loss', got {metric!r}.")
    missing = [c for c in ("method", "n_models", "bn", metric) if c not in table]
    if missing:
        raise ValueError(f"The table lacks columns {missing}; pass compare_methods' result.")
    if ax is None:
        fig, ax = new_figure()
    else:
        fig = ax.figure
    scale = 100.0 if metric == "accuracy" else 1.0
    with paper_style():
        for index, ((method, bn), rows) in enumerate(table.groupby(["method", "bn"], sort=False)):
            rows = rows.sort_values("n_models")
            endpoints = method == "endpoints"
            ax.plot(
                rows["n_models"],
                scale * rows[metric],
                color="0.5" if endpoints else color_for(method, index),
                linestyle="--" if endpoints else "-",
                marker=None if endpoints else "o",
                label="endpoints (mean)" if endpoints else f"{method} ({bn})",
            )
        ax.set_xticks(sorted(table["n_models"].unique()))
        ax.set_xlabel("Number of merged models")
        ax.set_ylabel("Accuracy (%)" if metric == "accuracy" else "Cross-entropy loss")
        ax.legend(loc="best")
    return fig
