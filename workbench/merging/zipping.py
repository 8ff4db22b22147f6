"""ZipIt! (Stoica et al., "ZipIt! Merging Models from Different Tasks without Training",
ICLR 2024) as the ``kind="merge"`` method ``"zipit"``: N models merged into one.

Per group (in the spec's order), the N models' C channels each are pooled into N*C
features, and their joint correlation matrix (from one pass of
:func:`~workbench.alignment.statistics.collect_statistics`) drives a greedy matching
(:func:`zip_features`): the most correlated pair of (merged) features is merged, again and
again, until C merged features remain. Each merged feature is the mean of its
constituents. A merge may join features *between* models (the matching of permutation
methods) or *within* one model (two redundant features of one model share a merged
feature, which frees a merged feature for something the other models lack):

* a merge is *within-model* for model m when both sides already hold a feature of m; its
  score is ``within_weight`` (the paper's alpha) times the correlation (never above the correlation itself, so a
  negative one is not made more attractive), a between-model merge's is the correlation;
* each model may take part in ``floor(within_budget * (N - 1) * C / N)`` (the paper's beta)
  within-model merges (an
  equal share of a fraction ``within_budget`` of all ``(N - 1) * C`` merges): ``within_budget=0`` allows
  none, and the merge is then a matching between models only;
* a merged feature's correlation with another is the minimum over their constituents
  (complete linkage, the paper's rule).

For two models this is the paper's algorithm but for one difference: the paper weights by
``within_weight`` only merges of an already merged feature (its "repeated matching", which for two
models is always within-model, since the merged feature holds both models) and leaves a
same-model pair of single features unweighted; here every within-model merge is weighted,
and a merge of a merged feature with a model it does not hold yet is not: for N models
that is the N-way match that builds one merged feature from one feature of each model.
When ``within_budget`` leaves no budget and no between-model merge is left (possible for N >= 3:
{A1, B1}, {B2, C2}, {A2, C1} share a model pairwise), the best within-model merge is
taken anyway and counted in :attr:`ZipReport.overruns`.

Exactness: when B is A with its channels permuted, every channel and its copy correlate
exactly 1, every other pair less (unless a model holds two identical channels), so the
greedy takes the copies first, at every ``within_weight`` in [0, 1] and every ``within_budget``, for any
N, and the merged model is A's function exactly (:mod:`tests.test_zipit` checks it at
the defaults, N = 2 and 3). Within-model merges win only where a model's own channels
correlate more than ``within_weight`` times the best between-model pair.

From the matching, model i's merge matrix ``M_i`` (C x C_i, rows carrying the 1/k of a
merged feature of k constituents, so that ``sum_i M_i`` has rows summing to 1) and unmerge
matrix ``U_i`` (C_i x C, one 1 per row: each feature is used once) transform its state
(:func:`~workbench.graph.transforms.transform_state` with ``GroupMap(M_i, U_i)``), and the
merged weights are the sum over models (layer outputs no group covers, the logits, are
averaged). Groups that take only permutations (grouped or depthwise convolutions, block
structure) are matched between models only, each model to model 0 by correlation, and
listed in the report. ``stop=`` zips up to a group and keeps every model's later layers
(:mod:`workbench.merging.zipping_partial`).

Cost: one statistics pass (shared by the points of a validation search: ``merge_many``
passes its joint statistics as ``statistics=``) and per group ``(N - 1) C`` greedy steps of O((N C)^2) each.
"""

from __future__ import annotations

import copy
import difflib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workbench.alignment.group_statistics import GroupStatistics
from workbench.alignment.registry import register_method
from workbench.alignment.returned import Merged
from workbench.alignment.statistics import collect_statistics
from workbench.alignment.weight import assignment
from workbench.data import DataLike
from workbench.graph import PermutationSpec, resolve_spec
from workbench.graph.transforms import GroupMap, transform_state
from workbench.merging.many import merge_many
from workbench.merging.pipeline import MergeResult
from workbench.merging.zipping_match import correlation_of, merge_matrices, zip_features
from workbench.merging.zipping_partial import check_stop, split_models
from workbench.modules import clone
from workbench.validation import check_int, check_models, check_number, check_pass
from workbench.vocabulary import keyword_only

__all__ = [
    "DEFAULT_WITHIN_BUDGET",
    "DEFAULT_WITHIN_WEIGHT",
    "WITHIN_BUDGET_GRID",
    "WITHIN_WEIGHT_GRID",
    "ZipReport",
    "zip_features",
    "zipit",
    "zipit_merge",
]

# The grids merge_many searches on validation. A preliminary 5 x 5 search (within_weight 0, 0.25,
# ..., 1; within_budget 0, 0.125, 0.25, 0.5, 1) on 10% of mnist-5k train: the shipped pair (same
# task) scored best at within_budget = 0 (98.75%, every within_weight alike; within_budget > 0 96.2-98.75%), a pair
# trained on disjoint class halves at within_weight = 0.5 with within_budget = 0.5 (59.3%) or 0.125
# (58.8%; within_budget = 0: 54.8%, within_weight = 0 below). within_weight = 0 is left out (never best), and so is
# within_budget = 1 (never above 0.5). With within_budget = 0 within_weight changes nothing for two models.
# The defaults (zipit_merge called directly) are the shipped pair's choice.
DEFAULT_WITHIN_WEIGHT = 0.5
DEFAULT_WITHIN_BUDGET = 0.0
WITHIN_WEIGHT_GRID = (0.5, 1.0)
WITHIN_BUDGET_GRID = (0.0, 0.125, 0.5)


@dataclass
class ZipReport:
    """What a zip did: the groups zipped (``zipped``), those only permuted between models
    with why (``permuted``), the within-model merges per group and model (``within``), the
    within-model merges taken beyond the budget (``overruns``) and ``stop``."""

    zipped: list[str] = field(default_factory=list)
    permuted: dict[str, str] = field(default_factory=dict)
    within: dict[str, list[int]] = field(default_factory=dict)
    overruns: dict[str, int] = field(default_factory=dict)
    stop: str | None = None


def _permutation_only(spec: PermutationSpec, name: str) -> str | None:
    """Why group ``name`` takes only permutations (None if a general map passes it)."""
    group = spec.groups[name]
    if group.blocks != 1:
        return f"{group.blocks} blocks (a grouped convolution): permuted between models only"
    if any(ax.grouped != 1 for ax in group.axes):
        return "feeds a grouped convolution: permuted between models only"
    return None


def _maps(
    spec: PermutationSpec,
    names: Sequence[str],
    statistics: dict[str, GroupStatistics],
    num_models: int,
    within_weight: float,
    within_budget: float,
) -> tuple[list[dict[str, GroupMap]], ZipReport]:
    """Every model's GroupMaps of the groups ``names``, and the report."""
    maps: list[dict[str, GroupMap]] = [{} for _ in range(num_models)]
    report = ZipReport()
    for name in names:
        group, stats = spec.groups[name], statistics.get(name)
        reason = _permutation_only(spec, name)
        if stats is None:
            reason = "never observed (no activation to correlate): left in its order"
        if reason is None:
            corr = correlation_of(stats)
            labels, within, overruns = zip_features(
                corr, num_models, within_weight=within_weight, within_budget=within_budget
            )
            merges, unmerges = merge_matrices(labels, num_models)
            for i in range(num_models):
                maps[i][name] = GroupMap(merges[i], unmerges[i])
            report.zipped.append(name)
            report.within[name], report.overruns[name] = within, overruns
            continue
        report.permuted[name] = reason
        for i in range(num_models):
            if stats is None or i == 0:
                perm = torch.arange(group.size)
            else:
                perm = assignment(stats.correlation(0, i), group.blocks)
            matrix = torch.eye(group.size, dtype=torch.float64)[perm]
            maps[i][name] = GroupMap(matrix, matrix.T)
    return maps, report


def _combine(
    states: Sequence[dict[str, torch.Tensor]],
    spec: PermutationSpec,
    general: Sequence[str],
) -> dict[str, torch.Tensor]:
    """The sum of the transformed states: rows that a general group's merge matrices
    weight (outputs and per-channel parameters) are summed, every other entry averaged."""
    n = len(states)
    covered: dict[str, list] = {}
    for name in general:
        group = spec.groups[name]
        for ax in group.axes:
            if ax.role in ("out", "channel"):
                covered.setdefault(ax.key, []).append((ax, group.size))
    merged = copy.copy(states[0])
    for key, first in states[0].items():
        if not first.is_floating_point():
            continue
        total = sum(state[key].double() for state in states)
        weight = torch.full(first.shape, 1.0 / n, dtype=torch.float64)
        for ax, size in covered.get(key, []):
            moved = weight.movedim(ax.axis, 0)
            moved[ax.offset : ax.offset + size * ax.block] = 1.0
        merged[key] = (total * weight).to(first.dtype)
    return merged


def _check_statistics(
    statistics: dict[str, GroupStatistics], spec: PermutationSpec, num_models: int
) -> None:
    """Refuse statistics that are not those of these models' groups."""
    for name, stats in statistics.items():
        if name not in spec.groups or stats.size != spec.groups[name].size:
            raise ValueError(
                f"statistics[{name!r}] does not belong to a group of this spec; pass the "
                "joint statistics of these models (collect_statistics(models, data, spec))."
            )
        if stats.num_models != num_models:
            raise ValueError(
                f"statistics[{name!r}] holds {stats.num_models} models, and {num_models} "
                "are zipped; pass the joint statistics of all of them."
            )


def check_zip_options(
    within_weight: Any, within_budget: Any, stop: Any, spec: PermutationSpec | None
) -> None:
    """Refuse bad ``within_weight``/``within_budget`` (a number or a sequence of numbers in [0, 1]) and an
    unknown ``stop`` group (with the closest name), before any data pass."""
    for name, value in (("within_weight", within_weight), ("within_budget", within_budget)):
        values = value if isinstance(value, (list, tuple)) else [value]
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError(f"{name} is an empty sequence; pass a value in [0, 1] or None.")
        for v in values:
            if v is not None:
                check_number(name, v, low=0.0, high=1.0)
    if stop is None or spec is None:
        return
    names = list(spec.groups)
    if not isinstance(stop, str) or stop not in spec.groups:
        close = difflib.get_close_matches(str(stop), names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"stop must be the name of a group (the last one to zip), one of {names}, got "
            f"{stop!r}.{hint}"
        )


_RENAMED = {"alpha": "within_weight", "beta": "within_budget"}  # the paper's letters


@register_method(
    "zipit",
    kind="merge",
    needs_data=True,
    preserves_function=False,
    search={"within_weight": WITHIN_WEIGHT_GRID, "within_budget": WITHIN_BUDGET_GRID},
    renamed=_RENAMED,
    defaults={"within_weight": DEFAULT_WITHIN_WEIGHT, "within_budget": DEFAULT_WITHIN_BUDGET},
    uses_statistics=True,
    color="#44AA99",
    marker="h",
)
@keyword_only(("spec", "data"), renamed=_RENAMED)
def zipit_merge(
    models: Sequence[nn.Module],
    *,
    spec: PermutationSpec | None,
    data: DataLike,
    within_weight: float = DEFAULT_WITHIN_WEIGHT,
    within_budget: float = DEFAULT_WITHIN_BUDGET,
    stop: str | None = None,
    statistics: dict[str, GroupStatistics] | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    seed: int = 0,
) -> Merged:
    """The ZipIt! merge of ``models`` (N >= 2, one architecture) on ``data`` (module
    docstring), before BatchNorm handling: reset its statistics (RESET, as
    :func:`~workbench.merge_many` does) before use. ``within_weight`` in [0, 1] weights
    within-model merges, ``within_budget`` in [0, 1] is their budget; ``stop`` the last group to
    zip (None: all), after which every model keeps its own layers
    (:func:`~workbench.merging.zipping_partial.split_models`). Returns the merged model and
    its :class:`ZipReport` (``.model``, ``.report``); groups only permuted are also warned
    about.
    ``statistics``: the joint statistics of ``models`` on ``data``
    (:func:`~workbench.alignment.statistics.collect_statistics`), when the caller has them.
    ``seed`` is accepted for the registry's uniform call; the merge is deterministic.
    Inputs are not modified."""
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"Need at least 2 models to zip, got {len(models)}.")
    check_models(models)
    check_zip_options(within_weight, within_budget, None, None)
    check_int("seed", seed)
    check_pass(data, batch_size, max_batches)
    spec = resolve_spec(models[0], spec, data=data)
    check_zip_options(within_weight, within_budget, stop, spec)
    names = list(spec.groups)
    if stop is not None:
        names = names[: names.index(stop) + 1]
        check_stop(models[0], spec, names)
    if statistics is None:
        statistics = collect_statistics(
            models, data=data, spec=spec, groups=names, batch_size=batch_size, max_batches=max_batches,
            progress=progress,
        )  # fmt: skip
    else:
        _check_statistics(statistics, spec, len(models))
    maps, report = _maps(spec, names, statistics, len(models), within_weight, within_budget)
    report.stop = stop
    if report.permuted:
        listed = "; ".join(f"{k}: {v}" for k, v in report.permuted.items())
        warnings.warn(f"ZipIt! could not zip every group ({listed}).", stacklevel=2)
    states = [transform_state(m.state_dict(), spec, maps[i]) for i, m in enumerate(models)]
    merged = clone(models[0])
    merged.load_state_dict(_combine(states, spec, report.zipped))
    if stop is not None:
        own = []
        for model, state in zip(models, states, strict=True):
            transformed = clone(model)
            transformed.load_state_dict(state)
            own.append(transformed)
        merged = split_models(merged, own, spec, names)
    return Merged(merged.eval(), report)


@keyword_only(("data",), renamed=_RENAMED)
def zipit(
    models: Sequence[nn.Module],
    *,
    data: DataLike,
    within_weight: float | Sequence[float] | None = None,
    within_budget: float | Sequence[float] | None = None,
    stop: str | None = None,
    bn: str | None = "reset",
    val_data: DataLike | None = None,
    val_fraction: float = 0.1,
    spec: PermutationSpec | None = None,
    **kwargs: Any,
) -> MergeResult:
    """ZipIt! of ``models`` on ``data`` (training data), BatchNorm reset (``bn``), through
    :func:`~workbench.merge_many`: ``within_weight`` and ``within_budget`` left out (``None``) or given as
    several values are chosen on a validation split (``val_data``, or a ``val_fraction``
    of ``data``; never test data), and ``result.report.hyperparameters`` says which;
    ``result.report.details`` is the :class:`ZipReport`. ``stop``: the last group to zip (a
    multi-head model after it). Other options as in ``merge_many``."""
    check_zip_options(within_weight, within_budget, None, None)
    if len(list(models)) < 2:
        raise ValueError(f"Need at least 2 models to zip, got {len(list(models))}.")
    check_models(models)
    if stop is not None:
        check_pass(data, 2)
        spec = resolve_spec(next(iter(models)), spec, data=data)
        check_zip_options(within_weight, within_budget, stop, spec)
    return merge_many(
        models, data=data, method="zipit", within_weight=within_weight, within_budget=within_budget, stop=stop, bn=bn, val_data=val_data,
        val_fraction=val_fraction, spec=spec, **kwargs,
    )  # fmt: skip
