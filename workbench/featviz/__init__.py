"""Feature visualization of single, matched and merged neurons (on lucent)."""

from workbench.featviz.exemplars import Exemplars, top_exemplars
from workbench.featviz.points import (
    POINTS,
    ObservationPoint,
    describe_point,
    observable_layers,
    observation_point,
)
from workbench.featviz.render import (
    render_channels,
    resolve_layer,
    small_image_transforms,
    unit_objective,
)
from workbench.featviz.study import layer_study, path_study, study_many, unit_study
from workbench.featviz.study_pairs import PairsStudy, pairs_study
from workbench.featviz.study_plots import (
    plot_cross_heatmap,
    plot_inheritance,
    plot_labels,
    plot_morph_strip,
    plot_path,
    plot_unit_grid,
)
from workbench.featviz.study_results import LayerStudy, PathStudy, UnitStudy
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
    "POINTS",
    "Exemplars",
    "LayerComparison",
    "LayerStudy",
    "ObservationPoint",
    "PairsStudy",
    "PathStudy",
    "StepsTradeoff",
    "UnitMatch",
    "UnitStudy",
    "compare_layer",
    "describe_point",
    "layer_exemplars",
    "layer_study",
    "matched_units",
    "observable_layers",
    "observation_point",
    "pairs_study",
    "path_study",
    "plot_cross_heatmap",
    "plot_gallery",
    "plot_inheritance",
    "plot_labels",
    "plot_layer_matches",
    "plot_morph_strip",
    "plot_path",
    "plot_unit_comparison",
    "plot_unit_grid",
    "render_channels",
    "render_layer",
    "render_quality",
    "resolve_layer",
    "small_image_transforms",
    "steps_tradeoff",
    "study_many",
    "top_exemplars",
    "unit_objective",
    "unit_study",
]
