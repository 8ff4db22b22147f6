"""One entry point for alignment: name a registered method, get model B expressed in A's
neuron space (see :mod:`workbench.alignment.registry` for the methods)."""

from __future__ import annotations

from typing import Any

from torch import nn

from workbench.alignment.folding import map_through_batchnorm
from workbench.alignment.registry import AlignmentMethod, get_method, methods
from workbench.alignment.transforms import Permutation, apply_permutation
from workbench.data import DataLike
from workbench.graph import PermutationSpec, resolve_spec
from workbench.merge import check_compatible

__all__ = ["align", "match"]


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
    check_compatible([model_a, model_b])
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
) -> tuple[Permutation, PermutationSpec]:
    """The permutation aligning ``model_b`` to ``model_a`` by ``method`` (any registered
    permutation method; ``options`` go to it), and the spec."""
    found = get_method(method)
    if found.kind != "permutation":
        raise ValueError(
            f"method={found.name!r} finds general linear maps, not a permutation: use align "
            f"(permutation methods: {methods('permutation')})."
        )
    spec = _checked_spec(model_a, model_b, found, data, spec)
    return found.find(model_a, model_b, spec, data, **options), spec


def align(
    model_a: nn.Module,
    model_b: nn.Module,
    method: str = "weight",
    data: DataLike | None = None,
    spec: PermutationSpec | None = None,
    **options: Any,
) -> nn.Module:
    """A copy of ``model_b`` expressed in ``model_a``'s neuron space by ``method``
    (:func:`~workbench.methods` lists them; ``options`` go to the method).

    A permutation method (``"weight"``: weight matching, no data needed; ``"activation"``:
    activation matching on ``data``; ``"none"``) reorders B's channels: the result
    computes exactly B's function. A linear method (``"cca"``: CCA on ``data``, ridge
    ``gamma``) maps B's channels into A's space by general matrices, through its
    BatchNorm layers (:func:`~workbench.alignment.folding.map_through_batchnorm`), which
    does not preserve B's function (see :func:`workbench.alignment.cca.cca_align`).
    """
    found = get_method(method)
    spec = _checked_spec(model_a, model_b, found, data, spec)
    transform = found.find(model_a, model_b, spec, data, **options)
    if found.kind == "permutation":
        return apply_permutation(model_b, spec, transform)
    passes = {k: options[k] for k in ("batch_size", "max_batches") if k in options}
    return map_through_batchnorm(model_b, spec, transform, data, model_a, **passes)
