"""How the barrier moves with width and with training time.

For each value of the swept setting, models that differ only by seed are trained with the
training helper (:func:`workbench.train_models`), every pair is aligned by each method
and its interpolation curve measured (:func:`workbench.pairwise_curves`). The result keeps
every curve (with the trained models' fingerprints), a table with one row per (value,
method, split, pair) and a figure of the barrier against the setting.

An epoch sweep trains a fresh pair for each number of epochs (the one-cycle learning-rate
schedule depends on the total, so a checkpoint after k of n epochs is not a k-epoch model).
Each value is cached on disk, keyed by the training recipe and the data's content:
training is seeded and deterministic, so the same recipe gives the same models.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from workbench.alignment import get_method
from workbench.analysis.lmc import (
    LMCCurve,
    barrier_table,
    cached_curves,
    curves_frame,
    pairwise_curves,
)
from workbench.analysis.lmc.compute import _complete_curves, curves_entry, entry_curves
from workbench.cache import ResultCache, resolve_cache
from workbench.data import DataLike
from workbench.figures import (
    bn_label,
    color_for,
    figure_for,
    marker_for,
    paper_style,
    series_label,
)
from workbench.fingerprints import fingerprint
from workbench.jobs import Entry, Job, check_executor, run_jobs
from workbench.merging import check_bn, get_bn
from workbench.results import Result
from workbench.training import train_models
from workbench.training_health import collected, report
from workbench.vocabulary import keyword_only
from workbench.zoo import create_model

__all__ = ["Sweep", "plot_sweep", "sweep"]

PARAMETERS = {"width": "Width multiplier", "epochs": "Training epochs"}
LABELS = {**PARAMETERS, "spawn_step": "Spawn step k (trunk steps before the fork)"}
_METRICS = {
    "barrier": ("Loss barrier", 1.0),
    "rebasin_barrier": ("Loss barrier (Git Re-Basin)", 1.0),
    "accuracy_barrier": ("Accuracy barrier (points)", 100.0),
    "midpoint_accuracy": ("Midpoint accuracy (%)", 100.0),
    "endpoint_accuracy": ("Endpoint accuracy (%)", 100.0),
}


@dataclass(frozen=True)
class Sweep(Result):
    """The curves of a sweep over ``parameter`` (``"width"`` or ``"epochs"``).

    Each curve's settings hold the swept value (under the parameter's name), its pair of
    seeds' indices and the models' fingerprints; ``settings`` holds the recipe.
    """

    parameter: str
    curves: list[LMCCurve]
    settings: dict = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        """One row per (value, method, split, pair): both barriers, the accuracies of the
        endpoints, their mean (``endpoint_accuracy``) and the midpoint accuracy."""
        table = barrier_table(self.curves, settings=(self.parameter, "pair"))
        table = table.rename(columns={"label": "method"})
        table["endpoint_accuracy"] = (table["accuracy_a"] + table["accuracy_b"]) / 2
        return table

    def to_frame(self) -> pd.DataFrame:
        """The table (see :attr:`table`)."""
        return self.table

    def curves_frame(self) -> pd.DataFrame:
        """Every curve point as a tidy table, with the swept value and the pair."""
        return curves_frame(self.curves, settings=(self.parameter, "pair"))

    def plot(self, metric: str = "barrier", ax: Axes | None = None) -> Figure:
        """``metric`` against the swept setting; see :func:`plot_sweep`."""
        return plot_sweep(self, metric, ax=ax)


def plot_sweep(
    result: Sweep, metric: str = "barrier", ax: Axes | None = None, title: str | None = None
) -> Figure:
    """``metric`` (a column of the table: ``"barrier"``, ``"accuracy_barrier"``,
    ``"midpoint_accuracy"``, ...) against the swept setting: one line per method (and
    split, dashed for test), the mean over pairs with a min-max band when there are
    several pairs. Widths are spaced on a log2 axis."""
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {list(_METRICS)}, got {metric!r}.")
    label, scale = _METRICS[metric]
    table = result.table
    splits = list(dict.fromkeys(table["split"]))
    fig, ax = figure_for(ax)
    with paper_style():
        groups = table.groupby(["method", "split"], sort=False)
        for index, ((method, split), rows) in enumerate(groups):
            stats = rows.groupby(result.parameter)[metric].agg(["mean", "min", "max"]) * scale
            name = series_label(method, None, split if len(splits) > 1 else None)
            color = color_for(method, index)
            hollow = len(splits) > 1 and split == "train"
            ax.plot(
                stats.index,
                stats["mean"],
                marker=marker_for(method, index),
                markerfacecolor="white" if hollow else color,
                color=color,
                label=name,
            )
            if (rows.groupby(result.parameter).size() > 1).any():
                ax.fill_between(stats.index, stats["min"], stats["max"], color=color, alpha=0.2)
        if result.parameter == "width":
            ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(table[result.parameter].unique()))
        ax.get_xaxis().set_major_formatter("{x:g}")
        ax.set_xlabel(LABELS.get(result.parameter, result.parameter))
        handling = bn_label(result.settings.get("bn"))
        ax.set_ylabel(f"{label} ({handling})" if handling else label)
        if title:
            ax.set_title(title)
        ax.legend(loc="best")
    return fig


def _json_or_none(value: Any) -> Any:
    """``value`` if it is plain JSON (a cache key part), else ``None`` (do not cache)."""
    try:
        json.dumps(value)
    except TypeError:
        return None
    return value


def _model_kwargs(train: DataLike, model_kwargs: Mapping | None) -> dict:
    """Classes and input channels from the dataset's info when it has one."""
    info = getattr(train, "info", None)
    kwargs = {"in_channels": info.in_channels, "num_classes": info.num_classes} if info else {}
    return {**kwargs, **(model_kwargs or {})}


def _check_values(parameter: str, values: Sequence[float]) -> list[float]:
    if parameter not in PARAMETERS:
        raise ValueError(f"parameter must be 'width' or 'epochs', got {parameter!r}.")
    values = list(values)
    if not values:
        raise ValueError(f"Give at least one {parameter} value to sweep.")
    for value in values:
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"Every {parameter} must be a positive number, got {value!r}.")
        if parameter == "epochs" and value != int(value):
            raise ValueError(f"Epochs must be whole numbers, got {value!r}.")
    return [int(v) if parameter == "epochs" else float(v) for v in values]


@keyword_only(("data", "eval_data"), renamed={"train": "data", "test": "eval_data"})
def sweep(
    parameter: str,
    values: Sequence[float],
    *,
    data: DataLike,
    eval_data: DataLike,
    epochs: int = 4,
    architecture: str = "cnn",
    model_kwargs: Mapping | None = None,
    seeds: Sequence[int] = (0, 1),
    methods: Sequence[str] = ("none", "weight"),
    bn: str | None = "reset",
    alphas: int | Sequence[float] = 5,
    splits: Sequence[str] = ("test",),
    batch_size: int | None = None,
    progress: bool = True,
    cache: ResultCache | bool = True,
    executor: Executor | None = None,
    **train_kwargs: Any,
) -> Sweep:
    """Barrier against ``parameter``: ``"width"`` (the width multiplier; every model
    trained for ``epochs``) or ``"epochs"`` (training time; width from ``model_kwargs``,
    default 1).

    For each value, one model per seed in ``seeds`` is trained on ``data`` (models that
    differ only by seed), every pair is aligned by each of ``methods`` (on ``data``) and
    its curve measured on ``splits`` (``"train"``: ``data``, and/or ``"test"``:
    ``eval_data``) with ``bn`` handling on ``data``. ``model_kwargs`` go to :func:`workbench.create_model` (classes and input
    channels default to the dataset's), ``train_kwargs`` to :func:`workbench.train_model`.
    Each value is cached (``cache=False`` bypasses; custom augmentations are never cached).
    ``executor``: any ``concurrent.futures.Executor`` (a process pool, a submitit
    executor) trains and measures one value per job there (:mod:`workbench.jobs`); a
    rerun of a sweep that stopped half-way computes only the values not cached yet.
    A value whose models did not learn (:class:`~workbench.DidNotLearnWarning`) warns,
    also when it ran in a job or comes from the cache; its curves' settings list the
    messages (``"did_not_learn"``).
    """
    check_executor(executor)
    values = _check_values(parameter, values)
    if "progress" in train_kwargs:
        raise TypeError("Pass progress= to sweep itself, not as a training argument.")
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be at least 2 different seeds, got {list(seeds)}.")
    unknown = [s for s in splits if s not in ("train", "test")]
    if unknown or not splits:
        raise ValueError(f"splits must be 'train' and/or 'test', got {list(splits)}.")
    if not methods:
        raise ValueError("Give at least one method, e.g. methods=('none', 'weight').")
    splits_data = {split: {"train": data, "test": eval_data}[split] for split in splits}
    kwargs = _model_kwargs(data, model_kwargs)
    bn = check_bn(bn, create_model(architecture, **kwargs))  # before any training
    store = resolve_cache(cache)
    recipe = {
        "architecture": architecture,
        "model_kwargs": kwargs,
        "seeds": list(seeds),
        "epochs": epochs,
        "train_kwargs": _json_or_none(train_kwargs),
    }
    settings = {**recipe, "methods": list(methods), "bn": bn, "alphas": alphas}
    found = []
    jobs = []
    for value in tqdm(values, desc=f"{parameter} sweep", disable=not progress or bool(executor)):
        point_kwargs = {**kwargs, "width": value} if parameter == "width" else kwargs
        point_epochs = value if parameter == "epochs" else epochs
        key = store.key(
            **{**recipe, "train_kwargs": train_kwargs},
            parameter=parameter,
            value=value,
            data=data,
            eval_data=splits_data,
            methods=[get_method(m) for m in methods],
            bn=get_bn(bn),
            alphas=alphas,
            batch_size=batch_size,
        )
        arguments = {"architecture": architecture, "seeds": list(seeds), "data": data}
        arguments.update(epochs=int(point_epochs), model_kwargs=point_kwargs)
        arguments.update(eval_data=splits_data)
        arguments.update(methods=list(methods), alphas=alphas, bn=bn, batch_size=batch_size)
        arguments.update(train_kwargs=train_kwargs)
        if executor is not None:
            jobs.append(Job("sweep", key, _point_job, arguments, valid=_complete_curves))
            found.append((value, None))
            continue

        def compute(arguments: dict = arguments) -> list[LMCCurve]:
            return _point_curves(**arguments, progress=progress)

        found.append((value, cached_curves(store, "sweep", key, compute)))
    entries = iter(run_jobs(jobs, executor=executor, cache=store, progress=progress, desc="sweep"))
    curves = []
    for value, point in found:
        point = point if point is not None else entry_curves(*next(entries))
        report(dict.fromkeys(m for c in point[:1] for m in c.settings.get("did_not_learn", [])))
        for curve in point:
            curves.append(dataclasses.replace(curve, settings={**curve.settings, parameter: value}))
    return Sweep(parameter, curves, settings)


def _point_curves(
    architecture: str,
    seeds: list[int],
    data: DataLike,
    epochs: int,
    model_kwargs: dict,
    eval_data: Mapping[str, DataLike],
    methods: list[str],
    alphas: int | Sequence[float],
    bn: str,
    batch_size: int,
    train_kwargs: dict,
    progress: bool = False,
) -> list[LMCCurve]:
    """One value of a sweep: its models trained, every pair's curves by every method."""
    with collected() as unlearned:  # reported by sweep(), from here, a job or the cache
        models = train_models(
            architecture, seeds, data, epochs, model_kwargs=model_kwargs, progress=progress,
            **train_kwargs,
        )  # fmt: skip
    found = []
    for method in methods:
        found += pairwise_curves(
            models, eval_data=eval_data, data=data, alphas=alphas, bn=bn, method=method,
            batch_size=batch_size, progress=False, cache=False,
        )  # fmt: skip
    trained = {"trained": [fingerprint(m) for m in models]}
    if unlearned:
        trained["did_not_learn"] = unlearned
    return [dataclasses.replace(c, settings={**c.settings, **trained}) for c in found]


def _point_job(**arguments: Any) -> Entry:
    """One value of :func:`sweep` as a job (see :mod:`workbench.jobs`)."""
    return curves_entry(_point_curves(**arguments))
