"""Activation matching (Git Re-Basin; Jordan et al., REPAIR): pair each channel of model B
with the channel of model A whose activations it correlates with most, group by group."""

from __future__ import annotations

import torch
from torch import nn

from workbench.alignment.group_statistics import GroupStatistics
from workbench.alignment.registry import register_method
from workbench.alignment.statistics import collect_statistics
from workbench.alignment.weight import assignment
from workbench.data import DataLike
from workbench.figures import PALETTE
from workbench.graph import PermutationSpec, resolve_spec
from workbench.graph.transforms import Permutation
from workbench.validation import check_models, check_pass
from workbench.vocabulary import keyword_only

__all__ = ["activation_matching", "permutation_from_statistics"]


def permutation_from_statistics(
    statistics: dict[str, GroupStatistics], spec: PermutationSpec
) -> Permutation:
    """For each group, the assignment of B's channels to A's maximizing total correlation
    (within the group's blocks)."""
    return {
        name: assignment(stats.correlation(0, 1), spec.groups[name].blocks)
        for name, stats in statistics.items()
    }


@register_method(
    "activation",
    needs_data=True,
    preserves_function=True,
    uses_statistics=True,
    color=PALETTE["green"],
    marker="^",
)
@keyword_only(("data", "spec"))
def activation_matching(
    model_a: nn.Module,
    model_b: nn.Module,
    *,
    data: DataLike,
    spec: PermutationSpec | None = None,
    statistics: dict[str, GroupStatistics] | None = None,
    batch_size: int | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> Permutation:
    """The permutation of ``model_b``'s channels that best correlates its activations with
    ``model_a``'s on ``data`` (one streaming pass; memory O(channels^2) per group).

    ``spec`` defaults to ``permutation_spec(model_a, <a batch of data>)``.
    ``statistics`` (joint, A first, from :func:`collect_statistics`) saves the data pass
    when the caller has them.
    """
    check_models([model_a, model_b])
    if statistics is None:
        check_pass(data, batch_size, max_batches)
    spec = resolve_spec(model_a, spec, data=data)
    if statistics is None:
        statistics = collect_statistics(
            [model_a, model_b],
            data=data,
            spec=spec,
            within=False,  # correlations between the models need no more
            batch_size=batch_size,
            max_batches=max_batches,
            progress=progress,
        )
    perm = permutation_from_statistics(statistics, spec)
    for name, group in spec.groups.items():  # a group never observed keeps its order
        perm.setdefault(name, torch.arange(group.size))
    return perm
