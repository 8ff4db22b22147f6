"""One entry point for alignment: name a registered method, get what it found as a typed
:class:`AlignmentResult` (:func:`match`) or model B expressed in A's neuron space
(:func:`align`). :mod:`workbench.alignment.registry` lists the methods."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from workbench.alignment.folding import map_through_batchnorm
from workbench.alignment.registry import AlignmentMethod, Kind, get_method
from workbench.data import DataLike
from workbench.graph import PermutationSpec, resolve_spec
from workbench.graph.transforms import LinearMaps, Permutation, apply_permutation
from workbench.validation import check_data, check_models

__all__ = ["AlignmentResult", "align", "apply_alignment", "match"]


@dataclass(frozen=True)
class AlignmentResult:
    """What an alignment method found for (A, B): the ``transform`` (a
    :data:`Permutation` when ``kind == "permutation"``, else :data:`LinearMaps`), the
    ``spec`` it acts on, the ``method``, the ``options`` it ran with (its defaults filled
    in), whether B aligned by it still computes B's function, and the seconds it took."""

    method: str
    kind: Kind
    transform: Permutation | LinearMaps
    spec: PermutationSpec
    preserves_function: bool
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def permutation(self) -> Permutation:
        """The transform of a permutation method; ``ValueError`` for a linear one."""
        if self.kind != "permutation":
            raise ValueError(
                f"method={self.method!r} finds general linear maps, not a permutation: read "
                "result.transform (group -> matrix) instead."
            )
        return self.transform


def _checked_spec(
    model_a: nn.Module,
    model_b: nn.Module,
    method: AlignmentMethod,
    data: DataLike | None,
    spec: PermutationSpec | None,
) -> PermutationSpec:
    """Refuse bad input before any work; the spec of ``model_a`` (traced if not given)."""
    if method.needs_data and data is None:
        raise ValueError(f"method={method.name!r} needs data (a Dataset or DataLoader).")
    if data is not None:
        check_data(data)
    check_models([model_a, model_b])
    spec = resolve_spec(model_a, spec, data=data)
    spec.check_model(model_b, "model_b")
    return spec


def match(
    model_a: nn.Module,
    model_b: nn.Module,
    method: str = "weight",
    data: DataLike | None = None,
    spec: PermutationSpec | None = None,
    **options: Any,
) -> AlignmentResult:
    """What ``method`` (any registered method; ``options`` go to it) finds to align
    ``model_b`` to ``model_a``: the permutation or linear maps, with the spec and the
    settings. Neither model is modified; :func:`apply_alignment` applies the result."""
    found = get_method(method)
    found.check_pairwise()
    spec = _checked_spec(model_a, model_b, found, data, spec)
    started = time.perf_counter()
    transform = found.find(model_a, model_b, spec, data, **options)
    return AlignmentResult(
        found.name,
        found.kind,
        transform,
        spec,
        found.preserves_function,
        {**found.defaults, **options},
        time.perf_counter() - started,
    )


def apply_alignment(
    model_b: nn.Module,
    result: AlignmentResult,
    data: DataLike | None = None,
    model_a: nn.Module | None = None,
) -> nn.Module:
    """A copy of ``model_b`` transformed by ``result``: permuted, or for linear maps mapped
    through its BatchNorm layers (:func:`~workbench.alignment.folding.map_through_batchnorm`,
    which needs ``data`` and ``model_a``, whose BatchNorm scales the result takes)."""
    if result.kind == "permutation":
        return apply_permutation(model_b, result.spec, result.transform)
    if data is None or model_a is None:
        raise ValueError(
            f"Applying the linear maps of method={result.method!r} measures BatchNorm "
            "statistics again: pass data= and model_a=."
        )
    passes = {k: result.options[k] for k in ("batch_size", "max_batches") if k in result.options}
    return map_through_batchnorm(model_b, result.spec, result.transform, data, model_a, **passes)


def align(
    model_a: nn.Module,
    model_b: nn.Module,
    method: str = "weight",
    data: DataLike | None = None,
    spec: PermutationSpec | None = None,
    **options: Any,
) -> nn.Module:
    """A copy of ``model_b`` expressed in ``model_a``'s neuron space by ``method``
    (:func:`~workbench.methods` lists them; ``options`` go to the method). The
    convenience for :func:`match` followed by :func:`apply_alignment`.

    A permutation method (``"weight"``: weight matching, no data needed; ``"activation"``:
    activation matching on ``data``; ``"none"``) reorders B's channels: the result
    computes exactly B's function. A linear method (``"cca"``: CCA on ``data``, ridge
    ``gamma``) maps B's channels into A's space by general matrices, through its
    BatchNorm layers, which does not preserve B's function (a ReLU does not commute with
    a rotation).
    """
    result = match(model_a, model_b, method, data, spec, **options)
    return apply_alignment(model_b, result, data, model_a)
