"""How many optimization steps a feature visualization needs: picture quality against cost.

Too few steps leave the seeded starting noise almost untouched and the picture reads as
grey noise; too many waste the interactive budget. :func:`steps_tradeoff` renders the same
channels (same seed, hence the same optimization trajectory) for several step counts,
times each rendering with caching disabled, and scores every picture with
:func:`render_quality`.

The quality measure speaks in the channel's own terms. The objective is the one the
rendering maximizes: lucent's ``channel`` objective without its sign, i.e. the channel's
mean activation over positions, evaluated on the final image (no random transforms,
model in eval mode, normalized by the dataset statistics as :func:`render_channels` does).
It is put on the scale of the training data:

    quality = (objective(render) - mean over data) / (max over data - mean over data)

so 1.0 is as strong as the training image that excites the channel most (by this
objective) and 0.0 is as strong as an average training image. The zero point matters:
the layers here are convolutions before BatchNorm, whose mean activation on real images is
often negative (an MNIST digit is mostly background), so a plain ratio to the best image
would flip sign. The best image is taken by the objective itself, not by
:func:`top_exemplars`' score (the maximum over positions): on 28x28 maps the image with
the strongest local match is often only average in the mean. Renders can exceed 1: they
may fill the whole frame with the pattern the channel likes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator
from torch import nn

from workbench.batching import batches, choose_batch_size
from workbench.data import DataLike
from workbench.evaluation import forward_checked
from workbench.featviz.display import show_image
from workbench.featviz.render import (
    check_channels,
    render_channels,
    resolve_layer,
    unit_objective,
)
from workbench.figures import color_for, figure_for, new_figure, paper_style
from workbench.modules import eval_mode, model_device
from workbench.results import Result
from workbench.vocabulary import keyword_only

__all__ = ["StepsTradeoff", "render_quality", "steps_tradeoff"]


def _layer_output(model: nn.Module, module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``module``'s output for the (normalized) ``inputs``; the caller puts the model in
    eval and inference mode."""
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        forward_checked(model, inputs.to(model_device(model)))
    finally:
        handle.remove()
    return captured[0]


def _data_reference(
    model: nn.Module, layer: str, data: DataLike, channels: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel, the mean and the maximum of the objective over the images of ``data``
    (one streaming pass)."""
    module = resolve_layer(model, layer=layer)
    total, count, best = torch.zeros(len(channels)), 0, None
    with eval_mode(model), torch.inference_mode():
        for inputs, _ in batches(data, choose_batch_size([model], data)):
            out = _layer_output(model, module, inputs)[:, channels].float().cpu()
            means = out.reshape(*out.shape[:2], -1).mean(2)  # (B, channels)
            total += means.sum(0)
            count += len(means)
            top = means.amax(0)
            best = top if best is None else torch.maximum(best, top)
    if best is None:
        raise ValueError("data is empty: the quality measure needs training images.")
    return total / count, best


def _quality(
    objective: torch.Tensor, data_mean: torch.Tensor, data_best: torch.Tensor
) -> torch.Tensor:
    spread = data_best - data_mean
    scaled = (objective - data_mean) / spread.clamp_min(torch.finfo(spread.dtype).tiny)
    return torch.where(spread > 0, scaled, torch.nan)  # a channel constant on the data


@keyword_only(("layer", "channels", "images", "data"))
def render_quality(
    model: nn.Module,
    *,
    layer: str,
    channels: int | Sequence[int],
    images: torch.Tensor,
    data: DataLike,
) -> torch.Tensor:
    """How strongly each rendered image excites its own channel, on the data's scale (see
    the module docstring): 1.0 = as strong as the best image of ``data``, 0.0 = as an
    average one. ``images`` (N, H, W, C) as :func:`render_channels` returns them for
    ``channels``. NaN for a channel whose objective is the same on every image."""
    channels = check_channels(model, layer, channels)
    if images.ndim != 4 or len(images) != len(channels):
        raise ValueError(
            f"images must be (N, H, W, C) with one image per channel: got shape "
            f"{tuple(images.shape)} for {len(channels)} channels."
        )
    data_mean, data_best = _data_reference(model, layer, data, channels)
    return _quality(
        unit_objective(model, layer=layer, images=images, channels=channels), data_mean, data_best
    )


@dataclass(frozen=True)
class StepsTradeoff(Result):
    """Feature visualizations of ``channels`` of ``layer`` after each number of ``steps``:
    ``images[s]`` (N, H, W, C); ``seconds[s]``, the wall-clock time of rendering all N
    channels (uncached), and ``cpu_seconds[s]``, the CPU time the process spent on it (all
    threads; unlike the wall clock, not inflated by other jobs on a shared machine); and
    per step count (rows) and channel (columns): ``quality`` (see
    :func:`render_quality`), ``objective`` (the raw mean activation) and ``contrast`` (the
    std of the image's pixels, a cruder signal: the starting noise has almost none).
    ``data_mean`` and ``data_best`` are the objective's mean and maximum over the data."""

    layer: str
    channels: tuple[int, ...]
    steps: tuple[int, ...]
    images: dict[int, torch.Tensor]
    seconds: dict[int, float]
    cpu_seconds: dict[int, float]
    quality: torch.Tensor
    objective: torch.Tensor
    contrast: torch.Tensor
    data_mean: torch.Tensor
    data_best: torch.Tensor

    def mean_quality(self) -> torch.Tensor:
        """Quality averaged over channels, one value per step count."""
        return self.quality.nanmean(1)

    def to_frame(self) -> pd.DataFrame:
        """One row per step count and channel."""
        rows, cols = self.quality.shape
        return pd.DataFrame(
            {
                "steps": np.repeat(self.steps, cols),
                "channel": np.tile(self.channels, rows),
                "quality": self.quality.reshape(-1).numpy(),
                "objective": self.objective.reshape(-1).numpy(),
                "contrast": self.contrast.reshape(-1).numpy(),
                "seconds": np.repeat([self.seconds[s] for s in self.steps], cols),
                "cpu_seconds": np.repeat([self.cpu_seconds[s] for s in self.steps], cols),
            }
        )

    def plot(self, ax: Axes | None = None, shown: int = 4) -> Figure:
        """Left, the first ``shown`` channels' pictures, one row per step count (quality
        under each); right, mean and worst quality (top) and seconds (bottom) against
        steps. Given ``ax``, only the quality against steps, on it."""
        if ax is not None:
            fig, ax = figure_for(ax)
            with paper_style():
                self._plot_quality(ax)
            return fig
        shown = min(shown, len(self.channels))
        side = 3  # grid columns taken by the two line plots
        rows = len(self.steps)
        fig, axes = new_figure(
            columns=2,
            aspect=max(rows, 4) / (shown + side),
            nrows=rows,
            ncols=shown + side,
            squeeze=False,
        )
        right = axes[0, 0].get_gridspec()[:, shown:].subgridspec(2, 1)
        for ax in axes[:, shown:].flat:
            ax.remove()
        steps = np.array(self.steps)
        with paper_style():
            for r, count in enumerate(self.steps):
                for c in range(shown):
                    ax = axes[r, c]
                    title = f"unit {self.channels[c]}" if r == 0 else None
                    show_image(ax, self.images[count][c], title)
                    ax.set_xlabel(f"{float(self.quality[r, c]):.2f}", fontsize=6, labelpad=1)
                axes[r, 0].set_ylabel(f"{count} steps", fontsize=7)
            ax_q = fig.add_subplot(right[0])
            self._plot_quality(ax_q)
            ax_t = fig.add_subplot(right[1], sharex=ax_q)
            time_color = color_for("", 1)
            ax_t.plot(
                steps, [self.seconds[s] for s in self.steps], "o-", color=time_color, label="wall"
            )
            ax_t.plot(
                steps,
                [self.cpu_seconds[s] for s in self.steps],
                "o--",
                color=time_color,
                label="CPU",
            )
            ax_t.legend(loc="upper left")
            ax_t.set_yscale("log")
            ax_t.set_xticks(steps, [str(s) for s in steps], minor=False)
            ax_t.xaxis.set_minor_locator(NullLocator())
            ax_t.set_xlabel("Optimization steps")
            ax_t.set_ylabel(f"Seconds ({len(self.channels)} channels)")
            fig.suptitle(f"{self.layer}: feature visualization against steps", fontsize=8)
        return fig

    def _plot_quality(self, ax: Axes) -> None:
        """Mean and worst channel's quality against steps (log scale) on ``ax``."""
        steps, color = np.array(self.steps), color_for("quality", 0)
        ax.plot(steps, self.mean_quality().numpy(), "o-", color=color, label="mean")
        worst = np.nanmin(self.quality.numpy(), axis=1)
        ax.plot(steps, worst, "o--", color=color, label="worst channel")
        ax.axhline(1.0, color="0.3", linestyle=":", linewidth=0.8)
        ax.axhline(0.0, color="0.6", linestyle=":", linewidth=0.8)
        ax.set_ylabel("Quality\n(1 = best training image)")
        ax.set_xscale("log", base=2)
        ax.legend(loc="lower right")


def _check_steps(steps: Sequence[int]) -> tuple[int, ...]:
    steps = list(steps)
    if not steps:
        raise ValueError("steps is empty: give at least one step count, e.g. (16, 64, 256).")
    bad = [s for s in steps if isinstance(s, bool) or not isinstance(s, int | np.integer) or s < 1]
    if bad:
        raise ValueError(f"steps must be positive integers; got {bad} in {steps}.")
    return tuple(sorted({int(s) for s in steps}))


@keyword_only(("layer", "data", "channels", "steps", "seed"))
def steps_tradeoff(
    model: nn.Module,
    *,
    layer: str,
    data: DataLike,
    channels: int | Sequence[int],
    steps: Sequence[int] = (8, 16, 32, 64, 128, 256),
    seed: int = 0,
    **render_options,
) -> StepsTradeoff:
    """Render ``channels`` of ``layer`` for each step count in ``steps`` (sorted, without
    repeats) and measure what each costs and how good the pictures are, against the
    images of ``data`` (the training set: it defines what "a strong image" means).

    ``render_options`` go to :func:`render_channels` (``lr``, ``size``, ``progress``);
    caching is always off, so that the seconds are those of the rendering itself.
    """
    channels = check_channels(model, layer, channels)
    steps = _check_steps(steps)
    if "cache" in render_options:
        raise ValueError(
            "steps_tradeoff always renders with cache=False (it times the rendering); "
            "remove the cache option."
        )
    data_mean, data_best = _data_reference(model, layer, data, channels)
    images: dict[int, torch.Tensor] = {}
    seconds: dict[int, float] = {}
    cpu_seconds: dict[int, float] = {}
    for count in steps:
        started, cpu_started = time.perf_counter(), time.process_time()
        images[count] = render_channels(
            model,
            layer=layer,
            channels=channels,
            steps=count,
            seed=seed,
            cache=False,
            **render_options,
        )
        seconds[count] = time.perf_counter() - started
        cpu_seconds[count] = time.process_time() - cpu_started
    objective = torch.stack(
        [unit_objective(model, layer=layer, images=images[s], channels=channels) for s in steps]
    )
    return StepsTradeoff(
        layer=layer,
        channels=tuple(channels),
        steps=steps,
        images=images,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        quality=_quality(objective, data_mean, data_best),
        objective=objective,
        contrast=torch.stack([images[s].flatten(1).std(1) for s in steps]),
        data_mean=data_mean,
        data_best=data_best,
    )
