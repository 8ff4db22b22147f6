"""The steps every merge of N models shares, in the order :func:`~workbench.merge_many`
and NP Merge (:func:`~workbench.merging.learned.np_merge`) run them: check the inputs,
carve a validation split, align the models into one neuron order, combine them, correct
their statistics (the registered BatchNorm handling), and report what was chosen
(:class:`MergeReport`, inside a :class:`MergeResult`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from workbench.alignment.api import align, other_width_spec
from workbench.alignment.group_statistics import GroupStatistics
from workbench.alignment.keywords import accepted_options
from workbench.alignment.options import check_options
from workbench.alignment.registry import AlignmentMethod
from workbench.alignment.statistics import collect_statistics
from workbench.data import DataLike, train_val_split
from workbench.evaluation import check_fits
from workbench.graph import PermutationSpec
from workbench.merging.renorm import check_bn, get_bn
from workbench.validation import check_int, check_models, check_number

__all__ = [
    "MergeReport",
    "MergeResult",
    "align_all",
    "check_data_arguments",
    "check_inputs",
    "fix_statistics",
    "validation_split",
]


@dataclass
class MergeReport:
    """How a merged model was made: method, reference index, BN handling, the method's
    hyperparameters (chosen on validation or given; ``gamma``: CCA's ridge, kept apart
    for the code that reads it) with the validation accuracy of each candidate, the
    groups a linear method could only permute, seconds. ``merge``: ``"average"`` or
    ``"learned"`` (NP Merge, :func:`~workbench.merging.learned.np_merge`), which also
    fills ``curves`` (the validation curve of each learning problem: step, loss,
    accuracy) and ``coefficients`` (problem -> layer -> quantiles of the learned
    coefficients, their mean, spread and mean distance from the start ``init``).
    ``details``: the own report of a method of kind ``"merge"`` at the chosen point
    (ZipIt!'s :class:`~workbench.merging.zipping.ZipReport`, the registered NP Merge's
    :class:`MergeReport`)."""

    method: str
    num_models: int
    reference: int
    bn: str
    gamma: float | None = None
    validation: dict[str, float] = field(default_factory=dict)
    permuted_groups: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    merge: str = "average"
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    coefficients: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    details: Any = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MergeResult:
    """A merged ``model`` and the ``report`` of how it was made."""

    model: nn.Module
    report: MergeReport


def check_inputs(
    models: Sequence[nn.Module],
    bn: str | None,
    options: dict,
    method: str,
    any_width: bool = False,
) -> str:
    """Refuse bad models, BatchNorm handling or options before any work; returns the
    handling's registered name (``None`` -> ``"none"``)."""
    if len(models) < 2:
        raise ValueError(f"Need at least 2 models to merge, got {len(models)}.")
    if any_width:  # one architecture in several widths: each model checked on its own
        for i, model in enumerate(models):
            check_models(model, f"model {i}")
    else:
        check_models(models)
    bn = check_bn(bn, models[0])
    check_options([method], options)
    return bn


def check_data_arguments(
    model: nn.Module,
    data: DataLike | None,
    val_data: DataLike | None,
    val_fraction: float,
    max_batches: int | None,
) -> None:
    """Refuse a bad validation fraction, pass limit or dataset before any work: the
    labels of ``val_data``, and of ``data`` where it has them (a validation split may be
    carved from it), are checked whole now, not when a search first reads them."""
    check_number("val_fraction", val_fraction, low=0.0, high=1.0, low_inclusive=False)
    if max_batches is not None:
        check_int("max_batches", max_batches, minimum=1)
    for name, value, labels in (("data", data, None), ("val_data", val_data, True)):
        if value is not None:
            check_fits(model, value, name, labels=labels)


def align_all(
    models: Sequence[nn.Module],
    reference: int,
    method: AlignmentMethod,
    data: DataLike | None,
    spec: PermutationSpec,
    options: dict[str, Any],
    statistics: dict[int, dict[str, GroupStatistics]],
) -> list[nn.Module]:
    """``models`` in one neuron order: the method's N-model merger, else each model
    aligned to the reference. ``statistics`` keeps each pair's activation statistics
    across the points of a search, for methods that take them."""
    if method.merger is not None:
        return method.run_merger(models, spec, **options)
    method.check_pairwise()
    ref, aligned = models[reference], []
    for i, model in enumerate(models):
        if i == reference:
            aligned.append(model)
            continue
        extra = {}
        if method.uses_statistics:
            if i not in statistics:
                passes = {k: options[k] for k in ("batch_size", "max_batches", "progress")}
                specs = [spec, other_width_spec(model, spec, data) or spec]
                statistics[i] = collect_statistics(
                    [ref, model], data=data, spec=spec, specs=specs, **passes
                )
            extra["statistics"] = statistics[i]
        found = accepted_options(method.function, {**options, **extra})
        aligned.append(align(ref, model, method=method.name, data=data, spec=spec, **found))
    return aligned


def fix_statistics(
    merged: nn.Module,
    aligned: Sequence[nn.Module],
    bn: str,
    data: DataLike,
    spec: PermutationSpec,
    batch_size: int,
    max_batches: int | None,
) -> nn.Module:
    """``merged`` (the uniform average of ``aligned``, or a merge method's model when
    ``aligned`` is empty) corrected by the BatchNorm handling ``bn``."""
    endpoints = list(aligned) or [merged]
    weights = [1.0 / len(endpoints)] * len(endpoints)
    return get_bn(bn).apply(
        merged, endpoints, weights, data, spec=spec, batch_size=batch_size, max_batches=max_batches
    )


def validation_split(data: DataLike, val_data: DataLike | None, val_fraction: float):
    if val_data is not None:
        return data, val_data
    if isinstance(data, DataLoader):
        raise ValueError(
            "Choosing the reference or the method's hyperparameters (e.g. CCA's gamma) needs "
            "a validation split; a DataLoader cannot be split: pass val_data= (never the test "
            "set), or fix reference= and the hyperparameters (e.g. gamma=0.1)."
        )
    return train_val_split(data, val_fraction)
