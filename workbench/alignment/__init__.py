"""Neuron alignment: weight matching, activation matching and the transforms they apply."""

from workbench.alignment.activation import activation_matching, permutation_from_statistics
from workbench.alignment.api import METHODS, PERMUTATION_METHODS, align, match
from workbench.alignment.cca import CCAAlignment, canonical_correlation, cca_align, cca_maps
from workbench.alignment.folding import fold_batchnorm, unfold_batchnorm_
from workbench.alignment.statistics import GroupStatistics, collect_statistics, observation_points
from workbench.alignment.transforms import (
    Permutation,
    apply_linear_maps,
    apply_permutation,
    compose,
    identity_permutation,
    inverse,
    permute_state,
    random_permutation,
)
from workbench.alignment.weight import weight_matching

__all__ = [
    "METHODS",
    "PERMUTATION_METHODS",
    "CCAAlignment",
    "GroupStatistics",
    "Permutation",
    "activation_matching",
    "align",
    "apply_linear_maps",
    "apply_permutation",
    "canonical_correlation",
    "cca_align",
    "cca_maps",
    "collect_statistics",
    "compose",
    "fold_batchnorm",
    "identity_permutation",
    "inverse",
    "match",
    "observation_points",
    "permutation_from_statistics",
    "permute_state",
    "random_permutation",
    "unfold_batchnorm_",
    "weight_matching",
]
