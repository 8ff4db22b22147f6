"""Feature visualization of single, matched and merged neurons (on lucent)."""

from workbench.featviz.exemplars import Exemplars, top_exemplars
from workbench.featviz.render import render_channels, resolve_layer, small_image_transforms
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
    "UnitMatch",
    "compare_layer",
    "layer_exemplars",
    "matched_units",
    "plot_gallery",
    "plot_layer_matches",
    "plot_unit_comparison",
    "render_channels",
    "render_layer",
    "resolve_layer",
    "small_image_transforms",
    "top_exemplars",
]
