"""What NP Merge reports of its learned coefficients: per layer, their quantiles, mean,
spread and mean distance from where they started (:attr:`MergeReport.coefficients`)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["QUANTILES", "per_layer", "summary"]

QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
"""The quantiles of the learned coefficients that the report keeps, per layer."""


def summary(coefficients: torch.Tensor, init: float) -> dict[str, float]:
    """Quantiles, mean, spread and mean shift from ``init`` of ``coefficients``."""
    values = coefficients.detach().reshape(-1).double().cpu().numpy()
    quantiles = np.quantile(values, QUANTILES)
    return {
        "init": init,
        "mean": float(values.mean()),
        "std": float(values.std()),
        "mean_abs_shift": float(np.abs(values - init).mean()),
        "count": float(values.size),
        **{f"q{round(100 * q):02d}": float(v) for q, v in zip(QUANTILES, quantiles, strict=True)},
    }


def per_layer(coefficients: dict[str, torch.Tensor], init: float, index: int | None = None):
    """The summary of the coefficients of each layer (the module owning the parameters),
    in the model's order; ``index`` picks one model's weights of a joint mixture."""
    layers: dict[str, list[torch.Tensor]] = {}
    for name, values in coefficients.items():
        picked = values if index is None else values[index]
        layers.setdefault(name.rpartition(".")[0] or name, []).append(picked.reshape(-1))
    return {layer: summary(torch.cat(parts), init) for layer, parts in layers.items()}
