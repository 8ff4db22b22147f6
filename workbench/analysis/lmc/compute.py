"""Computing LMC curves: the models on the straight path between two (aligned) models,
evaluated on one working model, with BatchNorm reset or REPAIR at every point.

Curves are cached on disk (:mod:`workbench.cache`), keyed by the content of the models and
data and by every setting that changes the numbers: a re-run is a file read, and a model
that changed can never be served a stale curve.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from workbench.alignment import align, get_method
from workbench.analysis.engine import check_data, evaluate_points
from workbench.analysis.lmc.result import LMCCurve, alpha_grid
from workbench.cache import ResultCache, resolve_cache
from workbench.data import DataLike
from workbench.evaluation import same_function
from workbench.figures import method_label, series_label
from workbench.fingerprints import fingerprint, fingerprints
from workbench.graph import PermutationSpec, resolve_spec
from workbench.jobs import Entry, Job, check_executor, run_jobs
from workbench.merging import check_bn, get_bn
from workbench.validation import check_int, check_models
from workbench.vocabulary import MEASURED, keyword_only

__all__ = [
    "cached_curves",
    "curves_entry",
    "entry_curves",
    "lmc_curve",
    "lmc_curves",
    "pairwise_curves",
]

# ---------------------------------------------------------------------------------------
# Cached sets of curves


def _store_curves(
    store: ResultCache, section: str, key: str | None, curves: list[LMCCurve]
) -> None:
    store.store(section, key, *curves_entry(curves))


def curves_entry(curves: list[LMCCurve]) -> Entry:
    """Curves as a cache entry (tensors and settings), what a job returns."""
    tensors = {}
    for i, curve in enumerate(curves):
        for name in ("alphas", "loss", "accuracy"):
            tensors[f"{i}/{name}"] = torch.tensor(np.asarray(getattr(curve, name), np.float64))
    meta = {
        "curves": [
            [c.split, c.bn, c.label, c.settings, c.original_b_loss, c.original_b_accuracy]
            for c in curves
        ]
    }
    return tensors, meta


def _complete_curves(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> bool:
    """Whether a cache entry holds whole curves: every row of settings and, for each, the
    three 1-D arrays of one length (a foreign or damaged entry is a miss)."""
    rows = meta.get("curves")
    if not isinstance(rows, list) or not rows:
        return False
    for i, row in enumerate(rows):
        arrays = [tensors.get(f"{i}/{n}") for n in ("alphas", "loss", "accuracy")]
        if not (isinstance(row, list) and len(row) == 6 and isinstance(row[3], dict)):
            return False
        if any(a is None or a.ndim != 1 or a.shape != arrays[0].shape for a in arrays):
            return False
    return True


def _load_curves(store: ResultCache, section: str, key: str | None) -> list[LMCCurve] | None:
    hit = store.load(section, key, valid=_complete_curves)
    if hit is None:
        return None
    return entry_curves(*hit)


def entry_curves(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> list[LMCCurve]:
    """The curves of a cache entry (:func:`curves_entry`)."""
    return [
        LMCCurve(*(tensors[f"{i}/{n}"].numpy() for n in ("alphas", "loss", "accuracy")), *rest)
        for i, rest in enumerate(meta["curves"])
    ]


def cached_curves(
    store: ResultCache,
    section: str,
    key: str | None,
    compute: Callable[[], list[LMCCurve]],
) -> list[LMCCurve]:
    """The curves stored under ``key``, else ``compute()``'s, stored for next time. Settings
    must be JSON values (lists, not tuples) so that a hit equals the computed result."""
    curves = _load_curves(store, section, key)
    if curves is None:
        if key is not None:
            store.check_writable()  # before the work, not when storing its result
        curves = compute()
        _store_curves(store, section, key, curves)
    return curves


# ---------------------------------------------------------------------------------------
# Computing curves


@keyword_only(("eval_data", "alphas", "bn"), renamed={"bn_data": "data"}, moved=MEASURED)
def lmc_curves(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    eval_data: Mapping[str, DataLike],
    data: DataLike | None = None,
    alphas: int | Sequence[float] = 11,
    bn: str | None = None,
    label: str = "naive",
    spec: PermutationSpec | None = None,
    original_b: nn.Module | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    cache: ResultCache | bool = True,
) -> dict[str, LMCCurve]:
    """Curves on several named splits at once (e.g. ``{"train": ..., "test": ...}``).

    Each interpolated model is loaded into a single working copy and corrected by the
    BatchNorm handling ``bn`` (a registered name, :func:`~workbench.bn_modes`: ``"reset"``,
    ``"repair"``, ``"none"``; ``None`` is ``"none"``) on ``data`` (training data; default:
    the first split of ``eval_data``), then evaluated on every split of ``eval_data``. RESET measures
    every point; REPAIR measures the endpoints' statistics once for the whole curve, and
    its targets exist only for alphas in [0, 1]; ``spec`` saves re-tracing.

    ``original_b`` is the model that ``model_b`` was derived from (aligned or mapped).
    Pass it whenever ``model_b`` is not the original: if ``model_b`` computes another
    function (checked on the first batch of the first split; CCA's maps do, permutations
    do not), B's own loss and accuracy are measured too and the barriers are taken against
    them (see :class:`LMCCurve`), instead of against the mapped end.

    Results are cached on disk, keyed by the content of both models, of every dataset and
    of ``data`` and by all settings (``cache``: ``True`` for the default cache, a
    :class:`~workbench.cache.ResultCache`, or ``False`` to bypass it). Data given as
    DataLoaders cannot be fingerprinted and is never cached.
    """
    if not eval_data:
        raise ValueError("eval_data must name at least one split, e.g. {'test': test_set}.")
    check_models([model_a, model_b])
    if batch_size is not None:
        check_int("batch_size", batch_size, minimum=1)
    handling = get_bn(check_bn(bn, model_a))
    bn = handling.name
    points = alpha_grid(alphas)
    if handling.needs_endpoints and ((points < 0) | (points > 1)).any():
        raise ValueError(
            f"bn={bn!r} corrects towards the endpoints' interpolated statistics, which exist "
            f"only for alphas in [0, 1], got {points.tolist()}: drop the alphas outside, or "
            "use another handling."
        )
    reset_data = data if data is not None else next(iter(eval_data.values()))
    check_data(model_a, eval_data, reset_data if handling.needs_data else None)
    if original_b is not None:
        check_models([model_b, original_b])
    mapped = original_b is not None and not same_function(
        original_b, model_b, next(iter(eval_data.values()))
    )
    store = resolve_cache(cache)
    settings = {
        "batch_size": batch_size,
        "data": "given" if data is not None else "first split",
        "models": fingerprints([model_a, model_b]),
    }
    if mapped:
        settings["original_b"] = fingerprint(original_b)
    key = store.key(
        models=[model_a, model_b],
        original_b=original_b if mapped else "-",
        eval_data=eval_data,
        data=reset_data if handling.needs_data else "-",
        alphas=points,
        bn=handling,
        spec=spec,
        batch_size=batch_size,
    )

    def compute() -> list[LMCCurve]:
        correct = handling.correction(
            [model_a, model_b], reset_data, spec=spec, batch_size=batch_size
        )
        results = evaluate_points(
            model_a,
            [model_a.state_dict(), model_b.state_dict()],
            [[1.0 - alpha, alpha] for alpha in points.tolist()],
            eval_data,
            correct=correct,
            batch_size=batch_size,
            progress=progress,
            desc=f"LMC {series_label(label, bn)}",
        )
        own = _own_metrics(original_b, eval_data, bn, reset_data, batch_size) if mapped else {}
        return [
            LMCCurve(points, loss, acc, split, bn, label, settings, *own.get(split, (None, None)))
            for split, (loss, acc) in results.items()
        ]

    curves = cached_curves(store, "lmc", key, compute)
    return {c.split: dataclasses.replace(c, label=label) for c in curves}


def _own_metrics(
    model: nn.Module,
    data: Mapping[str, DataLike],
    bn: str,
    reset_data: DataLike,
    batch_size: int,
) -> dict[str, tuple[float, float]]:
    """``split -> (loss, accuracy)`` of ``model`` itself, with the BatchNorm handling of a
    path's end point: RESET recomputes its statistics; a handling that keeps the endpoints
    (REPAIR gives each channel its own model's statistics) leaves the model as it is."""
    handling = get_bn(bn)
    correct = None
    if not handling.keeps_endpoints:
        correct = handling.correction([model], reset_data, batch_size=batch_size)
    found = evaluate_points(
        model,
        [model.state_dict()],
        [[1.0]],
        data,
        correct=correct,
        batch_size=batch_size,
        progress=False,
    )
    return {split: (float(loss[0]), float(acc[0])) for split, (loss, acc) in found.items()}


@keyword_only(("eval_data", "alphas", "bn"), renamed={"bn_data": "data"}, moved=MEASURED)
def lmc_curve(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    eval_data: DataLike,
    data: DataLike | None = None,
    alphas: int | Sequence[float] = 11,
    bn: str | None = None,
    label: str = "naive",
    spec: PermutationSpec | None = None,
    original_b: nn.Module | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    cache: ResultCache | bool = True,
) -> LMCCurve:
    """Loss and accuracy of ``(1 - alpha) A + alpha B`` on ``eval_data`` for each alpha.

    ``alphas`` is a number of evenly spaced points in [0, 1] or explicit values (outside
    [0, 1] extrapolates; barriers use the points inside). ``bn`` corrects every
    interpolated model on ``data`` (training data; default ``eval_data``): ``"reset"`` recomputes BatchNorm
    statistics, ``"repair"`` applies REPAIR (also for networks without BatchNorm), any
    registered handling works (:func:`~workbench.register_bn`).
    A NaN or infinite loss is kept and reported by :attr:`LMCCurve.diverged`. The models
    are not modified; the result is cached. ``original_b``: the model that ``model_b`` was
    aligned or mapped from, so that the barrier is measured against B itself when
    ``model_b`` computes another function (see :func:`lmc_curves`).
    """
    split = getattr(eval_data, "split", "data")
    return lmc_curves(
        model_a,
        model_b,
        eval_data={split: eval_data},
        data=data,
        alphas=alphas,
        bn=bn,
        label=label,
        spec=spec,
        original_b=original_b,
        batch_size=batch_size,
        progress=progress,
        cache=cache,
    )[split]


@keyword_only(("eval_data", "alphas", "bn", "method"), renamed={"bn_data": "data"}, moved=MEASURED)
def pairwise_curves(
    models: Sequence[nn.Module],
    *,
    eval_data: Mapping[str, DataLike],
    data: DataLike | None = None,
    alphas: int | Sequence[float] = 11,
    bn: str | None = None,
    method: str = "none",
    batch_size: int | None = None,
    progress: bool = True,
    cache: ResultCache | bool = True,
    executor: Executor | None = None,
) -> list[LMCCurve]:
    """Curves between every pair ``i < j`` of ``models`` on every split of ``eval_data``,
    model ``j`` aligned to model ``i`` by ``method`` (any of :func:`workbench.methods`) on
    ``data`` (training data, also for the BN correction; default the first split).

    Each curve's ``settings["pair"]`` is ``[i, j]``. Each pair is cached as a whole, keyed
    by the two original models, so a re-run skips the alignment too. Summarize the result
    with :func:`plot_bands`, :func:`barrier_table` or :func:`curves_frame`
    (``settings=("pair",)`` adds the pair column). ``executor``: any
    ``concurrent.futures.Executor`` computes one pair per job there
    (:mod:`workbench.jobs`); a rerun computes only the pairs not cached yet.
    """
    check_executor(executor)
    models = list(models)
    found = get_method(method)
    found.check_pairwise()
    method = found.name
    if len(models) < 2:
        raise ValueError(f"Need at least 2 models for pairs, got {len(models)}.")
    check_models(models)
    if not eval_data:
        raise ValueError("eval_data must name at least one split, e.g. {'test': test_set}.")
    bn = check_bn(bn, models[0])
    match_data = data if data is not None else next(iter(eval_data.values()))
    store = resolve_cache(cache)
    spec = None
    curves = []
    jobs = []
    pairs = list(itertools.combinations(range(len(models)), 2))
    for i, j in tqdm(pairs, desc=f"pairs ({method})", disable=not progress or executor is not None):
        key = store.key(
            models=[models[i], models[j]],
            method=found,
            match_data=match_data,
            eval_data=eval_data,
            alphas=alpha_grid(alphas),
            bn=get_bn(bn),
            far_end="measured against model j itself",
            batch_size=batch_size,
        )

        arguments = {"models": [models[i], models[j]], "pair": [i, j], "method": method}
        arguments.update(eval_data=eval_data, data=data, match_data=match_data, alphas=alphas)
        arguments.update(bn=bn, batch_size=batch_size)
        if executor is not None:
            jobs.append(Job("lmc-pairs", key, _pair_job, arguments, valid=_complete_curves))
            continue

        def compute(arguments: dict = arguments) -> list[LMCCurve]:
            nonlocal spec
            spec = spec or resolve_spec(models[0], None, data=match_data)
            return _pair_curves(**arguments, spec=spec)

        curves += cached_curves(store, "lmc-pairs", key, compute)
    for entry in run_jobs(jobs, executor=executor, cache=store, progress=progress, desc="pairs"):
        curves += entry_curves(*entry)
    return curves


def _pair_curves(
    models: list[nn.Module],
    pair: list[int],
    method: str,
    eval_data: Mapping[str, DataLike],
    data: DataLike | None,
    match_data: DataLike,
    alphas: int | Sequence[float],
    bn: str,
    batch_size: int,
    spec: PermutationSpec | None = None,
) -> list[LMCCurve]:
    """The curves of one pair of :func:`pairwise_curves`: the second model aligned to
    the first by ``method``, then the path between them on every split."""
    spec = spec or resolve_spec(models[0], None, data=match_data)
    aligned = align(models[0], models[1], method=method, data=match_data, spec=spec)
    found = lmc_curves(
        models[0],
        aligned,
        eval_data=eval_data,
        data=data,
        alphas=alphas,
        bn=bn,
        label=method_label(method),
        spec=spec,
        original_b=models[1],
        batch_size=batch_size,
        progress=False,
        cache=False,
    )
    return [dataclasses.replace(c, settings={**c.settings, "pair": pair}) for c in found.values()]


def _pair_job(**arguments: object) -> Entry:
    """One pair of :func:`pairwise_curves` as a job (see :mod:`workbench.jobs`)."""
    return curves_entry(_pair_curves(**arguments))
