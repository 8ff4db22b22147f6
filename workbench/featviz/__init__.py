"""Feature visualization of single, matched and merged neurons (on lucent)."""

from workbench.featviz.exemplars import Exemplars, top_exemplars
from workbench.featviz.render import render_channels, resolve_layer, small_image_transforms
from workbench.featviz.tradeoff import StepsTradeoff, render_quality, steps_tradeoff
from workbench.featviz.views import (
    LayerComparison,
    UnitMatch,
    compare_layer,
    layer_exemplars,
    matched_units,
    plot_gallery,
    plot_layer_matches,
    plot_unit_comparison,
    render_layer,
)

__all__ = [
    "Exemplars",
    "LayerComparison",
    "StepsTradeoff",
    "UnitMatch",
    "compare_layer",
    "layer_exemplars",
    "matched_units",
    "plot_gallery",
    "plot_layer_matches",
    "plot_unit_comparison",
    "render_channels",
    "render_layer",
    "render_quality",
    "resolve_layer",
    "small_image_transforms",
    "steps_tradeoff",
    "top_exemplars",
]
