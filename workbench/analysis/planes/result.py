"""The result of a loss-plane measurement: loss and accuracy on a grid over the plane
through three models, with the models' coordinates, a summary and a tidy table."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from workbench.analysis.planes.plot import plot_plane
from workbench.results import Result

__all__ = ["LossPlane", "plane_weights"]


def plane_weights(points: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weights ``(..., 3)`` of the three models at plane coordinates ``(x, y)``."""
    (n2, _), (c, s) = points[1], points[2]
    b = np.asarray(y, dtype=np.float64) / s
    a = (np.asarray(x, dtype=np.float64) - b * c) / n2
    return np.stack([1.0 - a - b, a, b], axis=-1)


@dataclass(frozen=True)
class LossPlane(Result):
    """Loss and accuracy on a grid over the plane through three models.

    ``loss[i, j]`` and ``accuracy[i, j]`` are at plane coordinates ``(x[j], y[i])``;
    ``points`` holds the three models' coordinates (rows), ``labels`` their names.
    ``label`` is the alignment method that put models 2 and 3 into model 1's neuron order,
    ``settings`` everything else that determined the numbers (fingerprints, margin, ...).
    """

    x: np.ndarray
    y: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    points: np.ndarray
    split: str = "data"
    bn: str = "none"
    label: str = "none"
    labels: tuple[str, str, str] = ("model 1", "model 2", "model 3")
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.bn is None:  # the spelling of results stored before "none" was the one
            object.__setattr__(self, "bn", "none")

    @property
    def weights(self) -> np.ndarray:
        """``(len(y), len(x), 3)``: each grid point as weights of the three models."""
        return plane_weights(self.points, *np.meshgrid(self.x, self.y))

    @property
    def diverged(self) -> np.ndarray:
        """``(k, 2)`` coordinates of the grid points whose loss is NaN or infinite."""
        rows, cols = np.nonzero(~np.isfinite(self.loss))
        return np.stack([self.x[cols], self.y[rows]], axis=1)

    def to_frame(self) -> pd.DataFrame:
        """A tidy table: one row per grid point with its coordinates, the three models'
        weights, loss and accuracy."""
        xx, yy = np.meshgrid(self.x, self.y)
        frame = pd.DataFrame(
            {
                "label": self.label,
                "bn": self.bn,
                "split": self.split,
                "x": xx.ravel(),
                "y": yy.ravel(),
            }
        )
        weights = self.weights.reshape(-1, 3)
        for k in range(3):
            frame[f"weight_{k + 1}"] = weights[:, k]
        frame["loss"] = self.loss.ravel()
        frame["accuracy"] = self.accuracy.ravel()
        return frame

    def plot(self, metric: str = "loss", ax: Axes | None = None) -> Figure:
        """Filled contours of ``metric`` over the plane (:func:`plot_plane`)."""
        return plot_plane(self, metric, ax=ax)

    def summary(self) -> dict[str, float | str | int]:
        """The grid's lowest loss and highest accuracy, where they are, and how many points
        diverged."""
        finite = np.where(np.isfinite(self.loss), self.loss, np.inf)
        i, j = np.unravel_index(np.argmin(finite), finite.shape)
        return {
            "label": self.label,
            "bn": self.bn,
            "split": self.split,
            "min_loss": float(self.loss[i, j]),
            "min_loss_x": float(self.x[j]),
            "min_loss_y": float(self.y[i]),
            "max_accuracy": float(np.nanmax(self.accuracy)),
            "diverged_points": len(self.diverged),
        }
