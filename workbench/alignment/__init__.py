"""Neuron alignment: weight matching, activation matching and the transforms they apply."""

from workbench.alignment.activation import activation_matching, permutation_from_statistics
from workbench.alignment.api import METHODS, align, match
from workbench.alignment.statistics import GroupStatistics, collect_statistics, observation_points
from workbench.alignment.transforms import (
    Permutation,
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
    "GroupStatistics",
    "Permutation",
    "activation_matching",
    "align",
    "apply_permutation",
    "collect_statistics",
    "compose",
    "identity_permutation",
    "inverse",
    "match",
    "observation_points",
    "permutation_from_statistics",
    "permute_state",
    "random_permutation",
    "weight_matching",
]
