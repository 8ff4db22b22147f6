"""Merging in weight space: the straight line between two models and the average of N.

Both return a new model; inputs are never modified. :func:`load_interpolation_` works in
place on a model the caller owns (the evaluation loops reuse one working model instead of
copying per point).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from workbench.modules import clone, load_weighted_average_
from workbench.validation import check_models, check_number, check_weights
from workbench.vocabulary import keyword_only

__all__ = ["average", "interpolate", "load_interpolation_"]


def load_interpolation_(
    target: nn.Module,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    alpha: float,
) -> nn.Module:
    """Overwrite ``target`` with ``(1 - alpha) * state_a + alpha * state_b`` in place; exact
    copies of the endpoints at alpha 0 and 1."""
    if alpha == 0:
        return load_weighted_average_(target, [state_a], [1.0])
    if alpha == 1:
        return load_weighted_average_(target, [state_b], [1.0])
    return load_weighted_average_(target, [state_a, state_b], [1.0 - alpha, alpha])


@keyword_only(("alpha",))
def interpolate(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    alpha: float,
) -> nn.Module:
    """The model ``(1 - alpha) * a + alpha * b`` in weight space (buffers included).

    ``alpha`` = 0 gives a copy of ``a`` and 1 a copy of ``b``, exactly; values outside
    [0, 1] extrapolate along the line.
    """
    alpha = check_number("alpha", alpha)
    check_models([model_a, model_b])
    return load_interpolation_(clone(model_a), model_a.state_dict(), model_b.state_dict(), alpha)


@keyword_only(("weights",))
def average(
    models: Sequence[nn.Module],
    *,
    weights: Sequence[float] | None = None,
) -> nn.Module:
    """The weighted average of N models' weights (uniform by default; weights sum to 1)."""
    models = list(models)
    check_models(models)
    if weights is None:
        weights = [1.0 / len(models)] * len(models)
    weights = check_weights(weights, len(models))
    if abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError(f"Weights must sum to 1, got {sum(weights)}.")
    return load_weighted_average_(clone(models[0]), [m.state_dict() for m in models], weights)
