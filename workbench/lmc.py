"""Linear mode connectivity: loss and accuracy along the straight path between two models.

Barrier definitions (both reported, on loss and on accuracy):

* ``barrier`` (Frankle et al., 2020): ``max_a L(a) - ((1 - a) L(0) + a L(1))`` over the
  evaluated ``a`` in [0, 1], the height of the curve above the chord between its ends;
* ``rebasin_barrier`` (Ainsworth et al., Git Re-Basin): ``max_a L(a) - (L(0) + L(1)) / 2``.

Curves are cached on disk (:mod:`workbench.cache`), keyed by the content of the models and
data and by every setting that changes the numbers: a re-run is a file read, and a model
that changed can never be served a stale curve.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from workbench.alignment import align, get_method, methods
from workbench.cache import ResultCache, data_fingerprint, fingerprint
from workbench.data import DataLike
from workbench.device import model_device
from workbench.evaluation import same_function
from workbench.figures import (
    color_for,
    legend_above,
    linestyle_for,
    marker_for,
    method_label,
    new_figure,
    paper_style,
    save_table,
    series_label,
)
from workbench.graph import PermutationSpec, resolve_spec
from workbench.merge import channel_moments, check_compatible, has_batchnorm, repair_, repair_points
from workbench.weightspace import (
    Correction,
    check_data,
    evaluate_points,
    on_device,
    reset_correction,
    resolve_cache,
)

__all__ = [
    "LMCCurve",
    "barrier_table",
    "curves_frame",
    "lmc_curve",
    "lmc_curves",
    "pairwise_curves",
    "plot_bands",
    "plot_curves",
    "write_csv",
]

BN_MODES = (None, "reset", "repair")


def _alphas(alphas: int | Sequence[float]) -> np.ndarray:
    if isinstance(alphas, int):
        if alphas < 2:
            raise ValueError(f"Need at least 2 points on the path, got alphas={alphas}.")
        # rounded, so that 0.3 is stored and written as 0.3, not 0.30000000000000004
        return np.round(np.linspace(0.0, 1.0, alphas), 12)
    values = np.asarray(alphas, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0 or not np.isfinite(values).all():
        raise ValueError(f"alphas must be a count or a 1-D list of finite numbers, got {alphas}.")
    return values


def _endpoint(alphas: np.ndarray, values: np.ndarray, at: float) -> float:
    hit = np.flatnonzero(alphas == at)
    if len(hit) == 0:
        raise ValueError(
            f"A barrier needs the endpoints evaluated: alpha={at:g} is not among {alphas.tolist()}."
        )
    return float(values[hit[0]])


def _chord_excess(alphas: np.ndarray, values: np.ndarray, end: float | None = None) -> float:
    """max over alpha in [0, 1] of values(alpha) minus the chord from values(0) to ``end``
    (default values(1))."""
    v0 = _endpoint(alphas, values, 0.0)
    v1 = _endpoint(alphas, values, 1.0) if end is None else end
    inside = (alphas >= 0) & (alphas <= 1)
    chord = (1 - alphas[inside]) * v0 + alphas[inside] * v1
    return float(np.max(values[inside] - chord))


@dataclass(frozen=True)
class LMCCurve:
    """Loss and accuracy at each ``alpha`` on the path from model A (0) to model B (1).

    ``split`` names the data it was evaluated on, ``bn`` the BatchNorm handling
    (``None``, ``"reset"`` or ``"repair"``), ``label`` the method that produced the
    endpoints and ``settings`` everything else that determined the numbers (the models'
    fingerprints, batch size, ...; a pair index or a sweep value where it applies).

    When the far end of the path is *not* model B but an image of it that computes another
    function (CCA's linear maps through ReLUs), ``original_b_loss`` and
    ``original_b_accuracy`` hold B's own numbers (same split, same BatchNorm handling):
    the barriers are then measured against the chord to B itself, and ``summary()``
    reports the mapped end's numbers beside them. A chord to the mapped end would hide the
    barrier (the path would end on a broken model). They are ``None`` when the far end
    computes B's function (any permutation).
    """

    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    split: str = "data"
    bn: str | None = None
    label: str = "naive"
    settings: dict = field(default_factory=dict)
    original_b_loss: float | None = None
    original_b_accuracy: float | None = None

    @property
    def far_end_is_b(self) -> bool:
        """True when the path ends at model B itself (or a permutation of it)."""
        return self.original_b_loss is None

    @property
    def diverged(self) -> np.ndarray:
        """Alphas at which the loss is NaN or infinite (the interpolated model blew up)."""
        return self.alphas[~np.isfinite(self.loss)]

    @property
    def loss_b(self) -> float:
        """Model B's loss: the far end's, or B's own when the far end is not B."""
        if self.original_b_loss is not None:
            return self.original_b_loss
        return _endpoint(self.alphas, self.loss, 1.0)

    @property
    def accuracy_b(self) -> float:
        """Model B's accuracy: the far end's, or B's own when the far end is not B."""
        if self.original_b_accuracy is not None:
            return self.original_b_accuracy
        return _endpoint(self.alphas, self.accuracy, 1.0)

    @property
    def barrier(self) -> float:
        """Loss barrier: the curve's height above the chord from A's loss to B's."""
        return _chord_excess(self.alphas, self.loss, self.loss_b)

    @property
    def rebasin_barrier(self) -> float:
        """Git Re-Basin's loss barrier: ``max L(alpha) - (L(A) + L(B)) / 2``."""
        mean_end = (_endpoint(self.alphas, self.loss, 0) + self.loss_b) / 2
        inside = (self.alphas >= 0) & (self.alphas <= 1)
        return float(np.max(self.loss[inside]) - mean_end)

    @property
    def accuracy_barrier(self) -> float:
        """Accuracy barrier: the largest drop below the chord from A's accuracy to B's."""
        return _chord_excess(self.alphas, -self.accuracy, -self.accuracy_b)

    @property
    def midpoint_accuracy(self) -> float:
        """Accuracy at alpha = 0.5 (the merged model of plain averaging)."""
        return _endpoint(self.alphas, self.accuracy, 0.5)

    def to_frame(self) -> pd.DataFrame:
        """A tidy table: one row per alpha with label, bn, split, loss and accuracy."""
        return pd.DataFrame(
            {
                "label": self.label,
                "bn": self.bn or "none",
                "split": self.split,
                "alpha": self.alphas,
                "loss": self.loss,
                "accuracy": self.accuracy,
            }
        )

    def summary(self) -> dict[str, float | str]:
        """The barriers and endpoint/midpoint accuracies as one flat record; when the far
        end is not B, also the far end's own loss and accuracy (``mapped_end_*``)."""
        record: dict[str, float | str] = {
            "label": self.label,
            "bn": self.bn or "none",
            "split": self.split,
            "barrier": self.barrier,
            "rebasin_barrier": self.rebasin_barrier,
            "accuracy_barrier": self.accuracy_barrier,
            "accuracy_a": _endpoint(self.alphas, self.accuracy, 0),
            "accuracy_b": self.accuracy_b,
        }
        if 0.5 in self.alphas:
            record["midpoint_accuracy"] = self.midpoint_accuracy
        if not self.far_end_is_b:
            record["mapped_end_loss"] = _endpoint(self.alphas, self.loss, 1.0)
            record["mapped_end_accuracy"] = _endpoint(self.alphas, self.accuracy, 1.0)
        return record

    def plot(self, metric: str = "loss", ax: Axes | None = None) -> Figure:
        """Plot this curve; see :func:`plot_curves`."""
        return plot_curves([self], metric=metric, ax=ax)


# ---------------------------------------------------------------------------------------
# Cached sets of curves


def _store_curves(store: ResultCache, kind: str, key: str | None, curves: list[LMCCurve]) -> None:
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
    store.store(kind, key, tensors, meta)


def _load_curves(store: ResultCache, kind: str, key: str | None) -> list[LMCCurve] | None:
    hit = store.load(kind, key)
    if hit is None:
        return None
    tensors, meta = hit
    return [
        LMCCurve(*(tensors[f"{i}/{n}"].numpy() for n in ("alphas", "loss", "accuracy")), *rest)
        for i, rest in enumerate(meta["curves"])
    ]


def cached_curves(
    store: ResultCache,
    kind: str,
    key: str | None,
    compute: Callable[[], list[LMCCurve]],
) -> list[LMCCurve]:
    """The curves stored under ``key``, else ``compute()``'s, stored for next time. Settings
    must be JSON values (lists, not tuples) so that a hit equals the computed result."""
    curves = _load_curves(store, kind, key)
    if curves is None:
        curves = compute()
        _store_curves(store, kind, key, curves)
    return curves


def data_key(data: Mapping[str, DataLike]) -> dict[str, str | None] | None:
    """The content fingerprints of named splits for a cache key (``None``: not cacheable)."""
    fingerprints = {split: data_fingerprint(d) for split, d in data.items()}
    return None if None in fingerprints.values() else fingerprints


# ---------------------------------------------------------------------------------------
# Computing curves


def lmc_curves(
    model_a: nn.Module,
    model_b: nn.Module,
    data: Mapping[str, DataLike],
    alphas: int | Sequence[float] = 11,
    bn: str | None = None,
    *,
    bn_data: DataLike | None = None,
    label: str = "naive",
    spec: PermutationSpec | None = None,
    original_b: nn.Module | None = None,
    batch_size: int = 500,
    progress: bool = True,
    cache: ResultCache | bool = True,
) -> dict[str, LMCCurve]:
    """Curves on several named splits at once (e.g. ``{"train": ..., "test": ...}``).

    Each interpolated model is loaded into a single working copy and, with ``bn="reset"``
    or ``bn="repair"``, corrected once on ``bn_data`` (default: the first split, which
    should be training data), then evaluated on every split. RESET is one train-mode pass
    per point; REPAIR measures the endpoints' statistics once for the whole curve;
    ``spec`` saves re-tracing.

    ``original_b`` is the model that ``model_b`` was derived from (aligned or mapped).
    Pass it whenever ``model_b`` is not the original: if ``model_b`` computes another
    function (checked on the first batch of the first split; CCA's maps do, permutations
    do not), B's own loss and accuracy are measured too and the barriers are taken against
    them (see :class:`LMCCurve`), instead of against the mapped end.

    Results are cached on disk, keyed by the content of both models, of every dataset and
    of ``bn_data`` and by all settings (``cache``: ``True`` for the default cache, a
    :class:`~workbench.cache.ResultCache`, or ``False`` to bypass it). Data given as
    DataLoaders cannot be fingerprinted and is never cached.
    """
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}, got {bn!r}.")
    if not data:
        raise ValueError("data must name at least one split, e.g. {'train': train_set}.")
    check_compatible([model_a, model_b])
    if bn == "reset" and not has_batchnorm(model_a):
        raise ValueError(
            f"bn='reset' needs BatchNorm layers and {type(model_a).__name__} has none."
        )
    points = _alphas(alphas)
    reset_data = bn_data if bn_data is not None else next(iter(data.values()))
    check_data(model_a, {**data, "bn_data": reset_data} if bn else data)
    if original_b is not None:
        check_compatible([model_b, original_b])
    mapped = original_b is not None and not same_function(
        original_b, model_b, next(iter(data.values()))
    )
    store = resolve_cache(cache)
    settings = {
        "batch_size": batch_size,
        "bn_data": "given" if bn_data is not None else "first split",
        "models": [fingerprint(model_a), fingerprint(model_b)],
    }
    if mapped:
        settings["original_b"] = fingerprint(original_b)
    key = store.key(
        models=settings["models"],
        original_b=settings.get("original_b", "-"),
        data=data_key(data),
        bn_data=data_fingerprint(reset_data) if bn else "-",
        alphas=points.tolist(),
        bn=bn or "none",
        batch_size=batch_size,
    )

    def compute() -> list[LMCCurve]:
        correct = _correction(model_a, model_b, bn, reset_data, spec, batch_size)
        results = evaluate_points(
            model_a,
            [model_a.state_dict(), model_b.state_dict()],
            [[1.0 - alpha, alpha] for alpha in points.tolist()],
            data,
            correct=correct,
            batch_size=batch_size,
            progress=progress,
            desc=f"LMC {series_label(label, bn)}",
        )
        own = _own_metrics(original_b, data, bn, reset_data, batch_size) if mapped else {}
        return [
            LMCCurve(points, loss, acc, split, bn, label, settings, *own.get(split, (None, None)))
            for split, (loss, acc) in results.items()
        ]

    curves = cached_curves(store, "lmc", key, compute)
    return {c.split: dataclasses.replace(c, label=label) for c in curves}


def _own_metrics(
    model: nn.Module,
    data: Mapping[str, DataLike],
    bn: str | None,
    reset_data: DataLike,
    batch_size: int,
) -> dict[str, tuple[float, float]]:
    """``split -> (loss, accuracy)`` of ``model`` itself, with the BatchNorm handling of a
    path's end point: RESET recomputes its statistics; REPAIR at a path's end gives each
    channel its own model's statistics, which leaves the model as it is."""
    correct = reset_correction(model, reset_data, batch_size) if bn == "reset" else None
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


def _correction(
    model_a: nn.Module,
    model_b: nn.Module,
    bn: str | None,
    data: DataLike,
    spec: PermutationSpec | None,
    batch_size: int,
) -> Correction | None:
    """What fixes each loaded point's statistics: RESET, REPAIR (towards the endpoints'
    interpolated channel statistics, measured once here) or nothing."""
    if bn is None:
        return None
    if bn == "reset":
        return reset_correction(model_a, data, batch_size)
    data = on_device(data, model_device(model_a))
    at = repair_points(resolve_spec(model_a, spec, data=data))
    targets = [channel_moments(m, data, at, batch_size) for m in (model_a, model_b)]
    return lambda work, weights: repair_(work, targets, weights, data, at, batch_size)


def lmc_curve(
    model_a: nn.Module,
    model_b: nn.Module,
    data: DataLike,
    alphas: int | Sequence[float] = 11,
    bn: str | None = None,
    *,
    bn_data: DataLike | None = None,
    label: str = "naive",
    spec: PermutationSpec | None = None,
    original_b: nn.Module | None = None,
    batch_size: int = 500,
    progress: bool = True,
    cache: ResultCache | bool = True,
) -> LMCCurve:
    """Loss and accuracy of ``(1 - alpha) A + alpha B`` on ``data`` for each alpha.

    ``alphas`` is a number of evenly spaced points in [0, 1] or explicit values (outside
    [0, 1] extrapolates; barriers use the points inside). ``bn="reset"`` recomputes
    BatchNorm statistics of every interpolated model on ``bn_data`` (default ``data``);
    ``bn="repair"`` applies REPAIR instead (also for networks without BatchNorm).
    A NaN or infinite loss is kept and reported by :attr:`LMCCurve.diverged`. The models
    are not modified; the result is cached. ``original_b``: the model that ``model_b`` was
    aligned or mapped from, so that the barrier is measured against B itself when
    ``model_b`` computes another function (see :func:`lmc_curves`).
    """
    split = getattr(data, "split", "data")
    return lmc_curves(
        model_a,
        model_b,
        {split: data},
        alphas,
        bn,
        bn_data=bn_data,
        label=label,
        spec=spec,
        original_b=original_b,
        batch_size=batch_size,
        progress=progress,
        cache=cache,
    )[split]


def pairwise_curves(
    models: Sequence[nn.Module],
    data: Mapping[str, DataLike],
    alphas: int | Sequence[float] = 11,
    bn: str | None = None,
    method: str = "none",
    *,
    bn_data: DataLike | None = None,
    batch_size: int = 500,
    progress: bool = True,
    cache: ResultCache | bool = True,
) -> list[LMCCurve]:
    """Curves between every pair ``i < j`` of ``models`` on every split of ``data``, model
    ``j`` aligned to model ``i`` by ``method`` (any of :func:`workbench.methods`; data for
    matching and for BN correction: ``bn_data``, else the first split).

    Each curve's ``settings["pair"]`` is ``[i, j]``. Each pair is cached as a whole, keyed
    by the two original models, so a re-run skips the alignment too. Summarize the result
    with :func:`plot_bands`, :func:`barrier_table` or :func:`curves_frame`
    (``settings=("pair",)`` adds the pair column).
    """
    models = list(models)
    method = get_method(method).name
    if len(models) < 2:
        raise ValueError(f"Need at least 2 models for pairs, got {len(models)}.")
    check_compatible(models)
    if not data:
        raise ValueError("data must name at least one split, e.g. {'train': train_set}.")
    match_data = bn_data if bn_data is not None else next(iter(data.values()))
    store = resolve_cache(cache)
    fingerprints = [fingerprint(m) for m in models]
    spec = None
    curves = []
    pairs = list(itertools.combinations(range(len(models)), 2))
    for i, j in tqdm(pairs, desc=f"pairs ({method})", disable=not progress):
        key = store.key(
            models=[fingerprints[i], fingerprints[j]],
            method=method,
            match_data=data_fingerprint(match_data),
            data=data_key(data),
            alphas=_alphas(alphas).tolist(),
            bn=bn or "none",
            far_end="measured against model j itself",
            batch_size=batch_size,
        )

        def compute(i: int = i, j: int = j) -> list[LMCCurve]:
            nonlocal spec
            spec = spec or resolve_spec(models[0], None, data=match_data)
            aligned = align(models[i], models[j], method, data=match_data, spec=spec)
            found = lmc_curves(
                models[i],
                aligned,
                data,
                alphas,
                bn,
                bn_data=bn_data,
                label=method_label(method),
                spec=spec,
                original_b=models[j],
                batch_size=batch_size,
                progress=False,
                cache=False,
            )
            return [
                dataclasses.replace(c, settings={**c.settings, "pair": [i, j]})
                for c in found.values()
            ]

        curves += cached_curves(store, "lmc-pairs", key, compute)
    return curves


# ---------------------------------------------------------------------------------------
# Tables


def curves_frame(curves: Sequence[LMCCurve], settings: Sequence[str] = ()) -> pd.DataFrame:
    """All curves as one tidy table (for CSV export or seaborn); ``settings`` names entries
    of each curve's settings to add as columns (e.g. ``("pair",)``)."""
    frames = []
    for curve in curves:
        frame = curve.to_frame()
        for name in settings:
            frame[name] = _setting(curve, name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def barrier_table(curves: Sequence[LMCCurve], settings: Sequence[str] = ()) -> pd.DataFrame:
    """One row per curve with both barrier definitions and the accuracies (and the named
    ``settings`` of each curve as columns)."""
    rows = []
    for curve in curves:
        row = {name: _setting(curve, name) for name in settings}
        rows.append({**row, **curve.summary()})
    return pd.DataFrame(rows)


def _setting(curve: LMCCurve, name: str) -> object:
    if name not in curve.settings:
        raise ValueError(
            f"Curve {curve.label!r} ({curve.split}) has no setting {name!r}; it has "
            f"{sorted(curve.settings)}."
        )
    value = curve.settings[name]
    return "-".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def write_csv(curves: Sequence[LMCCurve], path: str | Path, settings: Sequence[str] = ()) -> Path:
    """Write the curves' tidy table (:func:`curves_frame`) to ``path`` (folders created)."""
    return save_table(curves_frame(curves, settings), path)


# ---------------------------------------------------------------------------------------
# Figures


_METRIC_LABELS = {"loss": "Cross-entropy loss", "accuracy": "Accuracy (%)"}
_ALPHA_LABEL = r"Interpolation $\alpha$ (A $\rightarrow$ B)"


def _check_plot_input(curves: Sequence[LMCCurve], metric: str) -> None:
    if metric not in _METRIC_LABELS:
        raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}.")
    if not curves:
        raise ValueError("Nothing to plot: no curves given.")


def _axes(ax: Axes | None) -> tuple[Figure, Axes]:
    if ax is None:
        return new_figure()
    return ax.figure, ax


def _values(curve: LMCCurve, metric: str) -> np.ndarray:
    return curve.loss if metric == "loss" else 100 * curve.accuracy


def _finish(ax: Axes, metric: str, title: str | None, legend: bool) -> None:
    """Axis labels and honest ranges: a loss axis starts at 0 and an accuracy axis spans
    0-100%, so that a barrier of 0.05 does not look like one of 2."""
    ax.set_xlabel(_ALPHA_LABEL)
    ax.set_ylabel(_METRIC_LABELS[metric])
    if metric == "loss":
        ax.set_ylim(bottom=0)
    else:
        ax.set_ylim(0, 100)
    if title:
        ax.set_title(title)
    if legend:
        legend_above(ax)


def _mark_diverged(ax: Axes, alphas: np.ndarray, name: str) -> None:
    """Crosses on the x axis where the loss diverged: never a silent gap in a line."""
    if len(alphas):
        ax.plot(
            alphas,
            np.zeros_like(alphas),
            "x",
            color="black",
            clip_on=False,
            label=f"{name}: diverged",
        )


def plot_curves(
    curves: Sequence[LMCCurve],
    metric: str = "loss",
    ax: Axes | None = None,
    title: str | None = None,
    legend: bool = True,
) -> Figure:
    """Plot ``metric`` ("loss" or "accuracy") against alpha for each curve.

    Colour and marker follow the method, line style the BatchNorm handling (solid: none,
    dashed: RESET, dotted: REPAIR); with several splits, train markers are hollow. The
    loss axis starts at 0 and the accuracy axis spans 0-100%; the legend sits above the
    axes. Points where the loss diverged (NaN) are marked with a cross on the axis rather
    than left as silent gaps. Where the far end is not B (:attr:`LMCCurve.far_end_is_b`),
    B's own value is drawn at alpha = 1 as an open star.
    """
    _check_plot_input(curves, metric)
    fig, ax = _axes(ax)
    several_splits = len({c.split for c in curves}) > 1
    with paper_style():
        for index, curve in enumerate(curves):
            name = series_label(curve.label, curve.bn, curve.split if several_splits else None)
            color = color_for(curve.label, index, methods())
            ax.plot(
                curve.alphas,
                _values(curve, metric),
                color=color,
                linestyle=linestyle_for(curve.bn),
                marker=marker_for(curve.label, index, methods()),
                markerfacecolor="white" if several_splits and curve.split == "train" else color,
                label=name,
            )
            if not curve.far_end_is_b:
                own = curve.loss_b if metric == "loss" else 100 * curve.accuracy_b
                ax.plot(
                    [1.0],
                    [own],
                    "*",
                    color=color,
                    markerfacecolor="white",
                    markersize=8,
                    clip_on=False,
                    label=f"{name}: model B itself",
                )
            _mark_diverged(ax, curve.diverged, name)
        _finish(ax, metric, title, legend)
    return fig


def plot_bands(
    curves: Sequence[LMCCurve],
    metric: str = "loss",
    band: str = "std",
    ax: Axes | None = None,
    title: str | None = None,
    legend: bool = True,
) -> Figure:
    """The mean curve of each (method, BN handling, split) over its pairs, with a band:
    ``band="std"`` (mean +/- one population standard deviation over the pairs) or
    ``"range"`` (the minimum to the maximum pair). Alphas where any pair diverged are
    marked with a cross on the axis (the mean is undefined there). Styles and axis ranges
    as in :func:`plot_curves`."""
    _check_plot_input(curves, metric)
    if band not in ("std", "range"):
        raise ValueError(f"band must be 'std' or 'range', got {band!r}.")
    groups: dict[tuple, list[LMCCurve]] = {}
    for curve in curves:
        groups.setdefault((curve.label, curve.bn, curve.split), []).append(curve)
    several_splits = len({split for _, _, split in groups}) > 1
    fig, ax = _axes(ax)
    with paper_style():
        for index, ((label, bn, split), members) in enumerate(groups.items()):
            alphas = members[0].alphas
            if any(not np.array_equal(c.alphas, alphas) for c in members):
                raise ValueError(
                    f"Curves of {label!r} ({split}) use different alphas; compute them with "
                    "the same alphas to average them."
                )
            values = np.stack([_values(c, metric) for c in members])
            mean = values.mean(0)
            if band == "std":
                low, high = mean - values.std(0), mean + values.std(0)
            else:
                low, high = values.min(0), values.max(0)
            color = color_for(label, index, methods())
            extra = f"{split}, {len(members)} pairs" if several_splits else f"{len(members)} pairs"
            name = series_label(label, bn, extra)
            ax.plot(alphas, mean, color=color, linestyle=linestyle_for(bn), label=name)
            ax.fill_between(alphas, low, high, color=color, alpha=0.2, linewidth=0)
            _mark_diverged(ax, alphas[~np.isfinite(values).all(0)], name)
        _finish(ax, metric, title, legend)
    return fig
