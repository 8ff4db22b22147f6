"""Loss and accuracy over the plane through three models in weight space.

The plane is spanned by the three models' parameter vectors (Garipov et al., 2018): with
``d2 = theta2 - theta1`` and ``d3 = theta3 - theta1`` over all floating-point parameters,
Gram-Schmidt gives the orthonormal basis ``u = d2 / |d2|`` and ``v`` (the part of ``d3``
orthogonal to ``u``, normalized), so that plane coordinates are true Euclidean distances
in parameter space and model 1 sits at the origin, model 2 on the x axis.

Every point ``theta1 + x u + y v`` is the affine combination
``(1 - a - b) theta1 + a theta2 + b theta3`` of the three models; BatchNorm running
statistics (buffers, not parameters) are combined with the same weights ``(1 - a - b, a,
b)``, which gives each model's own statistics at its own position, and with ``bn="reset"``
they are recomputed at every point instead (recommended: the combined statistics are not
the statistics of the combined network).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from workbench.alignment import align, get_method
from workbench.analysis.engine import check_data, evaluate_points
from workbench.analysis.planes.result import LossPlane, plane_weights
from workbench.cache import ResultCache, resolve_cache
from workbench.data import DataLike
from workbench.fingerprints import fingerprints
from workbench.graph import PermutationSpec, resolve_spec
from workbench.merging import check_bn, get_bn
from workbench.validation import check_int, check_models, check_number
from workbench.vocabulary import MEASURED, keyword_only

__all__ = ["loss_plane", "loss_planes", "plane_basis"]


def _parameter_vector(model: nn.Module) -> torch.Tensor:
    """All floating-point parameters of ``model`` as one float64 vector (CPU)."""
    return torch.cat(
        [p.detach().double().reshape(-1).cpu() for p in model.parameters() if p.is_floating_point()]
    )


def plane_basis(models: Sequence[nn.Module]) -> np.ndarray:
    """The three models' coordinates ``(3, 2)`` in the orthonormal basis of their plane
    (model 1 at the origin, model 2 on the positive x axis, model 3 above it).

    Raises ``ValueError`` when the plane is undefined (two equal models, or three on a line).
    """
    theta1, theta2, theta3 = (_parameter_vector(m) for m in models)
    d2, d3 = theta2 - theta1, theta3 - theta1
    n2 = float(d2.norm())
    if n2 == 0:
        raise ValueError(
            "Models 1 and 2 have identical parameters, so they span no plane; pass three "
            "different models."
        )
    c = float(d3 @ d2) / n2
    s = float((d3 - c * d2 / n2).norm())
    if s <= 1e-6 * max(n2, float(d3.norm())):  # float32 rounding is ~1e-7
        raise ValueError(
            "The three models lie on one line in weight space (model 3 is a combination "
            "of models 1 and 2), so they span no plane; pass three independent models."
        )
    return np.array([[0.0, 0.0], [n2, 0.0], [c, s]])


def _grid(points: np.ndarray, resolution: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Evenly spaced coordinates covering the triangle's bounding box plus ``margin`` times
    its larger side on every side."""
    low, high = points.min(0), points.max(0)
    pad = margin * float((high - low).max())
    return (
        np.linspace(low[0] - pad, high[0] + pad, resolution),
        np.linspace(low[1] - pad, high[1] + pad, resolution),
    )


def _check_arguments(
    models: Sequence[nn.Module], bn: str | None, resolution: int, margin: float
) -> None:
    if len(models) != 3:
        raise ValueError(f"A plane needs exactly 3 models, got {len(models)}.")
    check_models(models)
    beyond = "a plane extends beyond the triangle of its three models, where they have none"
    check_bn(bn, models[0], no_endpoints=beyond)
    check_int("resolution", resolution, minimum=2)
    check_number("margin", margin, low=0.0)


@keyword_only(("eval_data", "resolution", "bn"), renamed={"bn_data": "data"}, moved=MEASURED)
def loss_planes(
    models: Sequence[nn.Module],
    *,
    eval_data: Mapping[str, DataLike],
    data: DataLike | None = None,
    resolution: int = 21,
    bn: str | None = "reset",
    method: str = "none",
    margin: float = 0.2,
    labels: Sequence[str] = ("model 1", "model 2", "model 3"),
    spec: PermutationSpec | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    cache: ResultCache | bool = True,
) -> dict[str, LossPlane]:
    """Loss and accuracy on a ``resolution x resolution`` grid over the plane through
    three models, on every split of ``eval_data`` (e.g. ``{"train": ..., "test": ...}``).

    Models 2 and 3 are first aligned to model 1 by ``method`` (any of
    :func:`workbench.methods`) on ``data`` (training data, also for RESET; default the
    first split of ``eval_data``). The grid covers the triangle of the three models plus ``margin`` times
    its larger side around it. ``bn="reset"`` recomputes BatchNorm statistics at every
    point (see the module notes). One working model serves all points; results are cached
    by the content of the models and data and by all settings (``cache=False`` bypasses).
    """
    models = list(models)
    aligner = get_method(method)
    aligner.check_pairwise()
    _check_arguments(models, bn, resolution, margin)
    handling = get_bn(bn)
    bn = handling.name
    if len(labels) != 3:
        raise ValueError(f"labels must name the 3 models, got {list(labels)}.")
    if not eval_data:
        raise ValueError("eval_data must name at least one split, e.g. {'test': test_set}.")
    reset_data = data if data is not None else next(iter(eval_data.values()))
    check_data(models[0], eval_data, reset_data if handling.needs_data else None)
    store = resolve_cache(cache)
    key = store.key(
        models=models,
        method=aligner,
        match_data=reset_data if aligner.needs_data else "-",
        eval_data=eval_data,
        bn=handling,
        data=reset_data if handling.needs_data else "-",
        resolution=resolution,
        margin=margin,
        spec=spec,
        batch_size=batch_size,
    )
    shapes = {"x": (resolution,), "y": (resolution,), "points": (3, 2)}
    for split in eval_data:
        shapes[f"{split}/loss"] = shapes[f"{split}/accuracy"] = (resolution, resolution)
    tensors, settings = store.get_or_compute(
        "plane",
        key,
        lambda: _compute_planes(
            models,
            eval_data,
            resolution,
            bn,
            aligner.name,
            margin,
            reset_data,
            spec,
            batch_size,
            progress,
        ),
        expect=tuple(shapes),
        valid=lambda found, _: all(tuple(found[k].shape) == v for k, v in shapes.items()),
    )
    grid = {name: tensors[name].numpy() for name in ("x", "y", "points")}
    return {
        split: LossPlane(
            loss=tensors[f"{split}/loss"].numpy(),
            accuracy=tensors[f"{split}/accuracy"].numpy(),
            split=split,
            bn=bn,
            label=method,
            labels=tuple(labels),
            settings=settings,
            **grid,
        )
        for split in eval_data
    }


def _compute_planes(
    models: list[nn.Module],
    data: Mapping[str, DataLike],
    resolution: int,
    bn: str,
    method: str,
    margin: float,
    reset_data: DataLike,
    spec: PermutationSpec | None,
    batch_size: int,
    progress: bool,
) -> tuple[dict[str, torch.Tensor], dict]:
    """Align, build the basis and the grid, and evaluate every point."""
    spec = resolve_spec(models[0], spec, data=reset_data)
    models = [models[0]] + [
        align(models[0], m, method=method, data=reset_data, spec=spec) for m in models[1:]
    ]
    points = plane_basis(models)
    x, y = _grid(points, resolution, margin)
    weights = plane_weights(points, *np.meshgrid(x, y)).reshape(-1, 3)
    correct = get_bn(bn).correction(models, reset_data, spec=spec, batch_size=batch_size)
    results = evaluate_points(
        models[0],
        [m.state_dict() for m in models],
        weights.tolist(),
        data,
        correct=correct,
        batch_size=batch_size,
        progress=progress,
        desc=f"plane {method}",
    )
    tensors = {
        "x": torch.tensor(x),
        "y": torch.tensor(y),
        "points": torch.tensor(points),
    }
    for split, (loss, accuracy) in results.items():
        tensors[f"{split}/loss"] = torch.tensor(loss.reshape(resolution, resolution))
        tensors[f"{split}/accuracy"] = torch.tensor(accuracy.reshape(resolution, resolution))
    settings = {
        "method": method,
        "models": fingerprints(models),
        "resolution": resolution,
        "margin": margin,
        "batch_size": batch_size,
        "parameters": "all floating-point parameters; BN buffers combined with the same weights",
    }
    return tensors, settings


@keyword_only(("eval_data", "resolution", "bn"), renamed={"bn_data": "data"}, moved=MEASURED)
def loss_plane(
    models: Sequence[nn.Module],
    *,
    eval_data: DataLike,
    data: DataLike | None = None,
    resolution: int = 21,
    bn: str | None = "reset",
    method: str = "none",
    **kwargs: Any,
) -> LossPlane:
    """The loss and accuracy plane through three models on one dataset, ``eval_data``;
    see :func:`loss_planes` for the arguments (``data``, ``margin``, ``labels``,
    ``cache``, ...)."""
    split = getattr(eval_data, "split", "data")
    return loss_planes(
        models, eval_data={split: eval_data}, data=data, resolution=resolution, bn=bn,
        method=method, **kwargs,
    )[split]  # fmt: skip
