"""A slider along the linear path between two models, showing the interpolated model's metrics."""

from __future__ import annotations

import copy

import ipywidgets as widgets
from torch import nn

from workbench.data import DataLike
from workbench.evaluation import Metrics, evaluate
from workbench.merging import check_bn, get_bn, load_interpolation_
from workbench.modules import check_compatible


class InterpolationSlider(widgets.VBox):
    """Move ``alpha`` from model A (0) to model B (1) and read the merged model's loss and
    accuracy on ``data``. ``bn``, a registered BatchNorm handling (``"reset"``: statistics
    recomputed, ``"repair"``, ``"none"``), corrects each position on ``bn_data`` (default
    ``data``).

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
        self._bn = get_bn(check_bn(bn, model_a))
        self._states = [model_a.state_dict(), model_b.state_dict()]
        self._work = copy.deepcopy(model_a)
        self._data = data
        self._correct = self._bn.correction(
            [model_a, model_b], bn_data if bn_data is not None else data
        )
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
        if self._correct is not None:
            self._correct(self._work, [1.0 - alpha, alpha])
        self.metrics = evaluate(self._work, eval_data=self._data)
        bn = f" after {self._bn.label}" if self._bn.label else ""
        self.readout.value = (
            f"<b>alpha = {alpha:.2f}</b>{bn}: accuracy <b>{100 * self.metrics.accuracy:.1f}%</b>, "
            f"loss {self.metrics.loss:.3f} on {self.metrics.count} images"
        )
