"""A slider along the linear path between two models, reading the interpolated model's
metrics from a curve computed once over a grid the user can refine."""

from __future__ import annotations

from collections.abc import Mapping

import ipywidgets as widgets
import numpy as np
from torch import nn

from workbench.analysis.lmc import alpha_grid, lmc_curves
from workbench.cache import ResultCache
from workbench.data import DataLike
from workbench.evaluation import Metrics
from workbench.merging import check_bn, get_bn
from workbench.modules import check_compatible
from workbench.vocabulary import MEASURED, keyword_only
from workbench.widgets.common import (
    busy,
    compute_showing_progress,
    count_label,
    failure,
    prompt,
)

FINEST_STEP = 1 / 80
"""The finest grid the refine button offers (81 points on the path)."""


def _decimals(step: float) -> int:
    """How many decimals show every point of a grid of spacing ``step`` (at least 2)."""
    return next((d for d in range(2, 9) if abs(round(step, d) - step) < 1e-12), 9)


def _grid_points(step: float) -> int:
    """The number of points of an even grid on [0, 1] with spacing ``step``."""
    intervals = round(1 / step) if isinstance(step, (int, float)) and step > 0 else 0
    if intervals < 1 or abs(intervals * step - 1) > 1e-9:
        raise ValueError(
            f"step must divide [0, 1] into equal parts (0.1, 0.05, 0.25, ...), got {step!r}."
        )
    return intervals + 1


class InterpolationSlider(widgets.VBox):
    """Move ``alpha`` from model A (0) to model B (1) and read the interpolated model's
    loss and accuracy on ``eval_data`` (a dataset, or splits by name such as
    ``{"train": train, "test": test}``). ``bn``, a registered BatchNorm handling
    (``"reset"``: statistics recomputed, ``"repair"``, ``"none"``), corrects each point on
    ``data`` (training data; default: the first split of ``eval_data``).

    The values come from one LMC curve (:func:`~workbench.lmc_curves`, cached on disk:
    the same models, data and grid as a cell above is a file read) over a grid of spacing
    ``step``, computed when the dashboard is made, so that every step of the slider is a
    lookup. **Finer grid** computes the points halfway between (down to
    :data:`FINEST_STEP`); an alpha off the grid (set from Python) is computed when asked,
    with a busy sign, and kept.

    ``.slider`` is the FloatSlider, ``.readout`` the HTML line, ``.metrics`` the
    :class:`~workbench.evaluation.Metrics` of the first split at the slider's alpha,
    ``.split_metrics`` those of every split, ``.refine`` the button, ``.status`` its line.
    """

    @keyword_only(("eval_data", "bn", "data", "step"), renamed={"bn_data": "data"}, moved=MEASURED)
    def __init__(
        self,
        model_a: nn.Module,
        model_b: nn.Module,
        *,
        eval_data: DataLike | Mapping[str, DataLike],
        data: DataLike | None = None,
        bn: str | None = None,
        step: float = 0.1,
        cache: ResultCache | bool = True,
    ) -> None:
        check_compatible([model_a, model_b])
        self._bn = get_bn(check_bn(bn, model_a))
        points = _grid_points(step)
        splits = (
            dict(eval_data)
            if isinstance(eval_data, Mapping)
            else {getattr(eval_data, "split", "data"): eval_data}
        )
        self._models, self._splits, self._bn_data = (model_a, model_b), splits, data
        self._cache = cache
        self._values: dict[float, dict[str, Metrics]] = {}
        self._step = 1 / (points - 1)
        self._add(alpha_grid(points), progress=True)
        grid = sorted(self._values)
        self.slider = widgets.FloatSlider(
            value=min(grid, key=lambda a: abs(a - 0.5)),
            min=0.0,
            max=1.0,
            step=self._step,
            description="alpha",
            readout_format=f".{_decimals(self._step)}f",
            continuous_update=True,
        )
        self.readout = widgets.HTML()
        self.refine = widgets.Button(description="Finer grid", icon="th")
        self.status = widgets.HTML()
        self.progress = widgets.Output()
        self.metrics: Metrics | None = None
        self.split_metrics: dict[str, Metrics] = {}
        super().__init__(
            [
                self.slider,
                self.readout,
                widgets.HBox([self.refine, self.status]),
                self.progress,
            ]
        )
        self.slider.observe(self._update, names="value")
        self.refine.on_click(self._refine)
        self._describe_grid()
        self._update()

    @property
    def alphas(self) -> list[float]:
        """The alphas computed so far (the grid and any asked for), in order."""
        return sorted(self._values)

    def _add(self, alphas: np.ndarray, progress: bool) -> None:
        """Compute (or read from the cache) the points ``alphas`` and keep them."""
        curves = lmc_curves(
            *self._models,
            eval_data=self._splits,
            alphas=alphas,
            bn=self._bn.name,
            data=self._bn_data,
            progress=progress,
            cache=self._cache,
        )
        for index, alpha in enumerate(alphas.tolist()):
            self._values[round(alpha, 9)] = {
                split: Metrics(
                    float(curve.loss[index]),
                    float(curve.accuracy[index]),
                    len(self._splits[split]),
                )
                for split, curve in curves.items()
            }

    def _describe_grid(self) -> None:
        self.refine.disabled = self._step / 2 < FINEST_STEP - 1e-12
        finer = "" if self.refine.disabled else f"; Finer grid: step {self._step / 2:g}"
        self.status.value = prompt(
            f"{len(self._values)} points computed, the slider steps by {self._step:g}{finer}."
        )

    def _refine(self, _button: widgets.Button | None = None) -> None:
        """Halve the grid's spacing: compute the points halfway between."""
        grid = alpha_grid(_grid_points(self._step))
        middles = np.round((grid[:-1] + grid[1:]) / 2, 12)
        self.refine.disabled = True
        try:
            compute_showing_progress(
                self.status,
                self.progress,
                f"computing {len(middles)} more points",
                lambda: self._add(middles, progress=True),
            )
        except Exception:
            self.refine.disabled = False
            raise
        self._step /= 2
        self.slider.step = self._step
        self.slider.readout_format = f".{_decimals(self._step)}f"
        self._describe_grid()

    def _update(self, _change: dict | None = None) -> None:
        alpha = self.slider.value
        found = self._values.get(round(alpha, 9))
        if found is None:  # off the grid: computed now, with a busy sign, and kept
            self.readout.value = busy(f"alpha = {alpha:.3g}: computing this point...")
            try:
                self._add(np.array([alpha]), progress=False)
            except Exception as error:
                self.readout.value = failure(error)
                raise
            found = self._values[round(alpha, 9)]
        self.split_metrics = found
        self.metrics = next(iter(found.values()))
        bn = self._bn.label
        corrected = ""
        if bn:
            on = self._bn_data if self._bn_data is not None else next(iter(self._splits.values()))
            corrected = f"; after {bn} on {count_label(on)}"
        values = "; ".join(
            f"{'' if split == 'data' else split + ' '}accuracy <b>{100 * m.accuracy:.1f}%</b>, "
            f"loss {m.loss:.3f} ({m.count} images)"
            for split, m in found.items()
        )
        self.readout.value = (
            f"<b>alpha = {alpha:.{_decimals(self._step)}f}</b> (0: model A, 1: model B"
            f"{corrected}): {values}"
        )
