"""The feature-visualization study of merged neurons, in one call: align and merge the
parents, observe every model at every studied layer in one streaming pass, render the
units (batched, cached per channel), and measure (the measures and labels are described
in :mod:`~workbench.featviz.study_results`; how a merged unit's parent units are found in
:mod:`~workbench.featviz.study_merge`).

* :func:`unit_study`: one layer of the merge of two models -> :class:`UnitStudy`;
* :func:`layer_study`: every layer (or those named) -> :class:`LayerStudy`;
* :func:`study_many`: the merge of N models (MergeMany, ZipIt!, NP Merge, ...);
* :func:`path_study`: one layer at several points of the path (``alphas``).

Each study reads every measure at one observation point (``point``). ``data`` is what
the alignment and the BatchNorm handling fit on (training data), ``eval_data`` what the
units are measured on (default ``data``). Renders are cached on disk per channel, and
each study as a whole, keyed by the models' and data's content and every setting
(``cache``; ``False`` bypasses both): a study asked for again is read back without
aligning, merging or a pass. Computed, it is one pass over ``eval_data`` besides the
renders (seconds on the shipped models).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from workbench import validation
from workbench.alignment.registry import get_method
from workbench.cache import ResultCache, resolve_cache
from workbench.data import DataLike
from workbench.evaluation import check_fits
from workbench.featviz.points import check_point, observable_layers, observation_point
from workbench.featviz.render import check_channels, render_channels
from workbench.featviz.study_measures import cross_activation, observe_layers
from workbench.featviz.study_merge import Aligned, MergedModels, align_parents, merged_at
from workbench.featviz.study_results import (
    LayerStudy,
    PathStudy,
    UnitStudy,
    label_units,
    pack_studies,
    unpack_studies,
)
from workbench.graph import PermutationSpec
from workbench.merging import get_bn
from workbench.merging.renorm import check_bn

__all__ = ["layer_study", "path_study", "study_many", "unit_study"]

Units = int | Sequence[int] | Mapping[str, Sequence[int]] | None


@dataclass(frozen=True)
class _Settings:
    point: str
    units: Units
    render: bool
    steps: int
    seed: int
    k: int
    correlation_threshold: float
    cross_threshold: float
    converged_quality: float
    cache: ResultCache | bool
    progress: bool


def _settings(**given: Any) -> _Settings:
    """The study's settings, each checked before any work."""
    check_point(given["point"])
    validation.check_int("steps", given["steps"], minimum=1)
    validation.check_int("seed", given["seed"])
    validation.check_int("k", given["k"], minimum=1)
    for name in ("correlation_threshold", "cross_threshold", "converged_quality"):
        validation.check_number(name, given[name])
    return _Settings(**given)


def _layers(model: nn.Module, layers: Sequence[str] | None, spec: PermutationSpec, point: str):
    """The studied layers: those named, else every layer whose channels are permuted
    (not the logits) and have the point (``"relu"``: a nonlinearity right after)."""
    if layers is None:
        return observable_layers(
            model, layers=[p.layer for p in spec.layers if not p.final], point=point
        )
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise ValueError("layers is empty: name at least one layer, or pass None for all.")
    for name in layers:
        observation_point(model, layer=name, point=point)  # a clear error for a bad name or point
    return layers


def _units(units: Units, model: nn.Module, layer: str) -> torch.Tensor:
    count = len(check_channels(model, layer, range(_width(model, layer))))
    if units is None:
        return torch.arange(count)
    if isinstance(units, Mapping):
        return torch.tensor(check_channels(model, layer, units[layer]))
    if isinstance(units, int):
        validation.check_int("units", units, minimum=1)
        return torch.arange(min(units, count))
    return torch.tensor(check_channels(model, layer, units))


def _width(model: nn.Module, layer: str) -> int:
    module = dict(model.named_modules())[layer]
    return module.out_features if isinstance(module, nn.Linear) else module.out_channels


def _measure(
    aligned: Aligned,
    merged: MergedModels,
    layers: list[str],
    eval_data: DataLike,
    s: _Settings,
) -> dict[str, UnitStudy]:
    """Every unit study of one merged model: one pass, then per layer the measures."""
    variants = list(merged.variants)
    models = [*aligned.parents, *merged.variants.values()]
    seen = observe_layers(models, layers, eval_data, point=s.point, k=s.k, progress=s.progress)
    P, V = len(aligned.parents), len(variants)
    main = P + V - 1
    studies = {}
    for layer in layers:
        obs, units = seen[layer], _units(s.units, aligned.parents[0], layer)
        stats = obs.statistics
        matched = []
        for p, exact in enumerate(aligned.matched(layer)):
            best = stats.correlation(main, p).argmax(1) if exact is None else exact
            matched.append(best[units])
        per_model = [*matched, *[units] * V]
        pairs = [(p, q) for p in range(P) for q in range(p + 1, P)]
        corr_parents = torch.stack(
            [stats.correlation(p, q)[matched[p], matched[q]] for p, q in pairs]
        ).mean(0)
        correlation = torch.stack(
            [
                torch.stack([stats.correlation(P + v, p)[units, matched[p]] for p in range(P)])
                for v in range(V)
            ]
        )
        parent_std = torch.stack([stats.std(p)[matched[p]] for p in range(P)]).mean(0)
        std_ratio = torch.stack([stats.std(P + v)[units] for v in range(V)]) / parent_std
        std_ratio = torch.where(parent_std > 0, std_ratio, torch.nan)
        tops = [obs.top[m][:, per_model[m]] for m in range(P + V)]  # (k, U) each
        overlap = torch.stack(
            [torch.stack([_shared(tops[P + v], tops[p]) for p in range(P)]) for v in range(V)]
        )
        extra: dict[str, Any] = {}
        if s.render:
            names = [*aligned.names, *variants]
            images = {
                name: render_channels(
                    model, layer=layer, channels=per_model[m].tolist(), steps=s.steps, seed=s.seed, point=s.point,
                    cache=s.cache, progress=s.progress,
                )
                for m, (name, model) in enumerate(zip(names, models, strict=True))
            }  # fmt: skip
            means = [obs.mean(m) for m in range(P + V)]
            ratio, own = cross_activation(
                models, layer, per_model, list(images.values()), means, point=s.point
            )
            best = torch.stack([obs.best[m][per_model[m]] for m in range(P + V)])
            base = torch.stack([means[m][per_model[m]] for m in range(P + V)])
            spread = best - base
            quality = torch.where(spread > 0, (own - base) / spread.clamp_min(1e-12), torch.nan)
            crossed = 0.5 * (ratio + ratio.transpose(0, 1))
            extra = {
                "cross": torch.stack(
                    [torch.stack([crossed[P + v, p] for p in range(P)]) for v in range(V)]
                ),
                "cross_parents": torch.stack([crossed[p, q] for p, q in pairs]).mean(0),
                "quality": quality,
                "converged_quality": s.converged_quality,
                "images": images,
            }
        labels = label_units(
            correlation[-1].float(),
            extra["cross"][-1] if s.render else None,
            aligned.names,
            s.correlation_threshold,
            s.cross_threshold,
        )
        studies[layer] = UnitStudy(
            layer=layer, point=s.point, method=aligned.method, bn=merged.bn,
            alpha=merged.alpha, parents=aligned.names, variants=tuple(variants), units=units,
            matched=torch.stack(matched), exact=aligned.exact(),
            corr_parents=corr_parents.float(), correlation=correlation.float(),
            std_ratio=std_ratio.float(), overlap=overlap, labels=labels,
            thresholds={
                "correlation": s.correlation_threshold, "cross": s.cross_threshold
            },
            k=s.k, **extra,
        )  # fmt: skip
    return studies


def _shared(top_a: torch.Tensor, top_b: torch.Tensor) -> torch.Tensor:
    """Per column, the share of ``top_a``'s indices (k, U) that ``top_b``'s hold too."""
    return (top_a[:, None, :] == top_b[None, :, :]).any(1).float().mean(0)


def _study(
    models: Sequence[nn.Module],
    *,
    data: DataLike,
    eval_data: DataLike | None,
    layers: Sequence[str] | str | None,
    method: str,
    bn: str | None,
    alphas: Sequence[float | None],
    spec: PermutationSpec | None,
    options: dict[str, Any],
    settings: dict[str, Any],
) -> tuple[list[str], list[dict[str, UnitStudy]]]:
    s = _settings(**settings)
    validation.check_models(list(models))
    bn = check_bn(bn, models[0])
    eval_data = data if eval_data is None else eval_data
    check_fits(models[0], data, "data", labels=None)
    check_fits(models[0], eval_data, "eval_data", labels=None)
    for alpha in alphas:
        if alpha is not None:
            validation.check_number("alpha", alpha)
    store = resolve_cache(s.cache)
    measured = {
        f.name: getattr(s, f.name) for f in fields(s) if f.name not in ("cache", "progress")
    }
    key = store.key(
        models=list(models), data=data, eval_data=eval_data, layers=layers,
        method=get_method(method), bn=get_bn(bn), alphas=list(alphas), spec=spec,
        options=options, settings=measured, version=1,
    )  # fmt: skip
    hit = store.load("unit-study", key, valid=lambda t, meta: bool(unpack_studies(t, meta)))
    if hit is not None:
        found = unpack_studies(*hit)
        return list(found[0]), found
    if key is not None:
        store.check_writable()  # before the work, not when storing its result
    aligned = align_parents(
        models, data=data, method=method, spec=spec, options=options, progress=s.progress
    )
    names = _layers(models[0], layers, aligned.spec, s.point)
    for layer in names:
        _units(s.units, models[0], layer)  # a bad unit is an error before the passes
    found = []
    for alpha in alphas:
        merged = merged_at(aligned, alpha=alpha, bn=bn, data=data, progress=s.progress)
        found.append(_measure(aligned, merged, names, eval_data, s))
    store.store("unit-study", key, *pack_studies(found))
    return names, found


def layer_study(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    layers: Sequence[str] | None = None,
    data: DataLike,
    eval_data: DataLike | None = None,
    method: str = "weight",
    bn: str | None = "reset",
    point: str = "relu",
    alpha: float = 0.5,
    units: Units = None,
    render: bool = True,
    steps: int = 128,
    seed: int = 0,
    k: int = 9,
    correlation_threshold: float = 0.75,
    cross_threshold: float = 0.5,
    converged_quality: float = 1.0,
    spec: PermutationSpec | None = None,
    cache: ResultCache | bool = True,
    progress: bool = True,
    **options: Any,
) -> LayerStudy:
    """The unit study of every layer of the merge of ``model_a`` and ``model_b`` (or the
    named ``layers``; default: every layer whose channels are permuted and that has the
    observation ``point``) by ``method`` (options go to it), at ``alpha`` on the path from
    A to aligned B (0.5: the average), corrected by the BatchNorm handling ``bn``.

    ``units``: all (None), the first n of each layer (an int), the given ones, or per
    layer (a mapping). ``render=False`` skips the renders (no cross-activation, quality or
    images; labels from correlation alone). ``steps``, ``seed`` go to
    :func:`~workbench.featviz.render_channels`; ``k`` images per unit for the exemplar
    overlap; the thresholds define the labels (module docstring of
    :mod:`~workbench.featviz.study_results`). The study and its renders are cached on
    disk (``cache``: ``True``, a :class:`~workbench.ResultCache`, or ``False``). Nothing
    is modified.
    """
    settings = {name: given for name, given in locals().items() if name in _SETTINGS_DEFAULTS}
    _, (found,) = _study(
        [model_a, model_b], data=data, eval_data=eval_data, layers=layers, method=method,
        bn=bn, alphas=[alpha], spec=spec, options=options, settings=settings,
    )  # fmt: skip
    return LayerStudy(found)


def unit_study(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    layer: str,
    **kwargs: Any,
) -> UnitStudy:
    """The per-unit measures of one ``layer`` of the merge of ``model_a`` and ``model_b``:
    :func:`layer_study` (same keyword arguments) for that layer only."""
    if not isinstance(layer, str):
        raise TypeError(
            f"layer must be a layer's name, got {layer!r}; for several use layer_study."
        )
    return layer_study(model_a, model_b, layers=[layer], **kwargs).studies[layer]


def _split(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``kwargs`` as (the study's settings, defaults filled in; the method's options)."""
    settings = {k: kwargs.pop(k) for k in list(kwargs) if k in _SETTINGS_DEFAULTS}
    return {**_SETTINGS_DEFAULTS, **settings}, kwargs


def study_many(
    models: Sequence[nn.Module],
    *,
    layers: Sequence[str] | None = None,
    data: DataLike,
    eval_data: DataLike | None = None,
    method: str = "weight",
    bn: str | None = "reset",
    spec: PermutationSpec | None = None,
    **kwargs: Any,
) -> LayerStudy:
    """The unit study of the merge of N >= 2 ``models`` by :func:`~workbench.merge_many`
    (``method``: MergeMany for ``"weight"``, ZipIt!, NP Merge, ...): each merged unit
    against each parent's best-correlated unit (a measured correspondence; see
    :mod:`~workbench.featviz.study_merge`). The study's settings (``point``, ``units``,
    ``render``, ...) as in :func:`layer_study`; other keyword arguments go to the method.
    """
    settings, options = _split(kwargs)
    _, (found,) = _study(
        list(models), data=data, eval_data=eval_data, layers=layers, method=method, bn=bn,
        alphas=[None], spec=spec, options=options, settings=settings,
    )  # fmt: skip
    return LayerStudy(found)


def path_study(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    layer: str,
    data: DataLike,
    eval_data: DataLike | None = None,
    alphas: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    method: str = "weight",
    bn: str | None = "reset",
    spec: PermutationSpec | None = None,
    **kwargs: Any,
) -> PathStudy:
    """The unit study of ``layer`` in the interpolated model at each of ``alphas`` on the
    path from A to B aligned once by ``method`` (``"none"``: the naive path), so that one
    sees a feature survive or dissolve along it. The study's settings as in
    :func:`layer_study`; other keyword arguments go to the method."""
    alphas = sorted(validation.check_number("alpha", a) for a in alphas)
    if not alphas:
        raise ValueError("alphas is empty: give the points of the path, e.g. (0, 0.5, 1).")
    settings, options = _split(kwargs)
    _, found = _study(
        [model_a, model_b], data=data, eval_data=eval_data, layers=[layer], method=method,
        bn=bn, alphas=alphas, spec=spec, options=options, settings=settings,
    )  # fmt: skip
    return PathStudy(tuple(f[layer] for f in found))


_SETTINGS_DEFAULTS = {
    "point": "relu",
    "units": None,
    "render": True,
    "steps": 128,
    "seed": 0,
    "k": 9,
    "correlation_threshold": 0.75,
    "cross_threshold": 0.5,
    "converged_quality": 1.0,
    "cache": True,
    "progress": True,
}
