"""One entry point for alignment: choose a method, get model B expressed in A's neuron order."""

from __future__ import annotations

from torch import nn

from workbench.alignment.activation import activation_matching
from workbench.alignment.cca import DEFAULT_GAMMA, cca_align
from workbench.alignment.transforms import Permutation, apply_permutation, identity_permutation
from workbench.alignment.weight import weight_matching
from workbench.data import DataLike
from workbench.graph import PermutationSpec, resolve_spec
from workbench.merge import check_compatible

__all__ = ["METHODS", "PERMUTATION_METHODS", "align", "canonical_method", "match"]

PERMUTATION_METHODS = ("none", "weight", "activation")
METHODS = (*PERMUTATION_METHODS, "cca")


def canonical_method(method: str) -> str:
    """The method's key: ``"naive"``, the name tables and figures show for no alignment,
    is accepted for ``"none"``."""
    return "none" if method == "naive" else method


def match(
    model_a: nn.Module,
    model_b: nn.Module,
    method: str = "weight",
    data: DataLike | None = None,
    spec: PermutationSpec | None = None,
    **kwargs,
) -> tuple[Permutation, PermutationSpec]:
    """The permutation aligning ``model_b`` to ``model_a`` by ``method``, and the spec."""
    method = canonical_method(method)
    if method not in PERMUTATION_METHODS:
        hint = " (CCA finds linear maps, not a permutation: use align)" if method == "cca" else ""
        raise ValueError(f"method must be one of {PERMUTATION_METHODS}{hint}, got {method!r}.")
    if method == "activation" and data is None:
        raise ValueError("method='activation' needs data (a Dataset or DataLoader).")
    check_compatible([model_a, model_b])
    spec = resolve_spec(model_a, spec, data=data)
    spec.check_model(model_b, "model_b")
    if method == "none":
        return identity_permutation(spec), spec
    if method == "weight":
        return weight_matching(model_a, model_b, spec, **kwargs), spec
    return activation_matching(model_a, model_b, data, spec, **kwargs), spec


def align(
    model_a: nn.Module,
    model_b: nn.Module,
    method: str = "weight",
    data: DataLike | None = None,
    spec: PermutationSpec | None = None,
    **kwargs,
) -> nn.Module:
    """A copy of ``model_b`` with its channels reordered to match ``model_a``.

    ``method``: ``"weight"`` (weight matching, no data needed), ``"activation"``
    (activation matching on ``data``) or ``"none"``: the result computes exactly the
    same function as ``model_b``; only its neurons' order changes. ``"cca"`` (CCA on
    ``data``, ridge ``gamma``) maps B's neurons into A's space by general linear maps,
    which does not preserve B's function (see :func:`workbench.alignment.cca.cca_align`).
    """
    method = canonical_method(method)
    if method == "cca":
        if data is None:
            raise ValueError("method='cca' needs data (a Dataset or DataLoader).")
        gamma = kwargs.pop("gamma", DEFAULT_GAMMA)
        return cca_align(model_a, model_b, data, spec, gamma=gamma, **kwargs)[0]
    perm, spec = match(model_a, model_b, method, data, spec, **kwargs)
    return apply_permutation(model_b, spec, perm)
