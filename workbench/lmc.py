"""Linear mode connectivity: loss and accuracy along the straight path between two models.

Barrier definitions (both reported, on loss and on accuracy):

* ``barrier`` (Frankle et al., 2020): ``max_a L(a) - ((1 - a) L(0) + a L(1))`` over the
  evaluated ``a`` in [0, 1], the height of the curve above the chord between its ends;
* ``rebasin_barrier`` (Ainsworth et al., Git Re-Basin): ``max_a L(a) - (L(0) + L(1)) / 2``.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from workbench.alignment import align
from workbench.cache import ResultCache, data_fingerprint, default_cache, fingerprint
from workbench.data import DataLike
from workbench.evaluation import evaluate
from workbench.figures import color_for, new_figure, paper_style
from workbench.graph import PermutationSpec, resolve_spec
from workbench.merge import (
    channel_moments,
    check_compatible,
    has_batchnorm,
    load_interpolation_,
    repair_,
    repair_points,
    reset_bn_,
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
        return np.linspace(0.0, 1.0, alphas)
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


def _chord_excess(alphas: np.ndarray, values: np.ndarray) -> float:
    """max over alpha in [0, 1] of values(alpha) minus the chord between values(0), values(1)."""
    v0, v1 = _endpoint(alphas, values, 0.0), _endpoint(alphas, values, 1.0)
    inside = (alphas >= 0) & (alphas <= 1)
    chord = (1 - alphas[inside]) * v0 + alphas[inside] * v1
    return float(np.max(values[inside] - chord))


@dataclass(frozen=True)
class LMCCurve:
    """Loss and accuracy at each ``alpha`` on the path from model A (0) to model B (1).

    ``split`` names the data it was evaluated on, ``bn`` the BatchNorm handling
    (``None`` or ``"reset"``) and ``label`` the method that produced the endpoints.
    """

    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    split: str = "data"
    bn: str | None = None
    label: str = "naive"
    settings: dict = field(default_factory=dict)

    @property
    def diverged(self) -> np.ndarray:
        """Alphas at which the loss is NaN or infinite (the interpolated model blew up)."""
        return self.alphas[~np.isfinite(self.loss)]

    @property
    def barrier(self) -> float:
        """Loss barrier: the curve's height above the chord between its endpoints."""
        return _chord_excess(self.alphas, self.loss)

    @property
    def rebasin_barrier(self) -> float:
        """Git Re-Basin's loss barrier: ``max L(alpha) - (L(0) + L(1)) / 2``."""
        mean_end = (_endpoint(self.alphas, self.loss, 0) + _endpoint(self.alphas, self.loss, 1)) / 2
        inside = (self.alphas >= 0) & (self.alphas <= 1)
        return float(np.max(self.loss[inside]) - mean_end)

    @property
    def accuracy_barrier(self) -> float:
        """Accuracy barrier: the largest drop below the chord between the endpoint accuracies."""
        return _chord_excess(self.alphas, -self.accuracy)

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
        """The barriers and endpoint/midpoint accuracies as one flat record."""
        record: dict[str, float | str] = {
            "label": self.label,
            "bn": self.bn or "none",
            "split": self.split,
            "barrier": self.barrier,
            "rebasin_barrier": self.rebasin_barrier,
            "accuracy_barrier": self.accuracy_barrier,
            "accuracy_a": _endpoint(self.alphas, self.accuracy, 0),
            "accuracy_b": _endpoint(self.alphas, self.accuracy, 1),
        }
        if 0.5 in self.alphas:
            record["midpoint_accuracy"] = self.midpoint_accuracy
        return record

    def plot(self, metric: str = "loss", ax: Axes | None = None) -> Figure:
        """Plot this curve; see :func:`plot_curves`."""
        return plot_curves([self], metric=metric, ax=ax)


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
    batch_size: int = 500,
    progress: bool = True,
    cache: ResultCache | bool = True,
) -> dict[str, LMCCurve]:
    """Curves on several named splits at once (e.g. ``{"train": ..., "test": ...}``).

    Each interpolated model is built once into a single working copy and, with
    ``bn="reset"`` or ``bn="repair"``, corrected once on ``bn_data`` (default: the first
    split, which should be training data), then evaluated on every split. REPAIR measures
    the endpoints' statistics once for the whole curve; ``spec`` saves re-tracing.

    Results are cached on disk, keyed by the content of both models and of every dataset
    and by all settings, so a re-run is a file read and a changed model never hits a stale
    entry; ``cache=False`` bypasses it (data given as DataLoaders is never cached).
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
    store = default_cache() if cache is True else (cache or ResultCache(enabled=False))
    models = [fingerprint(model_a), fingerprint(model_b)]
    settings = {
        "batch_size": batch_size,
        "bn_data": "given" if bn_data is not None else "first split",
        "models": models,
    }
    key = None
    if store.enabled:
        key = store.key(
            models=models,
            data={split: data_fingerprint(d) for split, d in data.items()} or None,
            bn_data=data_fingerprint(reset_data) if bn else "-",
            alphas=points.tolist(),
            bn=bn or "none",
            batch_size=batch_size,
        )
        if any(data_fingerprint(d) is None for d in data.values()):
            key = None
    hit = store.load("lmc", key)
    if hit is not None:
        return {
            split: LMCCurve(
                points,
                hit[0][f"{split}/loss"].double().numpy(),
                hit[0][f"{split}/accuracy"].double().numpy(),
                split,
                bn,
                label,
                settings,
            )
            for split in data
        }
    states = [model_a.state_dict(), model_b.state_dict()]
    work = copy.deepcopy(model_a)
    if bn == "repair":
        at = repair_points(resolve_spec(model_a, spec, data=reset_data))
        targets = [channel_moments(m, reset_data, at, batch_size) for m in (model_a, model_b)]
    results = {split: ([], []) for split in data}
    for alpha in tqdm(points, desc=f"LMC {label}", disable=not progress, leave=False):
        load_interpolation_(work, *states, alpha)
        if bn == "reset":
            reset_bn_(work, reset_data, batch_size)
        elif bn == "repair":
            repair_(work, targets, [1.0 - alpha, alpha], reset_data, at, batch_size)
        for split, split_data in data.items():
            metrics = evaluate(work, split_data, batch_size)
            results[split][0].append(metrics.loss)
            results[split][1].append(metrics.accuracy)
    curves = {
        split: LMCCurve(points, np.array(loss), np.array(acc), split, bn, label, settings)
        for split, (loss, acc) in results.items()
    }
    tensors = {}
    for split, curve in curves.items():
        tensors[f"{split}/loss"] = torch.from_numpy(curve.loss)
        tensors[f"{split}/accuracy"] = torch.from_numpy(curve.accuracy)
    store.store("lmc", key, tensors, {"label": label, "bn": bn})
    return curves


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
    batch_size: int = 500,
    progress: bool = True,
    cache: ResultCache | bool = True,
) -> LMCCurve:
    """Loss and accuracy of ``(1 - alpha) A + alpha B`` on ``data`` for each alpha.

    ``alphas`` is a number of evenly spaced points in [0, 1] or explicit values (outside
    [0, 1] extrapolates; barriers use the points inside). ``bn="reset"`` recomputes
    BatchNorm statistics of every interpolated model on ``bn_data`` (default ``data``);
    ``bn="repair"`` applies REPAIR instead (also for networks without BatchNorm).
    The models are not modified.
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
        batch_size=batch_size,
        progress=progress,
        cache=cache,
    )[split]


def curves_frame(curves: Sequence[LMCCurve]) -> pd.DataFrame:
    """All curves as one tidy table (for CSV export or seaborn)."""
    return pd.concat([c.to_frame() for c in curves], ignore_index=True)


def barrier_table(curves: Sequence[LMCCurve]) -> pd.DataFrame:
    """One row per curve with both barrier definitions and the accuracies."""
    return pd.DataFrame([c.summary() for c in curves])


_METRIC_LABELS = {"loss": "Cross-entropy loss", "accuracy": "Accuracy (%)"}


def plot_curves(
    curves: Sequence[LMCCurve],
    metric: str = "loss",
    ax: Axes | None = None,
    title: str | None = None,
    legend: bool = True,
) -> Figure:
    """Plot ``metric`` ("loss" or "accuracy") against alpha for each curve.

    Colour follows the method label (a lighter shade after BatchNorm reset), line style
    the split (solid for train, dashed otherwise), markers the BatchNorm handling. Points where the loss diverged (NaN) are
    marked with a cross on the axis rather than left as silent gaps.
    """
    if metric not in _METRIC_LABELS:
        raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}.")
    if not curves:
        raise ValueError("Nothing to plot: no curves given.")
    if ax is None:
        fig, ax = new_figure()
    else:
        fig = ax.figure
    with paper_style():
        for index, curve in enumerate(curves):
            values = curve.loss if metric == "loss" else 100 * curve.accuracy
            name = curve.label + {None: "", "reset": " + RESET", "repair": " + REPAIR"}[curve.bn]
            if len({c.split for c in curves}) > 1:
                name += f" ({curve.split})"
            ax.plot(
                curve.alphas,
                values,
                color=color_for(curve.label, index, light=curve.bn is not None),
                linestyle="-" if curve.split == "train" else "--",
                marker={None: "s", "reset": "o", "repair": "^"}[curve.bn],
                markerfacecolor=None if curve.bn is None else "white",
                label=name,
            )
            bad = curve.diverged
            if len(bad):
                ax.plot(
                    bad,
                    np.zeros_like(bad),
                    "x",
                    color="black",
                    clip_on=False,
                    label=f"{name}: diverged",
                )
        ax.set_xlabel(r"Interpolation $\alpha$ (A $\rightarrow$ B)")
        ax.set_ylabel(_METRIC_LABELS[metric])
        if title:
            ax.set_title(title)
        if legend:
            ax.legend(loc="best")
    return fig


def write_csv(curves: Sequence[LMCCurve], path: str | Path) -> Path:
    """Write the curves' tidy table to ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    curves_frame(curves).to_csv(path, index=False)
    return path


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
    """Curves between every pair of ``models`` on every split of ``data``, the second model
    of each pair aligned to the first by ``method`` (``"none"``, ``"weight"``,
    ``"activation"``, ``"cca"``; matching data: ``bn_data``, else the first split). Each
    curve's settings record its pair. Summarize them with :func:`plot_bands`."""
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"Need at least 2 models for pairs, got {len(models)}.")
    check_compatible(models)
    match_data = bn_data if bn_data is not None else next(iter(data.values()))
    spec = resolve_spec(models[0], None, data=match_data)
    pairs = list(itertools.combinations(range(len(models)), 2))
    curves = []
    for i, j in tqdm(pairs, desc=f"pairs ({method})", disable=not progress):
        aligned = align(models[i], models[j], method, data=match_data, spec=spec)
        found = lmc_curves(
            models[i],
            aligned,
            data,
            alphas,
            bn,
            bn_data=bn_data,
            label=method,
            spec=spec,
            batch_size=batch_size,
            progress=False,
            cache=cache,
        )
        for curve in found.values():
            curves.append(dataclasses.replace(curve, settings={**curve.settings, "pair": (i, j)}))
    return curves


def plot_bands(
    curves: Sequence[LMCCurve],
    metric: str = "loss",
    band: str = "std",
    ax: Axes | None = None,
    title: str | None = None,
) -> Figure:
    """The mean curve of each (method, BN handling, split) over its pairs, with a band:
    ``band="std"`` (mean +/- one standard deviation) or ``"range"`` (min to max)."""
    if metric not in _METRIC_LABELS:
        raise ValueError(f"metric must be 'loss' or 'accuracy', got {metric!r}.")
    if band not in ("std", "range"):
        raise ValueError(f"band must be 'std' or 'range', got {band!r}.")
    if not curves:
        raise ValueError("Nothing to plot: no curves given.")
    groups: dict[tuple, list[LMCCurve]] = {}
    for curve in curves:
        groups.setdefault((curve.label, curve.bn, curve.split), []).append(curve)
    if ax is None:
        fig, ax = new_figure()
    else:
        fig = ax.figure
    with paper_style():
        for index, ((label, bn, split), members) in enumerate(groups.items()):
            if any(not np.array_equal(c.alphas, members[0].alphas) for c in members):
                raise ValueError(f"Curves of {label!r} ({split}) use different alphas.")
            values = np.stack([c.loss if metric == "loss" else 100 * c.accuracy for c in members])
            mean = values.mean(0)
            if band == "std":
                low, high = mean - values.std(0), mean + values.std(0)
            else:
                low, high = values.min(0), values.max(0)
            color = color_for(label, index, light=bn is not None)
            name = label + {None: "", "reset": " + RESET", "repair": " + REPAIR"}[bn]
            name += f" ({split}, {len(members)} pairs)"
            alphas = members[0].alphas
            ax.plot(
                alphas, mean, color=color, linestyle="-" if split == "train" else "--", label=name
            )
            ax.fill_between(alphas, low, high, color=color, alpha=0.2, linewidth=0)
        ax.set_xlabel(r"Interpolation $\alpha$ (A $\rightarrow$ B)")
        ax.set_ylabel(_METRIC_LABELS[metric])
        if title:
            ax.set_title(title)
        ax.legend(loc="best")
    return fig
