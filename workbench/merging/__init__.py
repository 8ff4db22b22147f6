"""Merging models: in weight space (:mod:`~workbench.merging.weights`), renormalizing the
result (:mod:`~workbench.merging.renorm`: the registry of BatchNorm handlings, RESET,
REPAIR), and N models aligned into one
neuron order and averaged (:mod:`~workbench.merging.many`) or merged with learned
per-parameter coefficients (:mod:`~workbench.merging.learned`: NP Merge, registered as the
method ``"np_merge"`` by :mod:`~workbench.merging.learned_method`); output ensembles
of the same models, the ceiling a merge is measured against
(:mod:`~workbench.merging.ensemble`)."""

from workbench.merging.ensemble import Ensemble, ensemble
from workbench.merging.learned_method import np_merge, np_merge_models
from workbench.merging.many import GAMMA_GRID, cca_merge, merge_many
from workbench.merging.pipeline import MergeReport, MergeResult
from workbench.merging.renorm import (
    BatchNormHandling,
    bn_modes,
    check_bn,
    get_bn,
    register_bn,
    repair,
    repair_,
    repair_points,
    reset_bn,
    reset_bn_,
    unregister_bn,
)
from workbench.merging.weights import average, interpolate, load_interpolation_
from workbench.merging.zipping import zipit, zipit_merge

__all__ = [
    "GAMMA_GRID",
    "BatchNormHandling",
    "Ensemble",
    "MergeReport",
    "MergeResult",
    "average",
    "bn_modes",
    "cca_merge",
    "check_bn",
    "ensemble",
    "get_bn",
    "interpolate",
    "load_interpolation_",
    "merge_many",
    "np_merge",
    "np_merge_models",
    "register_bn",
    "repair",
    "repair_",
    "repair_points",
    "reset_bn",
    "reset_bn_",
    "unregister_bn",
    "zipit",
    "zipit_merge",
]
