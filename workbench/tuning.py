"""Choosing hyperparameters on a validation split: one routine for every method's grid.

A method declares the values worth trying (``register_method(..., search={"gamma":
(...)})``, CCA's ridge); :func:`validation_search` builds a model for every combination
and keeps the most accurate on held-out data, never on the test set (the protocol rule
that the CCA Merge code base breaks by choosing on test data).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from tqdm.auto import tqdm

from workbench.data import DataLike
from workbench.evaluation import evaluate

__all__ = ["SearchResult", "grid_points", "point_label", "validation_search"]


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in order (one empty point for no grid)."""
    names = list(grid)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]


def point_label(point: Mapping[str, Any]) -> str:
    """How a point is named in reports: its value alone for one hyperparameter
    (``"0.1"``), else ``"gamma=0.1, k=2"``."""
    if len(point) == 1:
        return str(next(iter(point.values())))
    return ", ".join(f"{name}={value}" for name, value in point.items())


@dataclass
class SearchResult:
    """The chosen point, the model built with it, and the validation accuracy of every
    point tried (keyed by :func:`point_label`; empty when there was only one point)."""

    point: dict[str, Any]
    model: nn.Module
    scores: dict[str, float] = field(default_factory=dict)


def validation_search(
    build: Callable[[dict[str, Any]], nn.Module],
    points: Sequence[Mapping[str, Any]],
    val_data: DataLike | None,
    *,
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "validation search",
) -> SearchResult:
    """``build(point)`` for every point, keeping the model most accurate on ``val_data``
    (the first of equals). A single point is built without evaluation, so ``val_data``
    may then be ``None``. Only the best model so far is kept in memory."""
    if not points:
        raise ValueError("Give at least one point to try.")
    if len(points) == 1:
        return SearchResult(dict(points[0]), build(dict(points[0])))
    if val_data is None:
        raise ValueError(f"Choosing among {len(points)} settings needs validation data.")
    best: SearchResult | None = None
    scores: dict[str, float] = {}
    for point in tqdm(points, desc=desc, disable=not progress, leave=False):
        model = build(dict(point))
        scores[point_label(point)] = evaluate(
            model, eval_data=val_data, batch_size=batch_size
        ).accuracy
        if best is None or scores[point_label(point)] > scores[point_label(best.point)]:
            best = SearchResult(dict(point), model)
    best.scores = scores
    return best
