"""NP Merge in the method registry: ``"np_merge"``, a ``kind="merge"`` method, so that
:func:`~workbench.merge_many`, :func:`~workbench.compare_methods` and the dashboards run
it by name like any other method.

Its options carry the prefix ``learn_`` (``learn_steps``, ``learn_lr``, ...; ``learn_align``
names the alignment it learns on), so that one set of options can configure every
method of a comparison without ambiguity: ``steps`` and ``lr`` are STE's, ``batch_size``
that of the passes. Options left out keep :func:`~workbench.merging.learned.np_merge`'s
defaults, which were chosen on a validation split.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from workbench.alignment.registry import Merged, register_method
from workbench.data import DataLike
from workbench.graph import PermutationSpec
from workbench.merging.learned import np_merge

__all__ = ["np_merge_models"]


@register_method(
    "np_merge",
    kind="merge",
    needs_data=True,
    preserves_function=False,
    quick={"learn_steps": 20, "learn_eval_every": 5},
    color="#882255",
    marker="X",
)
def np_merge_models(
    models: Sequence[nn.Module],
    spec: PermutationSpec,
    data: DataLike,
    *,
    bn: str | None = "reset",
    learn_align: str = "weight",
    learn_combine: str | None = None,
    learn_steps: int | None = None,
    learn_lr: float | None = None,
    learn_batch_size: int | None = None,
    learn_data_fraction: float | None = None,
    learn_eval_every: int | None = None,
    learn_patience: int | None = None,
    val_data: DataLike | None = None,
    seed: int = 0,
    batch_size: int = 500,
    max_batches: int | None = None,
    progress: bool = True,
) -> Merged:
    """The registered ``"np_merge"``: :func:`~workbench.merging.learned.np_merge` of
    ``models`` aligned by ``learn_align`` (its report, with the validation curves and
    coefficients, in ``merge_many``'s ``result.report.details``), with
    its BatchNorm handling ``bn``; a ``learn_<name>`` option is its ``<name>``, and
    ``None`` keeps its default. ``val_data``: the held-out split it stops early on
    (``merge_many`` passes its own; default a split carved from ``data``)."""
    given = {
        "combine": learn_combine,
        "steps": learn_steps,
        "lr": learn_lr,
        "batch_size": learn_batch_size,
        "data_fraction": learn_data_fraction,
        "eval_every": learn_eval_every,
        "patience": learn_patience,
    }
    learning = {name: value for name, value in given.items() if value is not None}
    found = np_merge(
        models, data, learn_align, bn=bn, spec=spec, val_data=val_data, seed=seed,
        eval_batch_size=batch_size,
        max_batches=max_batches, progress=progress, **learning,
    )  # fmt: skip
    return Merged(found.model, found.report)
