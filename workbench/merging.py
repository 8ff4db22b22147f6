"""Merging N >= 2 models: align them all into one neuron order, average, fix statistics.

Methods (``method=``):

* ``"none"``: plain weight averaging (the baseline every method must beat);
* ``"weight"``: MergeMany (Ainsworth et al., Git Re-Basin, Algorithm 3): each model in
  turn is weight-matched to the average of the others, until no permutation changes;
  no reference model and no data needed for the alignment;
* ``"activation"``: every model activation-matched to the reference;
* ``"cca"``: every model mapped into the reference's space by CCA (Horoi et al., 2024).

Hyperparameters are chosen on a validation split carved from ``data`` (never on test
data): the reference model with ``reference="best"`` and CCA's ridge with ``gamma=None``.
What was chosen is recorded on the merged model as ``merged.workbench_merge``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from workbench.alignment.activation import activation_matching
from workbench.alignment.api import canonical_method
from workbench.alignment.cca import cca_align
from workbench.alignment.statistics import collect_statistics
from workbench.alignment.transforms import apply_permutation, identity_permutation
from workbench.alignment.weight import weight_matching
from workbench.data import DataLike, train_val_split
from workbench.evaluation import evaluate
from workbench.graph import PermutationSpec, resolve_spec
from workbench.merge import average, check_compatible, has_batchnorm, repair, reset_bn

__all__ = ["BN_HANDLING", "GAMMA_GRID", "MERGE_METHODS", "MergeReport", "cca_merge", "merge_many"]

MERGE_METHODS = ("none", "weight", "activation", "cca")
BN_HANDLING = (None, "reset", "repair")
GAMMA_GRID = (0.01, 0.1, 0.3, 1.0, 3.0)


@dataclass
class MergeReport:
    """How a merged model was made: method, reference index, BN handling, CCA's ridge and
    the validation accuracy of each candidate ridge, groups CCA had to permute, seconds."""

    method: str
    num_models: int
    reference: int
    bn: str | None
    gamma: float | None = None
    validation: dict[str, float] = field(default_factory=dict)
    permuted_groups: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def _check_inputs(models: Sequence[nn.Module], method: str, bn: str | None) -> None:
    if method not in MERGE_METHODS:
        raise ValueError(f"method must be one of {MERGE_METHODS}, got {method!r}.")
    if bn not in BN_HANDLING:
        raise ValueError(f"bn must be one of {BN_HANDLING}, got {bn!r}.")
    if len(models) < 2:
        raise ValueError(f"Need at least 2 models to merge, got {len(models)}.")
    check_compatible(models)
    if bn == "reset" and not has_batchnorm(models[0]):
        raise ValueError(
            f"bn='reset' needs BatchNorm layers and {type(models[0]).__name__} has none; "
            "use bn='repair' (works without BatchNorm) or bn=None."
        )


def merge_weight_matching(
    models: Sequence[nn.Module],
    spec: PermutationSpec,
    *,
    max_rounds: int = 20,
    seed: int = 0,
    progress: bool = True,
) -> list[nn.Module]:
    """MergeMany: permute every model so that each best matches the average of the others.

    Rounds visit the models in a seeded random order; each model's permutation starts
    from its current one. Stops when a whole round changes nothing (or ``max_rounds``).
    """
    perms = [identity_permutation(spec) for _ in models]
    generator = torch.Generator().manual_seed(seed)
    aligned = list(models)
    for _ in tqdm(range(max_rounds), desc="MergeMany", disable=not progress, leave=False):
        changed = False
        for i in torch.randperm(len(models), generator=generator).tolist():
            others = average([m for j, m in enumerate(aligned) if j != i])
            perm = weight_matching(others, models[i], spec, init=perms[i], seed=seed)
            if any(not torch.equal(perm[g], perms[i][g]) for g in perm):
                perms[i], changed = perm, True
                aligned[i] = apply_permutation(models[i], spec, perm)
        if not changed:
            break
    return aligned


def _align_to_reference(
    models: Sequence[nn.Module],
    reference: int,
    method: str,
    data: DataLike,
    spec: PermutationSpec,
    gamma: float,
    statistics: dict[int, dict],
    options: dict,
) -> tuple[list[nn.Module], dict[str, str]]:
    ref = models[reference]
    aligned, permuted = [], {}
    for i, model in enumerate(models):
        if i == reference or method == "none":
            aligned.append(model)
        elif method == "activation":
            perm = activation_matching(ref, model, data, spec, **options)
            aligned.append(apply_permutation(model, spec, perm))
        else:
            if i not in statistics:
                statistics[i] = collect_statistics([ref, model], data, spec, **options)
            image, found = cca_align(
                ref, model, data, spec, gamma=gamma, statistics=statistics[i], **options
            )
            aligned.append(image)
            permuted.update(found.permuted)
    return aligned, permuted


def _fix_statistics(
    merged: nn.Module,
    aligned: Sequence[nn.Module],
    bn: str | None,
    data: DataLike,
    spec: PermutationSpec,
    batch_size: int,
    max_batches: int | None,
) -> nn.Module:
    if bn == "reset":
        return reset_bn(merged, data, batch_size, max_batches)
    if bn == "repair":
        weights = [1.0 / len(aligned)] * len(aligned)
        return repair(
            merged, aligned, weights, data, spec, batch_size=batch_size, max_batches=max_batches
        )
    return merged


def _split(data: DataLike, val_data: DataLike | None, val_fraction: float):
    if val_data is not None:
        return data, val_data
    if isinstance(data, DataLoader):
        raise ValueError(
            "Choosing the reference or CCA's gamma needs a validation split; a DataLoader "
            "cannot be split: pass val_data= (never the test set), or fix reference= and gamma=."
        )
    return train_val_split(data, val_fraction)


def merge_many(
    models: Sequence[nn.Module],
    data: DataLike | None = None,
    method: str = "weight",
    *,
    reference: int | str = 0,
    bn: str | None = "reset",
    gamma: float | None = None,
    gammas: Sequence[float] = GAMMA_GRID,
    val_data: DataLike | None = None,
    val_fraction: float = 0.1,
    spec: PermutationSpec | None = None,
    seed: int = 0,
    batch_size: int = 500,
    max_batches: int | None = None,
    progress: bool = True,
) -> nn.Module:
    """One model merged from ``models`` (N >= 2) by ``method`` (see module docstring).

    ``data`` (training data) feeds the activation statistics and the BatchNorm handling
    ``bn`` (``"reset"``: RESET, ``"repair"``: REPAIR towards the mean of the aligned
    models, ``None``). ``reference`` is the index of the model the others are aligned to,
    or ``"best"``: the most accurate on the validation split. With ``method="cca"`` and
    ``gamma=None`` the ridge is chosen from ``gammas`` by the merged model's validation
    accuracy. The validation split is ``val_data`` or a stratified ``val_fraction`` of
    ``data``, held out of everything else. Inputs are not modified.
    """
    started = time.perf_counter()
    models = list(models)
    method = canonical_method(method)
    _check_inputs(models, method, bn)
    needs_data = method in ("activation", "cca") or bn is not None
    needs_val = reference == "best" or (method == "cca" and gamma is None)
    if data is None and (needs_data or needs_val):
        raise ValueError(f"method={method!r} with bn={bn!r} needs data (training data).")
    if needs_val:
        data, val_data = _split(data, val_data, val_fraction)
    if reference == "best":
        scores = [evaluate(m, val_data, batch_size).accuracy for m in models]
        reference = max(range(len(models)), key=scores.__getitem__)
    if not isinstance(reference, int) or not 0 <= reference < len(models):
        raise ValueError(
            f"reference must be 'best' or an index below {len(models)}, got {reference!r}."
        )
    spec = resolve_spec(models[reference], spec, data=data)
    report = MergeReport(method, len(models), reference, bn)
    options = {"batch_size": batch_size, "max_batches": max_batches, "progress": progress}

    def build(ridge: float | None) -> nn.Module:
        if method == "weight":
            aligned = merge_weight_matching(models, spec, seed=seed, progress=progress)
        else:
            aligned, permuted = _align_to_reference(
                models, reference, method, data, spec, ridge, statistics, options
            )
            report.permuted_groups = permuted
        merged = average(aligned)
        return _fix_statistics(merged, aligned, bn, data, spec, batch_size, max_batches)

    statistics: dict[int, dict] = {}
    if method == "cca" and gamma is None:
        candidates = {}
        for ridge in tqdm(gammas, desc="CCA gamma", disable=not progress, leave=False):
            candidates[ridge] = build(ridge)
            report.validation[str(ridge)] = evaluate(
                candidates[ridge], val_data, batch_size
            ).accuracy
        gamma = max(gammas, key=lambda g: report.validation[str(g)])
        merged = candidates[gamma]
    else:
        merged = build(gamma if gamma is not None else 0.0)
    report.gamma = gamma if method == "cca" else None
    report.seconds = time.perf_counter() - started
    merged.workbench_merge = report
    return merged


def cca_merge(
    models: Sequence[nn.Module],
    data: DataLike,
    gamma: float | None = None,
    *,
    bn: str | None = "reset",
    **kwargs,
) -> nn.Module:
    """CCA Merge (Horoi et al., 2024): every model mapped into the first model's neuron
    space by CCA on ``data``, weights averaged, BatchNorm reset (``bn``). ``gamma=None``
    picks the ridge on a validation split carved from ``data`` (the choice and the scores
    are in ``merged.workbench_merge``). Other options as in :func:`merge_many`."""
    return merge_many(models, data, "cca", gamma=gamma, bn=bn, **kwargs)
