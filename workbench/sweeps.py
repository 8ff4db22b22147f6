"""How the barrier moves with width and with training time.

For each value of the swept setting, two models that differ only by seed are trained with
the training helper, model B is aligned to model A by each method, and the interpolation
curve is measured; the result is one table row per (value, method) with the barriers and
accuracies, and a figure of barrier against the setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from workbench.alignment import align
from workbench.data import DataLike
from workbench.figures import color_for, new_figure, paper_style
from workbench.lmc import lmc_curve
from workbench.training import train_models

__all__ = ["Sweep", "sweep"]

_METRICS = {
    "barrier": "Loss barrier",
    "accuracy_barrier": "Accuracy barrier (points)",
    "midpoint_accuracy": "Midpoint accuracy (%)",
}


@dataclass(frozen=True)
class Sweep:
    """One row per (value of ``parameter``, method): ``barrier``, ``accuracy_barrier``,
    ``midpoint_accuracy`` and the endpoints' mean accuracy, on the evaluation data."""

    parameter: str
    table: pd.DataFrame
    settings: dict = field(default_factory=dict)

    def to_frame(self) -> pd.DataFrame:
        return self.table.copy()

    def plot(self, metric: str = "barrier", ax: Axes | None = None) -> Figure:
        """``metric`` against the swept setting, one line per method."""
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {list(_METRICS)}, got {metric!r}.")
        if ax is None:
            fig, ax = new_figure()
        else:
            fig = ax.figure
        scale = 1.0 if metric == "barrier" else 100.0
        with paper_style():
            for index, (method, rows) in enumerate(self.table.groupby("method", sort=False)):
                ax.plot(
                    rows[self.parameter],
                    scale * rows[metric],
                    marker="o",
                    color=color_for(method, index),
                    label=method,
                )
            if self.parameter == "width":
                ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(self.table[self.parameter].unique()))
            ax.get_xaxis().set_major_formatter("{x:g}")
            ax.set_xlabel(
                {"width": "Width multiplier", "epochs": "Training epochs"}.get(
                    self.parameter, self.parameter
                )
            )
            ax.set_ylabel(_METRICS[metric])
            ax.legend(loc="best")
        return fig


def sweep(
    parameter: str,
    values: Sequence[float],
    train: DataLike,
    test: DataLike,
    *,
    epochs: int = 4,
    architecture: str = "cnn",
    model_kwargs: dict | None = None,
    seeds: tuple[int, int] = (0, 1),
    methods: Sequence[str] = ("none", "weight"),
    bn: str | None = "reset",
    alphas: int = 5,
    progress: bool = True,
    **train_kwargs,
) -> Sweep:
    """Barrier against ``parameter``: ``"width"`` (the width multiplier; each pair trained
    for ``epochs``) or ``"epochs"`` (training time; width from ``model_kwargs``, default 1).
    For each value a pair differing only by ``seeds`` is trained on ``train``, B is aligned
    to A by each of ``methods``, and the curve is measured on ``test`` with ``bn`` handling
    on ``train``. ``train_kwargs`` go to :func:`workbench.train_model`."""
    if parameter not in ("width", "epochs"):
        raise ValueError(f"parameter must be 'width' or 'epochs', got {parameter!r}.")
    rows = []
    for value in tqdm(values, desc=f"{parameter} sweep", disable=not progress):
        kwargs = dict(model_kwargs or {})
        count = epochs
        if parameter == "width":
            kwargs["width"] = value
        else:
            count = int(value)
        model_a, model_b = train_models(
            architecture, seeds, train, count, model_kwargs=kwargs, progress=False, **train_kwargs
        )
        for method in methods:
            aligned = align(model_a, model_b, method, data=train)
            curve = lmc_curve(
                model_a, aligned, test, alphas, bn, bn_data=train, label=method, progress=False
            )
            rows.append(
                {
                    parameter: value,
                    "method": method,
                    "bn": bn or "none",
                    "barrier": curve.barrier,
                    "accuracy_barrier": curve.accuracy_barrier,
                    "midpoint_accuracy": curve.midpoint_accuracy,
                    "endpoint_accuracy": (curve.accuracy[0] + curve.accuracy[-1]) / 2,
                }
            )
    settings = {"methods": list(methods), "bn": bn, "alphas": alphas, "epochs": epochs}
    return Sweep(parameter, pd.DataFrame(rows), settings)
