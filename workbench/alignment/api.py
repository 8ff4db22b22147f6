"""One entry point for alignment: name a registered method, get what it found as a typed
:class:`AlignmentResult` (:func:`match`) or model B expressed in A's neuron space
(:func:`align`). :mod:`workbench.alignment.registry` lists the methods."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workbench.alignment.calibration import reset_bn_
from workbench.alignment.registry import AlignmentMethod, Kind, get_method
from workbench.data import DataLike
from workbench.graph import PermutationSpec, resolve_spec
from workbench.graph.transforms import (
    GroupMap,
    LinearMaps,
    Permutation,
    apply_linear_maps,
    apply_permutation,
    is_permutation_map,
)
from workbench.modules import has_batchnorm, state_diff, state_shapes
from workbench.validation import check_data, check_models
from workbench.vocabulary import keyword_only

__all__ = [
    "AlignmentResult",
    "align",
    "apply_alignment",
    "map_model",
    "match",
    "other_width_spec",
]


@dataclass(frozen=True)
class AlignmentResult:
    """What an alignment method found for (A, B): the ``transform`` (a
    :data:`Permutation` when ``kind == "permutation"``, else :data:`LinearMaps`), the
    ``spec`` it acts on, the ``method``, the ``options`` it ran with (its defaults filled
    in), whether B aligned by it still computes B's function, and the seconds it took.
    ``spec_b``: B's own spec when B has other widths than A (a method registered with
    ``any_width=True``), else ``None``."""

    method: str
    kind: Kind
    transform: Permutation | LinearMaps
    spec: PermutationSpec
    preserves_function: bool
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    spec_b: PermutationSpec | None = None

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
    if method.any_width:  # one architecture in other widths: see other_width_spec
        check_models(model_a, "model_a")
        check_models(model_b, "model_b")
        return resolve_spec(model_a, spec, data=data)
    check_models([model_a, model_b])
    spec = resolve_spec(model_a, spec, data=data)
    spec.check_model(model_b, "model_b")
    return spec


def _structure(spec: PermutationSpec) -> dict[str, list[tuple]]:
    """Each group's axes without their sizes: what models of one architecture share."""
    return {
        name: [(ax.key, ax.axis, ax.role, ax.grouped != 1) for ax in group.axes]
        + [("blocks", group.blocks)]
        for name, group in spec.groups.items()
    }


def other_width_spec(
    model_b: nn.Module,
    spec: PermutationSpec,
    data: DataLike | None = None,
    spec_b: PermutationSpec | None = None,
) -> PermutationSpec | None:
    """``None`` when ``model_b`` fits ``spec`` (model A's); else B's own spec (``spec_b``,
    or traced from ``model_b`` on a batch of ``data``), after checking that B is A's
    architecture in other widths: the same state-dict keys, the same groups with the same
    axes, and shapes that differ only along those groups' axes. ``ValueError`` says what
    differs otherwise."""
    diff = state_diff(state_shapes(model_b), spec.state_shapes)
    if spec_b is None and not diff:
        return None
    if diff.missing or diff.unexpected:
        raise ValueError(
            f"model_b ({type(model_b).__name__}) is another architecture than model A: "
            f"{diff.describe('model_b', 'model A')}. Only models of one architecture, in "
            "the same or other widths (e.g. create_model('cnn', width=...)), can be aligned."
        )
    covered = {(ax.key, ax.axis) for group in spec.groups.values() for ax in group.axes}
    for key, found, expected in diff.wrong_shapes:
        for axis, (b, a) in enumerate(zip(found, expected, strict=False)):
            if b != a and (len(found) != len(expected) or (key, axis) not in covered):
                raise ValueError(
                    f"model_b's {key} has shape {found} where model A's has {expected}, on "
                    f"axis {axis}, which no permutation group owns (another number of "
                    "classes or input channels?): only the groups' widths may differ."
                )
    spec_b = resolve_spec(model_b, spec_b, data=data)
    mine, theirs = _structure(spec), _structure(spec_b)
    if mine != theirs:
        differ = sorted(n for n in {*mine, *theirs} if mine.get(n) != theirs.get(n))
        raise ValueError(
            f"model_b's permutation groups differ from model A's in {differ[:3]} (not just "
            "in width): the models are not one architecture in two widths. Build both from "
            "one architecture, or pass matching specs."
        )
    return spec_b


@keyword_only(("method", "data", "spec"))
def match(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
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
    spec_b = other_width_spec(model_b, spec, data) if found.any_width else None
    started = time.perf_counter()
    extra = {} if spec_b is None else {"spec_b": spec_b}
    transform = found.find(model_a, model_b, spec, data, **extra, **options)
    return AlignmentResult(
        found.name,
        found.kind,
        transform,
        spec,
        found.preserves_function,
        {**found.defaults, **options},
        time.perf_counter() - started,
        spec_b,
    )


# A map within this of a permutation matrix is that permutation blurred by the float32
# noise of the statistics (CCA of a permuted copy at a tiny ridge: 3e-4); its carried
# statistics are kept, so that the copy keeps its function.
_PERMUTATION_NOISE = 1e-3


@keyword_only(("spec", "maps", "model_a", "data", "batch_size", "max_batches"))
def map_model(
    model_b: nn.Module,
    *,
    spec: PermutationSpec,
    maps: Mapping[str, torch.Tensor | GroupMap],
    model_a: nn.Module,
    data: DataLike | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> nn.Module:
    """A copy of ``model_a`` holding ``model_b``'s weights with each group's channels
    mapped by a linear method's ``maps`` (``spec``: B's). A square map ``T`` acts as
    ``GroupMap(T, T^{-1})``: producers' rows by ``T``, consumers' columns by ``T^{-1}``,
    and BatchNorm parameters carried along with ``T``, as CCA Merge's authors do.

    BatchNorm statistics carried along with a permutation stay exact (so do those of a map
    within 1e-3 per entry of one: a permutation blurred by float noise); when a map mixes
    channels they are only an estimate, so they are measured on ``data`` (RESET,
    :func:`~workbench.alignment.calibration.reset_bn`), which is then required: the
    result is a model whose statistics are its own, as an endpoint of a path, a REPAIR
    target or a model to evaluate needs."""
    pairs = {
        name: m if isinstance(m, GroupMap) else GroupMap(m, torch.linalg.inv(m.double()))
        for name, m in maps.items()
    }
    mapped = apply_linear_maps(model_b, spec=spec, maps=pairs, like=model_a)
    near = [is_permutation_map(m, _PERMUTATION_NOISE) for m in pairs.values()]
    if not has_batchnorm(mapped) or all(near):
        return mapped
    if data is None:
        raise ValueError(
            "The linear maps mix channels, so the BatchNorm statistics carried along with "
            "them are only an estimate: pass data= (training data) to measure them."
        )
    return reset_bn_(mapped, data=data, batch_size=batch_size, max_batches=max_batches)


@keyword_only(("result", "data", "model_a"))
def apply_alignment(
    model_b: nn.Module,
    *,
    result: AlignmentResult,
    data: DataLike | None = None,
    model_a: nn.Module | None = None,
) -> nn.Module:
    """A copy of ``model_b`` transformed by ``result``: permuted, or for linear maps a
    copy of ``model_a`` (required) holding B's mapped weights, BatchNorm carried along
    and its statistics measured on ``data`` where the maps mix channels
    (:func:`map_model`)."""
    if result.kind == "permutation":
        return apply_permutation(model_b, spec=result.spec, perm=result.transform)
    if model_a is None:
        raise ValueError(
            f"Applying the linear maps of method={result.method!r} builds the result in a "
            "copy of model A (its widths): pass model_a=."
        )
    spec_b = result.spec if result.spec_b is None else result.spec_b
    passes = {k: result.options[k] for k in ("batch_size", "max_batches") if k in result.options}
    return map_model(
        model_b, spec=spec_b, maps=result.transform, model_a=model_a, data=data, **passes
    )


@keyword_only(("method", "data", "spec"))
def align(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
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
    ``gamma``) maps B's channels into A's space by general matrices, BatchNorm carried
    along and its statistics measured on ``data`` (:func:`map_model`), which does not
    preserve B's function (a ReLU does not commute with a rotation).
    """
    result = match(model_a, model_b, method=method, data=data, spec=spec, **options)
    return apply_alignment(model_b, result=result, data=data, model_a=model_a)
