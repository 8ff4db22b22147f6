"""Neuron alignment: the registry of methods (weight matching, activation matching, CCA,
OT fusion, C2M3, STE, and any registered later), one entry point for them, and the
transforms they apply.

The built-in methods register themselves when their modules are imported, in this order:
"none" (with the registry), "weight", "activation", "c2m3", "cca", "ot", "ste".
"""

from workbench.alignment.activation import activation_matching, permutation_from_statistics
from workbench.alignment.api import AlignmentResult, align, apply_alignment, map_model, match
from workbench.alignment.c2m3 import c2m3_matching, match_to_universe
from workbench.alignment.cca import CCAAlignment, canonical_correlation, cca_align, cca_maps
from workbench.alignment.folding import fold_batchnorm
from workbench.alignment.group_statistics import GroupStatistics
from workbench.alignment.ot import ot_fusion, ot_maps
from workbench.alignment.registry import (
    AlignmentMethod,
    Merged,
    canonical_method,
    get_method,
    matching_methods,
    methods,
    pairwise_methods,
    register_method,
    unregister_method,
)
from workbench.alignment.statistics import collect_statistics, observation_points
from workbench.alignment.ste import ste_matching
from workbench.alignment.weight import weight_matching
from workbench.graph.transforms import (
    GroupMap,
    LinearMaps,
    Permutation,
    apply_linear_maps,
    apply_permutation,
    compose,
    general_groups,
    identity_permutation,
    inverse,
    permute_state,
    random_permutation,
)

__all__ = [
    "AlignmentMethod",
    "AlignmentResult",
    "CCAAlignment",
    "GroupMap",
    "GroupStatistics",
    "LinearMaps",
    "Merged",
    "Permutation",
    "activation_matching",
    "align",
    "apply_alignment",
    "apply_linear_maps",
    "apply_permutation",
    "c2m3_matching",
    "canonical_correlation",
    "canonical_method",
    "cca_align",
    "cca_maps",
    "collect_statistics",
    "compose",
    "fold_batchnorm",
    "general_groups",
    "get_method",
    "identity_permutation",
    "inverse",
    "map_model",
    "match",
    "match_to_universe",
    "matching_methods",
    "methods",
    "observation_points",
    "ot_fusion",
    "ot_maps",
    "pairwise_methods",
    "permutation_from_statistics",
    "permute_state",
    "random_permutation",
    "register_method",
    "ste_matching",
    "unregister_method",
    "weight_matching",
]
