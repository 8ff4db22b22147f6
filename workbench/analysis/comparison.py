"""Comparing merging methods: accuracy of the merged model against the number of models.

One row per (method, N, BN handling): the merged model's accuracy and loss on the
evaluation data and the seconds the merge took. For every N, reference rows come next to
them: ``"endpoints"`` (the mean accuracy and loss of the N models themselves) and the two
output ensembles of the same N models, ``"ensemble (logits)"`` and
``"ensemble (probabilities)"`` (:func:`workbench.ensemble`), the ceiling a merge is
measured against. With ``parts=`` (the parts of a data split) every row also reports the
accuracy per part (:func:`workbench.evaluation.per_part_accuracy`).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from workbench.alignment import registry
from workbench.alignment.options import check_options, renamed_options
from workbench.cache import ResultCache, resolve_cache
from workbench.data import DataLike
from workbench.evaluation import evaluate, part_class_weights, per_part_accuracy
from workbench.figures import (
    color_for,
    figure_for,
    legend_above,
    linestyle_for,
    marker_for,
    method_label,
    paper_style,
    save_table,
    series_label,
)
from workbench.jobs import Entry, Job, check_executor, run_jobs
from workbench.merging import check_bn, ensemble, get_bn, merge_many
from workbench.merging.ensemble import COMBINE
from workbench.vocabulary import keyword_only, warn_former

__all__ = ["COLUMNS", "ENSEMBLES", "REFERENCES", "compare_methods", "plot_comparison"]

COLUMNS = ["method", "n_models", "bn", "accuracy", "loss", "seconds", "gamma", "reference"]
ENSEMBLES = {f"ensemble ({combine})": combine for combine in COMBINE}
"""The ensemble rows' method names and how each combines the models' outputs."""
REFERENCES = ("endpoints", *ENSEMBLES)
"""The rows that are no merge: the models themselves and their output ensembles."""


@keyword_only(("data", "eval_data", "methods", "sizes", "bn"))
def compare_methods(
    models: Sequence[nn.Module],
    *,
    data: DataLike,
    eval_data: DataLike,
    methods: Sequence[str] | None = None,
    sizes: Sequence[int] | None = None,
    bn: str | None = "reset",
    csv: str | Path | None = None,
    progress: bool = True,
    cache: ResultCache | bool = True,
    parts: Sequence | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    executor: Executor | None = None,
    **merge_options: Any,
) -> pd.DataFrame:
    """Merge the first N of ``models`` for each N in ``sizes`` (default 2..len(models))
    with each method in ``methods`` (default: every registered one,
    :func:`workbench.methods`), on training ``data``; evaluate on ``eval_data``.

    Returns a tidy table with the columns in :data:`COLUMNS`: ``method`` by its display
    name (``"naive"`` for plain averaging, as in every figure), ``bn`` as text
    (``"none"`` for no handling); written to ``csv`` too when given.

    ``options``: each method's own options, by method name, e.g. ``options={"cca":
    {"gamma": 0.1}, "ste": {"steps": 50}, "np_merge": {"steps": 20}}`` (a group of a
    registered method not compared is not used, so that one dict can configure every
    comparison); an unknown method name, or an option its method does not take, is an
    error before any work, which lists the method's options. ``merge_options``: the options of
    :func:`workbench.merging.merge_many` itself, for every method (``reference=``,
    ``seed=``, ``val_fraction=``, ``batch_size=``, ...). A method's option given there
    instead (the former way) still goes to the methods that take it, with a
    ``FutureWarning``.

    After the merges come, for each N, the reference rows (:data:`REFERENCES`; ``bn``
    ``"-"``, ``seconds`` 0, no ``gamma`` or ``reference``): ``"endpoints"``, the mean
    accuracy and loss of the N models, and ``"ensemble (logits)"`` and
    ``"ensemble (probabilities)"``, :func:`workbench.ensemble` of the N models evaluated on
    ``eval_data`` (the latter's loss is that of the averaged probabilities).

    ``parts``: the parts of a data split the models were trained on (e.g.
    ``wb.partition(train, n, "disjoint")``, or class-index lists); every row then gets
    columns ``accuracy_part0``, ``accuracy_part1``, ... after :data:`COLUMNS`: the
    accuracy on ``eval_data`` as each part sees it
    (:func:`workbench.evaluation.per_part_accuracy`; for ``"endpoints"`` the models'
    mean). ``accuracy`` stays the joint accuracy on all of ``eval_data``.

    Each row is cached on disk (:mod:`workbench.cache`), keyed by the content of the
    merged models and of both datasets, the method, BN handling and options, so that a
    dashboard or a re-run with one more method computes only what is new. The ``seconds``
    column is the time the merge took when it was computed. Options that are not plain
    values (numbers, strings, lists) and data given as DataLoaders are never cached. The
    ensemble rows are cached too, keyed by the N models and ``eval_data`` alone (and the
    parts' class weights, when given), and so is each model's own evaluation (the
    endpoints' rows), keyed by the model and ``eval_data``. ``executor``: any
    ``concurrent.futures.Executor`` runs one merge per job there (:mod:`workbench.jobs`);
    a rerun computes only the merges not cached yet.
    """
    check_executor(executor)
    models = list(models)
    sizes = list(sizes) if sizes is not None else list(range(2, len(models) + 1))
    known = registry.methods()
    methods = known if methods is None else [registry.canonical_method(m) for m in methods]
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ValueError(f"Unknown methods {unknown}; choose from {known}.")
    bad = [n for n in sizes if not 2 <= n <= len(models)]
    if bad:
        raise ValueError(f"sizes must lie in 2..{len(models)} (the models given), got {bad}.")
    bn = check_bn(bn, models[0])
    groups = _option_groups(methods, options, merge_options)
    weights = None if parts is None else part_class_weights(parts)
    # the parts enter the keys only when given, so that rows without them stay cached
    with_parts = {} if weights is None else {"parts": [sorted(w.items()) for w in weights]}

    def measure(model: nn.Module) -> list[float]:
        return _measure(model, eval_data, weights)

    store = resolve_cache(cache)

    def measure_endpoint(i: int) -> list[float]:
        """``measure`` of model ``i`` alone, cached by the model and ``eval_data``."""
        key = store.key(
            model=models[i], eval_data=eval_data, endpoint="the model itself", **with_parts
        )
        found = store.get_or_compute(
            "compare-endpoints", key, lambda: ({}, {"row": measure(models[i])})
        )
        return found[1]["row"]

    endpoint = [measure_endpoint(i) for i in range(max(sizes))]
    rows = []
    jobs = [(n, method) for n in sizes for method in methods]
    merges = []
    for n, method in jobs:
        given = groups[method]
        key = store.key(
            models=models[:n],
            data=data,
            eval_data=eval_data,
            method=registry.get_method(method),
            bn=get_bn(bn),
            options=given,
            **with_parts,
        )

        arguments = {"models": models[:n], "data": data, "method": method, "bn": bn}
        arguments.update(options=given, eval_data=eval_data, weights=weights)
        merges.append(Job("compare-methods", key, _merge_job, arguments))
    entries = run_jobs(
        merges, executor=executor, cache=store, progress=progress, desc="compare methods"
    )
    for (n, method), (_, found) in zip(jobs, entries, strict=True):
        rows.append([method_label(method), n, bn, *found["row"]])
    for n in sizes:
        accuracy, loss, *extra = np.mean(endpoint[:n], axis=0).tolist()
        rows.append(["endpoints", n, "-", accuracy, loss, 0.0, None, None, *extra])
        for name, combine in ENSEMBLES.items():
            key = store.key(
                models=models[:n],
                eval_data=eval_data,
                ensemble=combine,
                **with_parts,
            )

            def evaluate_ensemble(n: int = n, combine: str = combine) -> tuple[dict, dict]:
                return {}, {"row": measure(ensemble(models[:n], combine=combine))}

            _, found = store.get_or_compute("compare-ensembles", key, evaluate_ensemble)
            accuracy, loss, *extra = found["row"]
            rows.append([name, n, "-", accuracy, loss, 0.0, None, None, *extra])
    columns = COLUMNS + [f"accuracy_part{i}" for i in range(len(weights or []))]
    table = pd.DataFrame(rows, columns=columns)
    if csv is not None:
        save_table(table, csv)
    return table


def _option_groups(
    methods: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None,
    merge_options: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    """Each method's options for ``merge_many``: ``merge_many``'s own, then the method's
    group of ``options`` (former option names renamed), checked before any work; a
    method option given among ``merge_options`` (the former way) goes to the methods that
    take it, with one ``FutureWarning``."""
    taken_here = ("models", "data", "method", "bn", "progress", "options")
    own = [p for p in inspect.signature(merge_many).parameters if p not in taken_here]
    options = {} if options is None else options
    if not isinstance(options, Mapping) or not all(
        isinstance(g, Mapping) for g in options.values()
    ):
        raise TypeError(
            "options must map method names to their options, e.g. options={'cca': {'gamma': "
            f"0.1}}, got {options!r}."
        )
    named = {registry.get_method(name).name: group for name, group in options.items()}
    shared = {k: v for k, v in merge_options.items() if k in own}
    loose = {k: v for k, v in merge_options.items() if k not in own}
    found = {method: registry.get_method(method) for method in methods}
    unused = [k for k in loose if not any(m.accepts(k) or k in m.renamed for m in found.values())]
    check_options(methods, {k: loose[k] for k in unused}, own=own)
    if loose:
        warn_former(
            f"compare_methods(..., {', '.join(f'{k}=' for k in loose)}): a method's options "
            "now go in its own group, options={'<method>': {...}}; given among merge_many's "
            "options they reach the methods that take them until the next release."
        )
    groups = {}
    for method, m in found.items():
        with warnings.catch_warnings():  # the one warning above covers the former way
            warnings.simplefilter("ignore", FutureWarning)
            taken = renamed_options(m, {k: v for k, v in loose.items() if k in m.renamed})
        taken |= {k: v for k, v in loose.items() if m.accepts(k)}
        group = renamed_options(m, named.get(method, {}))
        check_options([method], group)
        groups[method] = {**shared, **taken, **group}
    return groups


def _measure(model: nn.Module, eval_data: DataLike, weights: list | None) -> list[float]:
    """Accuracy and loss on eval_data, then the per-part accuracies (if any)."""
    metrics = evaluate(model, eval_data=eval_data)
    extra = [] if weights is None else per_part_accuracy(model, eval_data=eval_data, parts=weights)
    return [metrics.accuracy, metrics.loss, *extra]


def _merge_job(
    models: list[nn.Module],
    data: DataLike,
    method: str,
    bn: str,
    options: dict,
    eval_data: DataLike,
    weights: list | None,
) -> Entry:
    """One merge of :func:`compare_methods` as a job: its row of numbers."""
    result = merge_many(models, data=data, method=method, bn=bn, progress=False, **options)
    accuracy, loss, *extra = _measure(result.model, eval_data, weights)
    report = result.report
    return {}, {"row": [accuracy, loss, report.seconds, report.gamma, report.reference, *extra]}


def plot_comparison(
    table: pd.DataFrame, metric: str = "accuracy", ax: Axes | None = None
) -> Figure:
    """Merged ``metric`` (``"accuracy"`` in %, or ``"loss"``) against the number of models,
    one line per method and BN handling (colour and marker: method; line style: BN
    handling). The references are drawn behind them, never nudged: the endpoints' mean as
    a broad grey line, and the output ensembles of the same models in the ensemble colour
    and star marker of :mod:`workbench.figures` (black), dash-dotted for the logit
    ensemble, densely dotted with hollow stars for the probability ensemble. Merge series
    are nudged sideways by a few hundredths of a model so that equal values never hide
    one another; the accuracy axis spans 0-100% and the legend sits above the axes."""
    if metric not in ("accuracy", "loss"):
        raise ValueError(f"metric must be 'accuracy' or 'loss', got {metric!r}.")
    missing = [c for c in ("method", "n_models", "bn", metric) if c not in table]
    if missing:
        raise ValueError(f"The table lacks columns {missing}; pass compare_methods' result.")
    fig, ax = figure_for(ax, aspect=0.9)  # room for the legend above the axes
    scale = 100.0 if metric == "accuracy" else 1.0
    series = list(table.groupby(["method", "bn"], sort=False))
    merged = [key for key, _ in series if key[0] not in REFERENCES]
    with paper_style():
        for index, ((method, bn), rows) in enumerate(series):
            rows = rows.sort_values("n_models")
            if method == "endpoints":
                ax.plot(
                    rows["n_models"],
                    scale * rows[metric],
                    color="0.45",
                    linestyle="-",
                    linewidth=2.2,
                    alpha=0.5,
                    marker="_",  # visible with a single N too
                    markersize=14,
                    markeredgewidth=2.2,
                    label="endpoints (mean)",
                    zorder=1,
                )
                continue
            if method in ENSEMBLES:
                hollow = ENSEMBLES[method] == "probabilities"
                ax.plot(
                    rows["n_models"],
                    scale * rows[metric],
                    color=color_for("ensemble"),
                    linestyle=(0, (1, 1)) if hollow else "-.",
                    linewidth=1.0,
                    marker=marker_for("ensemble"),
                    markersize=5,
                    markerfacecolor="white" if hollow else color_for("ensemble"),
                    label=method,
                    zorder=1.5,
                )
                continue
            shift = 0.06 * (merged.index((method, bn)) - (len(merged) - 1) / 2)
            ax.plot(
                rows["n_models"] + shift,
                scale * rows[metric],
                color=color_for(method, index),
                linestyle=linestyle_for(bn),
                marker=marker_for(method, index),
                label=series_label(method, bn),
                zorder=2,
            )
        sizes = sorted(table["n_models"].unique())
        ax.set_xticks(sizes)
        ax.set_xlim(sizes[0] - 0.5, sizes[-1] + 0.5)  # nudged series stay off the frame
        ax.set_xlabel("Number of merged models")
        if metric == "accuracy":
            ax.set_ylabel("Accuracy (%)")
            ax.set_ylim(0, 100)
        else:
            ax.set_ylabel("Cross-entropy loss")
            ax.set_ylim(bottom=0)
        legend_above(ax)
    return fig
