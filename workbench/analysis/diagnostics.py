"""Per-layer diagnostics of an alignment.

* :func:`matched_correlations`: for each permutation group, how well B's units correlate
  with A's before alignment (unit i with unit i) and after (unit i with the unit matched
  to it): the diagonal of the cross-correlation block of the two models' activations
  (:func:`workbench.alignment.collect_statistics`) under the identity and under the
  permutation. One statistics pass serves both, and activation matching itself.
* :func:`partial_alignment`: which layers matter, from the barrier when only the first k
  groups (in graph order) take the permutation and the rest keep B's order. Every such
  partial permutation leaves B's function unchanged, so the differences are due to
  alignment alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn
from tqdm.auto import tqdm

from workbench.alignment import (
    apply_permutation,
    collect_statistics,
    get_method,
    match,
    matching_methods,
)
from workbench.analysis.engine import check_data
from workbench.analysis.lmc import LMCCurve, barrier_table, cached_curves, lmc_curves
from workbench.cache import ResultCache, resolve_cache
from workbench.data import DataLike
from workbench.figures import color_for, figure_for, paper_style
from workbench.fingerprints import fingerprints
from workbench.graph import PermutationSpec, resolve_spec
from workbench.merging import check_bn, get_bn
from workbench.results import Result
from workbench.validation import check_models
from workbench.vocabulary import keyword_only

__all__ = [
    "MatchedCorrelations",
    "PartialAlignment",
    "graph_order",
    "matched_correlations",
    "partial_alignment",
    "plot_matched_correlations",
    "plot_partial_alignment",
]


def graph_order(spec: PermutationSpec) -> list[str]:
    """The spec's groups in the order their first producing layer runs in the graph."""
    position = {point.layer: i for i, point in enumerate(spec.layers)}

    def first(name: str) -> float:
        producers = spec.groups[name].producers
        return min((position.get(p, np.inf) for p in producers), default=np.inf)

    names = list(spec.groups)
    return sorted(names, key=lambda name: (first(name), names.index(name)))


# ---------------------------------------------------------------------------------------
# Correlations of matched units


@dataclass(frozen=True)
class MatchedCorrelations(Result):
    """Per group (graph order), the correlation of each of A's units with B's unit of the
    same index (``before``) and with B's unit that ``method`` matched to it (``after``)."""

    method: str
    groups: list[str]
    before: dict[str, np.ndarray]
    after: dict[str, np.ndarray]
    settings: dict = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        """Tidy: one row per (group, unit, stage) with the correlation."""
        frames = [
            pd.DataFrame(
                {
                    "group": group,
                    "unit": np.arange(len(values)),
                    "stage": stage,
                    "correlation": values,
                }
            )
            for group in self.groups
            for stage, values in (("before", self.before[group]), ("after", self.after[group]))
        ]
        return pd.concat(frames, ignore_index=True)

    def to_frame(self) -> pd.DataFrame:
        """The tidy table (see :attr:`table`)."""
        return self.table

    def summary(self) -> pd.DataFrame:
        """One row per group: units, mean and median correlation before and after."""
        return pd.DataFrame(
            [
                {
                    "group": group,
                    "units": len(self.before[group]),
                    "mean_before": float(np.mean(self.before[group])),
                    "mean_after": float(np.mean(self.after[group])),
                    "median_before": float(np.median(self.before[group])),
                    "median_after": float(np.median(self.after[group])),
                }
                for group in self.groups
            ]
        )

    def plot(self, ax: Axes | None = None) -> Figure:
        """Box plots per group; see :func:`plot_matched_correlations`."""
        return plot_matched_correlations(self, ax=ax)


@keyword_only(("data", "method", "spec"))
def matched_correlations(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    data: DataLike,
    method: str = "activation",
    spec: PermutationSpec | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    cache: ResultCache | bool = True,
) -> MatchedCorrelations:
    """Correlations of matched units before and after aligning ``model_b`` to ``model_a``
    by ``method`` (a registered method that pairs units: ``"weight"``, ``"activation"``,
    ...), measured on ``data`` in one streaming pass, which a method that takes activation
    statistics reuses. Groups without observable activations are left out. Cached on disk
    by the models' and data's content (``cache=False`` bypasses)."""
    choices = matching_methods()
    if method not in choices:
        raise ValueError(
            f"method must be {' or '.join(map(repr, choices))} (a permutation to diagnose), "
            f"got {method!r}."
        )
    check_models([model_a, model_b])
    check_data(model_a, {getattr(data, "split", "data"): data})
    store = resolve_cache(cache)
    key = store.key(
        models=[model_a, model_b],
        method=get_method(method),
        data=data,
        spec=spec,
        batch_size=batch_size,
    )

    def compute() -> tuple[dict[str, torch.Tensor], dict]:
        found_spec = resolve_spec(model_a, spec, data=data)
        stats = collect_statistics(
            [model_a, model_b], data=data, spec=found_spec, batch_size=batch_size, progress=progress
        )
        reuse = {"statistics": stats} if get_method(method).uses_statistics else {}
        perm = match(
            model_a, model_b, method=method, data=data, spec=found_spec, **reuse
        ).permutation
        tensors = {}
        for group in graph_order(found_spec):
            if group in stats:
                correlation = stats[group].correlation(0, 1)
                units = torch.arange(len(correlation))
                tensors[f"{group}/before"] = correlation[units, units].double()
                tensors[f"{group}/after"] = correlation[units, perm[group]].double()
        meta = {
            "groups": [g for g in graph_order(found_spec) if g in stats],
            "models": fingerprints([model_a, model_b]),
            "batch_size": batch_size,
        }
        return tensors, meta

    def complete(found: dict[str, torch.Tensor], meta: dict) -> bool:
        """A whole entry: both curves of every group it names (a foreign one is a miss)."""
        groups = meta.get("groups")
        return isinstance(groups, list) and all(
            f"{g}/{when}" in found for g in groups for when in ("before", "after")
        )

    tensors, meta = store.get_or_compute("correlations", key, compute, valid=complete)
    groups = meta["groups"]
    return MatchedCorrelations(
        method,
        groups,
        {g: tensors[f"{g}/before"].numpy() for g in groups},
        {g: tensors[f"{g}/after"].numpy() for g in groups},
        meta,
    )


def plot_matched_correlations(result: MatchedCorrelations, ax: Axes | None = None) -> Figure:
    """Box plots of the matched units' correlations per group (graph order), before
    alignment (the naive colour) and after (the method's colour); boxes span the quartiles,
    whiskers 1.5 times the interquartile range, and the dot is the mean."""
    fig, ax = figure_for(ax, aspect=0.6)
    groups = result.groups
    with paper_style():
        for offset, stage, color in (
            (-0.18, "before", color_for("naive")),
            (0.18, "after", color_for(result.method)),
        ):
            values = [getattr(result, stage)[g] for g in groups]
            positions = [i + offset for i in range(len(groups))]
            parts = ax.boxplot(
                values, positions=positions, widths=0.3, patch_artist=True, showfliers=False
            )
            for box in parts["boxes"]:
                box.set_facecolor(color)
                box.set_alpha(0.8)
            for median in parts["medians"]:
                median.set_color("black")
            ax.plot(positions, [np.mean(v) for v in values], ".", color="black")
            label = "identity" if stage == "before" else f"{result.method} matching"
            ax.plot([], [], "s", color=color, label=label)
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
        ax.set_ylabel("Correlation of matched units")
        ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.0)
        ax.legend(loc="lower left")
    return fig


# ---------------------------------------------------------------------------------------
# Barrier with the first k groups aligned


@dataclass(frozen=True)
class PartialAlignment(Result):
    """The curves with the first k groups aligned, k = 0 .. len(groups) (graph order);
    each curve's ``settings["groups_aligned"]`` is its k."""

    method: str
    groups: list[str]
    curves: list[LMCCurve]
    settings: dict = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        """One row per (k, split): the last group aligned, both barriers, accuracies."""
        table = barrier_table(self.curves, settings=("groups_aligned",))
        names = ["-", *self.groups]
        table.insert(1, "last_group", [names[k] for k in table["groups_aligned"]])
        return table

    def to_frame(self) -> pd.DataFrame:
        """The table (see :attr:`table`)."""
        return self.table

    def plot(self, metric: str = "barrier", ax: Axes | None = None) -> Figure:
        """The barrier against k; see :func:`plot_partial_alignment`."""
        return plot_partial_alignment(self, metric, ax=ax)


@keyword_only(("data", "eval_data", "method", "bn", "alphas", "spec", "progress"))
def partial_alignment(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    data: DataLike,
    eval_data: DataLike | Mapping[str, DataLike],
    method: str = "weight",
    bn: str | None = "reset",
    alphas: int | Sequence[float] = 5,
    spec: PermutationSpec | None = None,
    progress: bool = True,
    batch_size: int | None = None,
    cache: ResultCache | bool = True,
) -> PartialAlignment:
    """Curves on ``eval_data`` (a dataset or named splits) when only the first k groups of
    the spec (graph order) take ``method``'s permutation of ``model_b``, for every k from
    0 (naive) to all groups (full alignment). ``data`` is used for matching and for the
    ``bn`` correction. Cached on disk by content (``cache=False`` bypasses)."""
    check_models([model_a, model_b])
    bn = check_bn(bn, model_a)
    splits = (
        dict(eval_data)
        if isinstance(eval_data, Mapping)
        else {getattr(eval_data, "split", "data"): eval_data}
    )
    store = resolve_cache(cache)
    key = store.key(
        models=[model_a, model_b],
        method=get_method(method),
        data=data,
        eval_data=splits,
        bn=get_bn(bn),
        alphas=alphas,
        spec=spec,
        batch_size=batch_size,
    )
    spec = resolve_spec(model_a, spec, data=data)
    names = graph_order(spec)

    def compute() -> list[LMCCurve]:
        perm = match(model_a, model_b, method=method, data=data, spec=spec).permutation
        curves = []
        for k in tqdm(range(len(names) + 1), desc="partial alignment", disable=not progress):
            partial = {
                name: perm[name] if name in names[:k] else torch.arange(group.size)
                for name, group in spec.groups.items()
            }
            found = lmc_curves(
                model_a,
                apply_permutation(model_b, spec=spec, perm=partial),
                eval_data=splits,
                data=data,
                alphas=alphas,
                bn=bn,
                label=method,
                spec=spec,
                batch_size=batch_size,
                progress=False,
                cache=False,
            )
            curves += [
                dataclasses.replace(c, settings={**c.settings, "groups_aligned": k})
                for c in found.values()
            ]
        return curves

    curves = cached_curves(store, "partial-alignment", key, compute)
    settings = {"models": fingerprints([model_a, model_b]), "bn": bn}
    return PartialAlignment(method, names, curves, settings)


def plot_partial_alignment(
    result: PartialAlignment, metric: str = "barrier", ax: Axes | None = None
) -> Figure:
    """``metric`` (``"barrier"``, ``"accuracy_barrier"`` or ``"midpoint_accuracy"``)
    against the number of groups aligned, labelled with the last group aligned; one line
    per split (dashed for test), in the method's colour."""
    labels = {
        "barrier": ("Loss barrier", 1.0),
        "accuracy_barrier": ("Accuracy barrier (points)", 100.0),
        "midpoint_accuracy": ("Midpoint accuracy (%)", 100.0),
    }
    if metric not in labels:
        raise ValueError(f"metric must be one of {list(labels)}, got {metric!r}.")
    fig, ax = figure_for(ax)
    table = result.table
    with paper_style():
        for split, rows in table.groupby("split", sort=False):
            ax.plot(
                rows["groups_aligned"],
                labels[metric][1] * rows[metric],
                marker="o",
                linestyle="-" if split == "train" else "--",
                color=color_for(result.method),
                label=split,
            )
        ax.set_xticks(range(len(result.groups) + 1), ["none", *result.groups])
        ax.tick_params(axis="x", labelrotation=30)
        ax.set_xlabel(f"Aligned ({result.method}) up to group")
        ax.set_ylabel(labels[metric][0])
        ax.legend(loc="best")
    return fig
