"""The result of a linear-mode-connectivity measurement: one curve, its barriers, tables.

Barrier definitions (both reported, on loss and on accuracy):

* ``barrier`` (Frankle et al., 2020): ``max_a L(a) - ((1 - a) L(0) + a L(1))`` over the
  evaluated ``a`` in [0, 1], the height of the curve above the chord between its ends;
* ``rebasin_barrier`` (Ainsworth et al., Git Re-Basin): ``max_a L(a) - (L(0) + L(1)) / 2``.

Curves are cached on disk (:mod:`workbench.cache`), keyed by the content of the models and
data and by every setting that changes the numbers: a re-run is a file read, and a model
that changed can never be served a stale curve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from workbench.analysis.lmc.plot import plot_curves
from workbench.figures import save_table
from workbench.results import Result

__all__ = [
    "LMCCurve",
    "alpha_grid",
    "barrier_table",
    "curves_frame",
    "write_csv",
]


def alpha_grid(alphas: int | Sequence[float]) -> np.ndarray:
    """The alphas of a path: ``alphas`` evenly spaced points on [0, 1] when a count, else
    the given finite values."""
    if isinstance(alphas, int):
        if alphas < 2:
            raise ValueError(f"Need at least 2 points on the path, got alphas={alphas}.")
        # rounded, so that 0.3 is stored and written as 0.3, not 0.30000000000000004
        return np.round(np.linspace(0.0, 1.0, alphas), 12)
    values = np.asarray(alphas, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0 or not np.isfinite(values).all():
        raise ValueError(f"alphas must be a count or a 1-D list of finite numbers, got {alphas}.")
    return values


def _endpoint(alphas: np.ndarray, values: np.ndarray, at: float) -> float:
    hit = np.flatnonzero(alphas == at)
    if len(hit) == 0:
        raise ValueError(
            f"A barrier needs the endpoints evaluated: alpha={at:g} is not among {alphas.tolist()}."
        )
    return float(values[hit[0]])


def _chord_excess(alphas: np.ndarray, values: np.ndarray, end: float | None = None) -> float:
    """max over alpha in [0, 1] of values(alpha) minus the chord from values(0) to ``end``
    (default values(1))."""
    v0 = _endpoint(alphas, values, 0.0)
    v1 = _endpoint(alphas, values, 1.0) if end is None else end
    inside = (alphas >= 0) & (alphas <= 1)
    chord = (1 - alphas[inside]) * v0 + alphas[inside] * v1
    return float(np.max(values[inside] - chord))


@dataclass(frozen=True)
class LMCCurve(Result):
    """Loss and accuracy at each ``alpha`` on the path from model A (0) to model B (1).

    ``split`` names the data it was evaluated on, ``bn`` the registered BatchNorm handling
    (``"none"``, ``"reset"``, ``"repair"``, ...; ``None`` is read as ``"none"``), ``label`` the method that produced the
    endpoints and ``settings`` everything else that determined the numbers (the models'
    fingerprints, batch size, ...; a pair index or a sweep value where it applies).

    When the far end of the path is *not* model B but an image of it that computes another
    function (CCA's linear maps through ReLUs), ``original_b_loss`` and
    ``original_b_accuracy`` hold B's own numbers (same split, same BatchNorm handling):
    the barriers are then measured against the chord to B itself, and ``summary()``
    reports the mapped end's numbers beside them. A chord to the mapped end would hide the
    barrier (the path would end on a broken model). They are ``None`` when the far end
    computes B's function (any permutation).
    """

    alphas: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray
    split: str = "data"
    bn: str = "none"
    label: str = "naive"
    settings: dict = field(default_factory=dict)
    original_b_loss: float | None = None
    original_b_accuracy: float | None = None

    def __post_init__(self) -> None:
        if self.bn is None:  # the spelling of results stored before "none" was the one
            object.__setattr__(self, "bn", "none")

    @property
    def far_end_is_b(self) -> bool:
        """True when the path ends at model B itself (or a permutation of it)."""
        return self.original_b_loss is None

    @property
    def diverged(self) -> np.ndarray:
        """Alphas at which the loss is NaN or infinite (the interpolated model blew up)."""
        return self.alphas[~np.isfinite(self.loss)]

    @property
    def loss_b(self) -> float:
        """Model B's loss: the far end's, or B's own when the far end is not B."""
        if self.original_b_loss is not None:
            return self.original_b_loss
        return _endpoint(self.alphas, self.loss, 1.0)

    @property
    def accuracy_b(self) -> float:
        """Model B's accuracy: the far end's, or B's own when the far end is not B."""
        if self.original_b_accuracy is not None:
            return self.original_b_accuracy
        return _endpoint(self.alphas, self.accuracy, 1.0)

    @property
    def barrier(self) -> float:
        """Loss barrier: the curve's height above the chord from A's loss to B's."""
        return _chord_excess(self.alphas, self.loss, self.loss_b)

    @property
    def rebasin_barrier(self) -> float:
        """Git Re-Basin's loss barrier: ``max L(alpha) - (L(A) + L(B)) / 2``."""
        mean_end = (_endpoint(self.alphas, self.loss, 0) + self.loss_b) / 2
        inside = (self.alphas >= 0) & (self.alphas <= 1)
        return float(np.max(self.loss[inside]) - mean_end)

    @property
    def accuracy_barrier(self) -> float:
        """Accuracy barrier: the largest drop below the chord from A's accuracy to B's."""
        return _chord_excess(self.alphas, -self.accuracy, -self.accuracy_b)

    @property
    def midpoint_accuracy(self) -> float:
        """Accuracy at alpha = 0.5 (the merged model of plain averaging)."""
        return _endpoint(self.alphas, self.accuracy, 0.5)

    def to_frame(self) -> pd.DataFrame:
        """A tidy table: one row per alpha with label, bn, split, loss and accuracy."""
        return pd.DataFrame(
            {
                "label": self.label,
                "bn": self.bn,
                "split": self.split,
                "alpha": self.alphas,
                "loss": self.loss,
                "accuracy": self.accuracy,
            }
        )

    def plot(self, metric: str = "loss", ax: Axes | None = None) -> Figure:
        """This curve's ``metric`` (``"loss"`` or ``"accuracy"``) against alpha
        (:func:`~workbench.plot_curves` of this one curve)."""
        return plot_curves([self], metric, ax=ax)

    def summary(self) -> dict[str, float | str]:
        """The barriers and endpoint/midpoint accuracies as one flat record; when the far
        end is not B, also the far end's own loss and accuracy (``mapped_end_*``)."""
        record: dict[str, float | str] = {
            "label": self.label,
            "bn": self.bn,
            "split": self.split,
            "barrier": self.barrier,
            "rebasin_barrier": self.rebasin_barrier,
            "accuracy_barrier": self.accuracy_barrier,
            "accuracy_a": _endpoint(self.alphas, self.accuracy, 0),
            "accuracy_b": self.accuracy_b,
        }
        if 0.5 in self.alphas:
            record["midpoint_accuracy"] = self.midpoint_accuracy
        if not self.far_end_is_b:
            record["mapped_end_loss"] = _endpoint(self.alphas, self.loss, 1.0)
            record["mapped_end_accuracy"] = _endpoint(self.alphas, self.accuracy, 1.0)
        return record


# ---------------------------------------------------------------------------------------
# Tables


def curves_frame(curves: Sequence[LMCCurve], settings: Sequence[str] = ()) -> pd.DataFrame:
    """All curves as one tidy table (for CSV export or seaborn); ``settings`` names entries
    of each curve's settings to add as columns (e.g. ``("pair",)``)."""
    frames = []
    for curve in curves:
        frame = curve.to_frame()
        for name in settings:
            frame[name] = _setting(curve, name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def barrier_table(curves: Sequence[LMCCurve], settings: Sequence[str] = ()) -> pd.DataFrame:
    """One row per curve with both barrier definitions and the accuracies (and the named
    ``settings`` of each curve as columns)."""
    rows = []
    for curve in curves:
        row = {name: _setting(curve, name) for name in settings}
        rows.append({**row, **curve.summary()})
    return pd.DataFrame(rows)


def _setting(curve: LMCCurve, name: str) -> object:
    if name not in curve.settings:
        raise ValueError(
            f"Curve {curve.label!r} ({curve.split}) has no setting {name!r}; it has "
            f"{sorted(curve.settings)}."
        )
    value = curve.settings[name]
    return "-".join(map(str, value)) if isinstance(value, (list, tuple)) else value


def write_csv(curves: Sequence[LMCCurve], path: str | Path, settings: Sequence[str] = ()) -> Path:
    """Write the curves' tidy table (:func:`curves_frame`) to ``path`` (folders created)."""
    return save_table(curves_frame(curves, settings), path)
