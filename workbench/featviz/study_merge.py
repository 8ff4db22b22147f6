"""The models a unit study looks at: the parents, the merged model before and after its
BatchNorm handling, and which unit of each parent a merged unit corresponds to.

Two cases:

* two models and a pairwise method (:func:`~workbench.alignment.registry.pairwise_methods`):
  B is aligned to A once, and the merged model is the point ``alpha`` of the path from A
  to aligned B (0.5: the average), corrected by ``bn``. For a permutation method the
  correspondence is exact: merged unit ``i`` averages A's unit ``i`` and B's unit
  ``perm[i]``. A linear method (CCA) maps B into A's neuron space, so A's unit ``i`` is
  exact and B's is the best-correlated one (see below);
* N models, or a method of kind ``"merge"`` (ZipIt!, NP Merge): the merged model of
  :func:`~workbench.merge_many` (MergeMany for weight matching), whose units need not
  correspond to any one parent's unit. Each parent's unit is then **the unit of that
  parent whose activations correlate best with the merged unit's** on the study's data:
  a measured correspondence, not the method's own, and biased upwards (the maximum of
  the correlations over a parent's units), which every result says
  (:attr:`~workbench.featviz.study.UnitStudy.exact` is False for such parents).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from workbench.alignment import apply_alignment, match
from workbench.alignment.registry import get_method
from workbench.data import DataLike
from workbench.featviz.views import group_of
from workbench.figures import bn_label, model_label
from workbench.graph import PermutationSpec, resolve_spec
from workbench.merging import get_bn, interpolate, merge_many
from workbench.merging.renorm import check_bn
from workbench.validation import check_models, check_number

__all__ = ["Aligned", "MergedModels", "align_parents", "merged_at"]


@dataclass(frozen=True)
class Aligned:
    """The parents as aligned once for a study: ``parents`` (the models as given),
    ``endpoints`` (A and B expressed in A's neuron space, for a path; empty for a merge of
    N models or a merge method), the method's ``permutation`` where it is one, and the
    ``spec`` it acts on."""

    parents: tuple[nn.Module, ...]
    names: tuple[str, ...]
    method: str
    endpoints: tuple[nn.Module, ...]
    permutation: dict[str, torch.Tensor] | None
    spec: PermutationSpec
    options: dict[str, Any]

    @property
    def pairwise(self) -> bool:
        return bool(self.endpoints)

    def exact(self) -> tuple[bool, ...]:
        """Per parent: whether the method itself says which unit a merged unit stems from."""
        if not self.pairwise:
            return (False,) * len(self.parents)
        return (True, self.permutation is not None)

    def matched(self, layer: str) -> list[torch.Tensor | None]:
        """Per parent, its unit for each merged unit of ``layer`` where :meth:`exact`,
        else ``None`` (measured by correlation)."""
        found: list[torch.Tensor | None] = [None] * len(self.parents)
        if self.pairwise:
            found[0] = torch.arange(_width(self.parents[0], layer))
            if self.permutation is not None:
                found[1] = self.permutation[group_of(self.spec, layer)].long()
        return found


def _width(model: nn.Module, layer: str) -> int:
    module = dict(model.named_modules())[layer]
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


@dataclass(frozen=True)
class MergedModels:
    """The merged model at one point: ``variants`` maps a display name to a model
    (``"merged"`` before BatchNorm handling, ``"merged + RESET"`` after, when the
    handling is not ``"none"``), the last one being the study's merged model."""

    alpha: float | None
    bn: str
    variants: dict[str, nn.Module]


def align_parents(
    models: Sequence[nn.Module],
    *,
    data: DataLike,
    method: str,
    spec: PermutationSpec | None,
    options: dict[str, Any],
    progress: bool = True,
) -> Aligned:
    """Align the parents once (see the module docstring); nothing is modified."""
    models = list(models)
    if len(models) < 2:
        raise ValueError(f"A unit study needs at least 2 parent models, got {len(models)}.")
    found = get_method(method)
    names = ("A", "B") if len(models) == 2 else tuple(model_label(i) for i in range(len(models)))
    if len(models) > 2 or found.kind == "merge":
        check_models(models)
        spec = resolve_spec(models[0], spec, data=data)
        return Aligned(tuple(models), names, found.name, (), None, spec, dict(options))
    if found.accepts("progress"):
        options = {"progress": progress, **options}
    result = match(models[0], models[1], method=found.name, data=data, spec=spec, **options)
    aligned = apply_alignment(models[1], result=result, data=data, model_a=models[0])
    permutation = result.transform if result.kind == "permutation" else None
    return Aligned(
        tuple(models), names, found.name, (models[0], aligned), permutation, result.spec, options
    )


def merged_at(
    aligned: Aligned, *, alpha: float | None, bn: str, data: DataLike, progress: bool
) -> MergedModels:
    """The merged model at ``alpha`` on the path from A to aligned B (pairwise methods),
    or the method's merge of all the parents (``alpha=None``), before and after ``bn``."""
    found = get_bn(bn)
    label = bn_label(found.name)
    if aligned.pairwise:
        alpha = check_number("alpha", 0.5 if alpha is None else alpha)
        raw = interpolate(*aligned.endpoints, alpha=alpha)
        variants = {"merged": raw}
        if found.name != "none":
            variants[f"merged + {label}"] = found.apply(
                raw, aligned.endpoints, [1.0 - alpha, alpha], data, spec=aligned.spec
            )
        return MergedModels(alpha, found.name, variants)
    if alpha is not None:
        raise ValueError(
            f"alpha={alpha} places the merged model on the path between two aligned models; "
            f"method={aligned.method!r} with {len(aligned.parents)} models merges them all "
            "at once: pass alpha=None."
        )
    if get_method(aligned.method).kind == "merge":
        check_bn(bn, no_endpoints=f"method={aligned.method!r} merges into a space of its own")

    def merge(handling: str) -> nn.Module:
        return merge_many(
            aligned.parents, data=data, method=aligned.method, bn=handling, spec=aligned.spec,
            progress=progress, **aligned.options,
        ).model  # fmt: skip

    variants = {"merged": merge("none")}
    if found.name != "none":  # merged again with the handling: it may need the endpoints
        variants[f"merged + {label}"] = merge(found.name)
    return MergedModels(None, found.name, variants)
