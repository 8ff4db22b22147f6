"""Merging-aware views: what a unit of model A detects, what the unit of B matched to it
detects, and what their merge detects, with and without BatchNorm reset; and, for a whole
layer, how well each unit was matched.

The data functions (:func:`matched_units`, :func:`compare_layer`, :func:`render_layer`,
:func:`layer_exemplars`) return plain results; the plot functions draw them in the paper
style, take an optional ``ax`` where they draw one panel, and return the Figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from workbench.alignment import apply_permutation, collect_statistics, get_method, match
from workbench.cache import ResultCache, resolve_cache
from workbench.data import DataLike
from workbench.featviz.display import montage, pixels, show_image
from workbench.featviz.exemplars import Exemplars, top_exemplars
from workbench.featviz.render import check_channels, render_channels, resolve_layer
from workbench.figures import color_for, figure_for, new_figure, paper_style
from workbench.graph import PermutationSpec
from workbench.merging import average, reset_bn
from workbench.modules import clone, has_batchnorm
from workbench.results import Result
from workbench.vocabulary import keyword_only

__all__ = [
    "LayerComparison",
    "UnitMatch",
    "compare_layer",
    "group_of",
    "layer_exemplars",
    "matched_units",
    "plot_gallery",
    "plot_layer_matches",
    "plot_unit_comparison",
    "render_layer",
]


@dataclass(frozen=True)
class UnitMatch(Result):
    """For each unit ``i`` of model A's ``layer``: the unit of B matched to it
    (``matched[i]``) and the correlation of their activations (``correlation[i]``, after
    the nonlinearity, on the data the match used)."""

    layer: str
    group: str
    method: str
    matched: torch.Tensor
    correlation: torch.Tensor

    def to_frame(self) -> pd.DataFrame:
        """One row per unit of A: its matched unit of B and their correlation."""
        return pd.DataFrame(
            {
                "unit": np.arange(len(self.matched)),
                "matched_unit": self.matched.numpy(),
                "correlation": self.correlation.numpy(),
            }
        )

    def order(self) -> list[int]:
        """A's units from the best matched to the worst."""
        return torch.argsort(self.correlation, descending=True).tolist()

    def plot(self, ax: Axes | None = None) -> Figure:
        """Every matched pair's correlation, best to worst (:func:`plot_layer_matches`)."""
        return plot_layer_matches(self, ax=ax)


def group_of(spec: PermutationSpec, layer: str) -> str:
    """The permutation group of ``spec`` whose channels ``layer`` produces, or a
    ``ValueError`` that says why there is none and names layers that have one."""
    for name, group in spec.groups.items():
        if layer in group.producers:
            return name
    raise ValueError(
        f"Layer {layer!r} produces no permutation group (its outputs reach the logits or "
        f"could not be permuted: {spec.report[:3]}); choose one of "
        f"{[p for g in spec.groups.values() for p in g.producers][:8]}."
    )


def _match_layer(model_a, model_b, layer, data, method, spec):
    resolve_layer(model_a, layer=layer)
    result = match(model_a, model_b, method=method, data=data, spec=spec)
    perm, spec = result.permutation, result.spec
    group = group_of(spec, layer)
    stats = collect_statistics(
        [model_a, model_b], data=data, spec=spec, groups=[group], progress=False
    )
    correlation = stats[group].correlation(0, 1)
    units = torch.arange(len(perm[group]))
    found = UnitMatch(layer, group, method, perm[group], correlation[units, perm[group]].float())
    return found, perm, spec


@keyword_only(("layer", "data", "method", "spec"))
def matched_units(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    layer: str,
    data: DataLike,
    method: str = "weight",
    spec: PermutationSpec | None = None,
) -> UnitMatch:
    """Which unit of ``model_b`` ``method`` matches to each unit of ``model_a``'s ``layer``
    and how strongly their activations correlate on ``data``."""
    return _match_layer(model_a, model_b, layer, data, method, spec)[0]


@dataclass
class LayerComparison:
    """A layer seen in four models whose unit ``i`` is comparable: A, B with its units put
    in A's order (unit ``i`` of it is B's ``match.matched[i]``), their average, and the
    average after RESET (when the models have BatchNorm)."""

    layer: str
    match: UnitMatch
    models: dict[str, nn.Module]


def _spec_key(spec: PermutationSpec) -> dict:
    """What of a given spec a cache key needs: all of it but its verification report
    (which records, among others, how long the verification took)."""
    return {k: v for k, v in spec.to_dict().items() if k != "verification"}


@keyword_only(("layer", "data", "method", "spec"))
def compare_layer(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    layer: str,
    data: DataLike,
    method: str = "weight",
    spec: PermutationSpec | None = None,
    cache: ResultCache | bool = True,
) -> LayerComparison:
    """Match B to A, merge them, and collect the four models for side-by-side views.

    What costs passes over ``data`` (the matching, the units' correlations and the merged
    model's RESET statistics) is cached on disk (``cache`` as in
    :func:`~workbench.lmc_curve`), keyed by both models, the data, the method, the layer
    and ``spec``; a second call rebuilds the four models from it without a pass."""
    resolve_layer(model_a, layer=layer)
    store = resolve_cache(cache)
    key = store.key(
        models=[model_a, model_b],
        data=data,
        method=get_method(method),
        layer=layer,
        spec="traced" if spec is None else spec,
    )

    def compute() -> tuple[dict[str, torch.Tensor], dict]:
        found, perm, used = _match_layer(model_a, model_b, layer, data, method, spec)
        tensors = {"matched": found.matched, "correlation": found.correlation}
        tensors |= {f"perm/{group}": p.clone() for group, p in perm.items()}
        merged = average([model_a, apply_permutation(model_b, spec=used, perm=perm)])
        if has_batchnorm(merged):
            reset = reset_bn(merged, data=data)
            tensors |= {f"reset/{name}": b for name, b in reset.named_buffers()}
        return tensors, {"group": found.group, "spec": used.to_dict()}

    tensors, meta = store.get_or_compute(
        "featviz-compare", key, compute, expect=("matched", "correlation")
    )
    used = PermutationSpec.from_dict(meta["spec"])
    perm = {name[5:]: t for name, t in tensors.items() if name.startswith("perm/")}
    found = UnitMatch(layer, meta["group"], method, tensors["matched"], tensors["correlation"])
    aligned = apply_permutation(model_b, spec=used, perm=perm)
    merged = average([model_a, aligned])
    models = {"A": model_a, "B (matched)": aligned, "merged": merged}
    if has_batchnorm(merged):
        reset = clone(merged)
        buffers = dict(reset.named_buffers())
        for name, value in tensors.items():
            if name.startswith("reset/"):
                buffers[name[6:]].copy_(value)
        models["merged + RESET"] = reset
    return LayerComparison(layer, found, models)


def render_layer(
    comparison: LayerComparison,
    units: Sequence[int],
    steps: int = 128,
    seed: int = 0,
    **options,
) -> dict[str, torch.Tensor]:
    """Feature visualizations of ``units`` in each of the comparison's models (one batched
    run per model; cached per channel)."""
    units = check_channels(comparison.models["A"], comparison.layer, units)
    return {
        name: render_channels(
            model, layer=comparison.layer, channels=units, steps=steps, seed=seed, **options
        )
        for name, model in comparison.models.items()
    }


def layer_exemplars(
    comparison: LayerComparison, data: DataLike, units: Sequence[int], k: int = 6, **options
) -> dict[str, Exemplars]:
    """The top-``k`` images of ``data`` for ``units`` in each of the comparison's models."""
    return {
        name: top_exemplars(
            model, layer=comparison.layer, data=data, channels=units, k=k, **options
        )
        for name, model in comparison.models.items()
    }


def plot_unit_comparison(
    comparison: LayerComparison,
    unit: int,
    images: Mapping[str, torch.Tensor],
    exemplars: Mapping[str, Exemplars] | None = None,
    units: Sequence[int] | None = None,
    *,
    into: Figure | None = None,
) -> Figure:
    """Unit ``unit`` of A beside its match in B and the merged unit: feature
    visualizations (top row) and dataset exemplars (bottom row). ``images`` and
    ``exemplars`` come from :func:`render_layer` / :func:`layer_exemplars` for ``units``
    (default: just ``[unit]``). ``into``: a figure this function drew for the same
    comparison, whose images and titles are replaced in place (a dashboard stepping
    through units redraws them only) and which is returned."""
    units = list(units) if units is not None else [unit]
    if unit not in units:
        raise ValueError(f"Unit {unit} was not rendered; rendered units: {units[:10]}.")
    row = units.index(unit)
    names = list(comparison.models)
    rows = 2 if exemplars else 1
    if into is None:
        fig, axes = new_figure(
            columns=2, aspect=0.48 if exemplars else 0.28, nrows=rows, ncols=len(names)
        )
    else:
        fig, axes = into, np.array(into.axes)
    axes = axes.reshape(rows, len(names))
    matched = int(comparison.match.matched[unit])
    correlation = float(comparison.match.correlation[unit])
    panels = [(0, name, images[name][row]) for name in names]
    if exemplars:
        panels += [(1, name, montage(exemplars[name].images[row])) for name in names]
    with paper_style():
        for r, name, image in panels:
            ax = axes[r, names.index(name)]
            title = f"{name}: unit {matched if name.startswith('B') else unit}" if r == 0 else None
            if into is None:
                show_image(ax, image, title)
                continue
            ax.images[0].set_data(pixels(image))
            ax.images[0].autoscale()
            if title:
                ax.set_title(title, fontsize=7)
        if exemplars:
            axes[1, 0].set_ylabel("top images", fontsize=7)
        fig.suptitle(
            f"{comparison.layer}, {comparison.match.method} matching: "
            f"correlation of A's unit {unit} with B's unit {matched} = {correlation:.2f}",
            fontsize=8,
        )
    return fig


def plot_layer_matches(match: UnitMatch, ax: Axes | None = None) -> Figure:
    """The correlation of every matched pair of the layer, sorted from best to worst, so
    that well and badly matched units stand out."""
    fig, ax = figure_for(ax)
    values = match.correlation[match.order()].numpy()
    with paper_style():
        ax.bar(np.arange(len(values)), values, width=1.0, color=color_for(match.method))
        ax.axhline(
            float(np.median(values)),
            color="0.3",
            linestyle="--",
            linewidth=0.8,
            label=f"median {np.median(values):.2f}",
        )
        ax.set_xlabel(f"Units of {match.layer}, sorted by match quality")
        ax.set_ylabel("Correlation with matched unit")
        ax.set_ylim(min(0.0, float(values.min())), 1.0)
        ax.legend(loc="upper right")
    return fig


def plot_gallery(
    images: torch.Tensor, titles: Sequence[str] | None = None, ncols: int = 8
) -> Figure:
    """A grid of images (N, H, W, C) in [0, 1], e.g. a layer's feature visualizations."""
    n = len(images)
    if titles is not None and len(titles) != n:
        raise ValueError(f"Got {len(titles)} titles for {n} images.")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = new_figure(columns=2, aspect=nrows / ncols, nrows=nrows, ncols=ncols)
    axes = np.atleast_1d(axes).reshape(-1)
    with paper_style():
        for i, ax in enumerate(axes):
            if i < n:
                show_image(ax, images[i], titles[i] if titles else None)
            else:
                ax.axis("off")
    return fig
