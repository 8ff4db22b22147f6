"""Merging N >= 2 models: align them all into one neuron order, average, fix statistics.

Any registered alignment method (``method=``, :func:`workbench.methods`) works:

* ``"none"``: plain weight averaging (the baseline every method must beat);
* a method with an N-model merger uses it: ``"weight"`` runs MergeMany (Ainsworth et al.,
  Git Re-Basin, Algorithm 3: each model in turn is weight-matched to the average of the
  others; no reference model and no data needed for the alignment);
* every other method aligns each model to the reference: ``"activation"`` by activation
  matching, ``"cca"`` by CCA's linear maps (CCA Merge, Horoi et al., 2024);
* a method of kind ``"merge"`` (ZipIt!, NP Merge) merges all the models itself; BatchNorm
  handling follows.

Hyperparameters are chosen on a validation split carved from ``data`` (never on test
data): the reference model with ``reference="best"``, and the hyperparameters a method
declares a grid for (CCA's ridge ``gamma``) when the call does not fix them, by one shared
search (:func:`workbench.tuning.validation_search`). :func:`merge_many` returns a
:class:`MergeResult`: the merged model and a :class:`MergeReport` of what was chosen.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

from torch import nn

from workbench.alignment.cca import GAMMA_GRID
from workbench.alignment.group_statistics import GroupStatistics
from workbench.alignment.keywords import accepted_options
from workbench.alignment.options import renamed_options, split_options
from workbench.alignment.registry import AlignmentMethod, get_method, pairwise_methods
from workbench.alignment.statistics import collect_statistics
from workbench.data import DataLike
from workbench.evaluation import evaluate
from workbench.graph import PermutationSpec, resolve_spec
from workbench.graph.transforms import general_groups
from workbench.merging.pipeline import (
    MergeReport,
    MergeResult,
    align_all,
    check_data_arguments,
    check_inputs,
    fix_statistics,
    validation_split,
)
from workbench.merging.renorm import check_bn, get_bn
from workbench.merging.weights import average
from workbench.tuning import grid_points, validation_search
from workbench.validation import check_choice, check_int
from workbench.vocabulary import keyword_only, warn_former

__all__ = ["GAMMA_GRID", "MERGES", "cca_merge", "merge_many"]

MERGES = ("average", "learned")


@keyword_only(("data", "method"))
def merge_many(
    models: Sequence[nn.Module],
    *,
    data: DataLike | None = None,
    method: str = "weight",
    reference: int | str = 0,
    bn: str | None = "reset",
    val_data: DataLike | None = None,
    val_fraction: float = 0.1,
    spec: PermutationSpec | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    max_batches: int | None = None,
    progress: bool = True,
    merge: str = "average",
    **options: Any,
) -> MergeResult:
    """One model merged from ``models`` (N >= 2) by ``method`` (see module docstring):
    ``result.model``, and ``result.report`` saying what was chosen.

    ``data`` (training data) feeds the activation statistics and the BatchNorm handling
    ``bn``, a registered BatchNorm handling (:func:`~workbench.bn_modes`: ``"reset"``:
    RESET, ``"repair"``: REPAIR towards the mean of the aligned models, ``"none"``;
    ``None`` is ``"none"``). ``reference`` is the index of the model the others are aligned to,
    or ``"best"``: the most accurate on the validation split.

    ``options`` go to the method (``seed``, ``batch_size``, ``max_batches`` and
    ``progress`` too, where it takes them); an option the method does not take is an
    error before any work (it would run with its default in silence), which names the
    methods that take it (:func:`~workbench.compare_methods` configures several methods
    in one call and gives each its own). A hyperparameter the method declares a grid for
    is fixed by a value (``gamma=0.1``), searched over given values (``gamma=(0.1, 1.0)``)
    or, when left out or ``None``, over the declared grid, by the merged model's
    validation accuracy. A method's former option names (CCA's ``gammas=``) still work,
    with a ``FutureWarning``. The
    validation split is ``val_data`` or a stratified ``val_fraction`` of ``data``, held
    out of everything else. Inputs are not modified.

    A method of kind ``"merge"`` (:func:`~workbench.alignment.registry.pairwise_methods`
    lists the others) is called once per point of the search with all the models and
    returns the merged model; ``bn`` then applies to it (a handling that needs aligned
    endpoints, REPAIR, cannot).

    ``merge="learned"`` is the former spelling of ``method="np_merge", align=method``
    (NP Merge, :mod:`~workbench.merging.learned_method`); it works for one more release,
    with a ``FutureWarning``.
    """
    check_choice("merge", merge, MERGES)
    found = get_method(method)
    options = renamed_options(found, options)
    if merge == "learned":
        method, found, options = _learned(found, options)
    if found.kind == "merge":
        check_bn(
            bn, no_endpoints=f"method={found.name!r} merges the models into a space of its own"
        )
    started = time.perf_counter()
    models = list(models)
    bn = check_inputs(models, bn, options, found.name, any_width=found.any_width)
    if isinstance(reference, str) and reference != "best":
        raise ValueError(
            f"reference must be 'best' or a model index in [0, {len(models) - 1}], got "
            f"{reference!r}."
        )
    if reference != "best":
        reference = check_int("reference", reference, 0, len(models) - 1)
    check_int("seed", seed)
    if batch_size is not None:
        check_int("batch_size", batch_size, minimum=1)
    check_data_arguments(models[0], data, val_data, val_fraction, max_batches)
    points = grid_points(found.search_space(options))
    needs_val = reference == "best" or len(points) > 1
    if data is None and (found.needs_data or get_bn(bn).needs_data or needs_val):
        raise ValueError(f"method={found.name!r} with bn={bn!r} needs data (training data).")
    if needs_val:
        data, val_data = validation_split(data, val_data, val_fraction)
    if reference == "best":
        scores = [evaluate(m, eval_data=val_data, batch_size=batch_size).accuracy for m in models]
        reference = max(range(len(models)), key=scores.__getitem__)
    spec = resolve_spec(models[reference], spec, data=data)
    common = {
        "seed": seed,
        "batch_size": batch_size,
        "max_batches": max_batches,
        "progress": progress,
        **options,
    }
    statistics: dict[int, dict[str, GroupStatistics]] = {}
    joint: dict[str, GroupStatistics] = {}  # of all the models, for a merge method
    details: dict[str, Any] = {}  # a merge method's own report, per point of the search

    def build(point: dict[str, Any]) -> nn.Module:
        if found.kind == "merge":  # one that takes bn= handles BatchNorm itself
            if found.uses_statistics and not joint:  # one pass for all points of the search
                passes = {k: common[k] for k in ("batch_size", "max_batches", "progress")}
                joint.update(collect_statistics(models, data=data, spec=spec, **passes))
            extra = {"statistics": joint} if found.uses_statistics else {}
            given = {**common, "bn": bn, "reference": reference, **point, **extra}
            given.update(val_data=val_data, val_fraction=val_fraction)
            given = accepted_options(found.function, given)
            merged = found.merge(models, spec, data, **given)
            details[repr(point)] = merged.report
            if "bn" in given:
                return merged.model
            return fix_statistics(merged.model, [], bn, data, spec, batch_size, max_batches)
        aligned = align_all(models, reference, found, data, spec, {**common, **point}, statistics)
        merged = average(aligned)
        return fix_statistics(merged, aligned, bn, data, spec, batch_size, max_batches)

    desc = f"{found.name}: {', '.join(found.search)}"
    search = validation_search(
        build, points, val_data, batch_size=batch_size, progress=progress, desc=desc
    )
    report = MergeReport(
        found.name,
        len(models),
        reference,
        bn,
        gamma=search.point.get("gamma"),
        validation=search.scores,
        permuted_groups=_permuted_groups(found, models[reference], spec),
        seconds=time.perf_counter() - started,
        hyperparameters=search.point,
        details=details.get(repr(search.point)),
    )
    return MergeResult(search.model, report)


def _learned(
    aligner: AlignmentMethod, options: dict[str, Any]
) -> tuple[str, AlignmentMethod, dict[str, Any]]:
    """``merge="learned"`` with ``aligner``, in the current spelling: the method
    ``"np_merge"``, ``align=`` the aligner, the aligner's own options in ``align_options``
    (a ``FutureWarning`` says so)."""
    if aligner.kind == "merge":
        raise ValueError(
            f"merge='learned' learns how to combine aligned models, and method="
            f"{aligner.name!r} merges them itself: align with one of {pairwise_methods()}."
        )
    warn_former(
        f"merge_many(..., {aligner.name!r}, merge='learned') is now merge_many(..., "
        f"'np_merge', align={aligner.name!r}) with NP Merge's options unprefixed (steps=, "
        "lr=, ...) and the alignment's in align_options=; the former spelling will stop "
        "working in the next release."
    )
    learner = get_method("np_merge")
    with warnings.catch_warnings():  # one warning for the whole former spelling
        warnings.simplefilter("ignore", FutureWarning)
        options = renamed_options(learner, options)
    own, theirs = split_options(learner.name, options)
    return learner.name, learner, {**own, "align": aligner.name, "align_options": theirs}


def _permuted_groups(
    method: AlignmentMethod, model: nn.Module, spec: PermutationSpec
) -> dict[str, str]:
    """The groups a linear method can only permute, with why (none for permutations)."""
    if method.kind != "linear" or method.any_width:  # GroupMaps carry per-channel parameters
        return {}
    general = general_groups(model, spec=spec)
    reason = "holds per-channel parameters a general linear map cannot pass"
    return {name: reason for name in spec.groups if name not in general}


@keyword_only(("data", "gamma"))
def cca_merge(
    models: Sequence[nn.Module],
    *,
    data: DataLike,
    gamma: float | None = None,
    bn: str | None = "reset",
    **kwargs,
) -> MergeResult:
    """CCA Merge (Horoi et al., 2024): every model mapped into the first model's neuron
    space by CCA on ``data``, weights averaged, BatchNorm reset (``bn``). ``gamma=None``
    picks the ridge on a validation split carved from ``data`` (the choice and the scores
    are in ``result.report``). Other options as in :func:`merge_many`."""
    return merge_many(models, data=data, method="cca", gamma=gamma, bn=bn, **kwargs)
