"""A slider along the linear path between two models, showing the interpolated model's metrics."""

from __future__ import annotations

import copy

import ipywidgets as widgets
from torch import nn

from workbench.data import DataLike
from workbench.evaluation import Metrics, evaluate
from workbench.merging import load_interpolation_, reset_bn_
from workbench.modules import check_compatible, has_batchnorm


class InterpolationSlider(widgets.VBox):
    """Move ``alpha`` from model A (0) to model B (1) and read the merged model's loss and
    accuracy on ``data``. With ``bn="reset"`` BatchNorm statistics are recomputed on
    ``bn_data`` (default ``data``) at each position.

    ``.slider`` is the FloatSlider, ``.readout`` the HTML line, ``.metrics`` the last
    :class:`~workbench.evaluation.Metrics`.
    """

    def __init__(
        self,
        model_a: nn.Module,
        model_b: nn.Module,
        data: DataLike,
        bn: str | None = None,
        bn_data: DataLike | None = None,
        step: float = 0.05,
    ) -> None:
        check_compatible([model_a, model_b])
        if bn not in (None, "reset"):
            raise ValueError(f"bn must be None or 'reset', got {bn!r}.")
        if bn == "reset" and not has_batchnorm(model_a):
            raise ValueError(
                f"bn='reset' needs BatchNorm layers; {type(model_a).__name__} has none."
            )
        self._states = [model_a.state_dict(), model_b.state_dict()]
        self._work = copy.deepcopy(model_a)
        self._data, self._bn, self._bn_data = data, bn, bn_data if bn_data is not None else data
        self.slider = widgets.FloatSlider(
            value=0.5,
            min=0.0,
            max=1.0,
            step=step,
            description="alpha",
            readout_format=".2f",
            continuous_update=False,
        )
        self.readout = widgets.HTML()
        self.metrics: Metrics | None = None
        super().__init__([self.slider, self.readout])
        self.slider.observe(self._update, names="value")
        self._update()

    def _update(self, change: dict | None = None) -> None:
        alpha = self.slider.value
        load_interpolation_(self._work, *self._states, alpha)
        if self._bn == "reset":
            reset_bn_(self._work, self._bn_data)
        self.metrics = evaluate(self._work, self._data)
        bn = " after RESET" if self._bn == "reset" else ""
        self.readout.value = (
            f"<b>alpha = {alpha:.2f}</b>{bn}: accuracy <b>{100 * self.metrics.accuracy:.1f}%</b>, "
            f"loss {self.metrics.loss:.3f} on {self.metrics.count} images"
        )
