"""NP Merge's one entry point: the registered method ``"np_merge"``, a ``kind="merge"``
method, so that :func:`~workbench.merge_many`, :func:`~workbench.compare_methods`, the
dashboards and the command line run it by name like any other method, and
:func:`np_merge`, a thin wrapper over ``merge_many(models, data, "np_merge", ...)``.

Its options are its own (:func:`~workbench.compare_methods` gives each method its own
group): ``align`` names the alignment it learns on and ``align_options`` that alignment's
options (CCA's ``gamma``); ``steps``, ``lr``, ``scheme``, ``data_fraction``,
``eval_every`` and ``patience`` are the learning's, and ``learn_batch_size`` its examples
per step (``batch_size`` is that of the passes that learn nothing, as for every method).
The former names ``learn_steps``, ``learn_lr``, ... keep working for one release with a
``FutureWarning``. Defaults were chosen on a validation split (``benchmarks/np_merge.py``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from workbench.alignment.options import renamed_options, split_options
from workbench.alignment.registry import get_method, register_method
from workbench.alignment.returned import Merged
from workbench.data import DataLike
from workbench.graph import PermutationSpec
from workbench.merging.learned import learn_merge
from workbench.merging.many import merge_many
from workbench.merging.pipeline import MergeResult
from workbench.validation import check_int
from workbench.vocabulary import keyword_only

__all__ = ["np_merge", "np_merge_models"]

_FORMER = ("align", "steps", "lr", "data_fraction", "eval_every", "patience")


@register_method(
    "np_merge",
    kind="merge",
    needs_data=True,
    preserves_function=False,
    quick={"steps": 20, "eval_every": 5},
    renamed={
        **{f"learn_{name}": name for name in _FORMER},
        "learn_combine": "scheme",
        "combine": "scheme",
    },
    color="#882255",
    marker="X",
)
@keyword_only(("spec", "data"))
def np_merge_models(
    models: Sequence[nn.Module],
    *,
    spec: PermutationSpec,
    data: DataLike,
    bn: str | None = "reset",
    align: str = "weight",
    align_options: Mapping[str, Any] | None = None,
    scheme: str = "successive",
    steps: int = 100,
    lr: float = 0.03,
    learn_batch_size: int = 64,
    data_fraction: float = 1.0,
    eval_every: int = 10,
    patience: int | None = 5,
    reference: int = 0,
    val_data: DataLike | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    batch_size: int | None = None,
    max_batches: int | None = None,
    progress: bool = True,
) -> Merged:
    """The registered ``"np_merge"``: ``models`` aligned by ``align`` (with
    ``align_options``), merged with learned per-entry coefficients
    (:func:`~workbench.merging.learned.learn_merge`), BatchNorm handled by ``bn``; its
    report (validation curves, coefficients) is ``merge_many``'s
    ``result.report.details``. ``val_data``: the held-out split it stops early on
    (``merge_many`` passes its own; else a ``val_fraction`` of ``data``)."""
    check_int("learn_batch_size", learn_batch_size, minimum=1)
    found = learn_merge(
        models, data, align, bn=bn, spec=spec, align_options=align_options, scheme=scheme,
        steps=steps, lr=lr, batch_size=learn_batch_size, data_fraction=data_fraction,
        eval_every=eval_every, patience=patience, reference=reference, val_data=val_data,
        val_fraction=val_fraction, eval_batch_size=batch_size, max_batches=max_batches,
        seed=seed, progress=progress,
    )  # fmt: skip
    return Merged(found.model, found.report)


@keyword_only(("data", "align"))
def np_merge(
    models: Sequence[nn.Module],
    *,
    data: DataLike,
    align: str = "weight",
    batch_size: int = 64,
    eval_batch_size: int | None = None,
    **options: Any,
) -> MergeResult:
    """NP Merge of ``models`` (N >= 2), ``merge_many(models, data, "np_merge", ...)``
    (:mod:`~workbench.merging.learned` describes the method): ``result.model`` and
    ``result.report``, NP Merge's own (the validation curve of every learning problem in
    ``report.curves``, per-layer quantiles of the learned coefficients in
    ``report.coefficients``, the chosen hyperparameters, seconds).

    ``align``: any registered alignment method; ``options`` that NP Merge or
    :func:`~workbench.merge_many` do not take are the alignment's (a hyperparameter it
    searches, CCA's ``gamma``, is chosen on the validation split by the plain average's
    accuracy). NP Merge's: ``bn``, ``scheme``, ``steps``, ``lr``, ``data_fraction``,
    ``eval_every``, ``patience``, ``reference`` (or ``"best"``), ``val_data``,
    ``val_fraction``, ``seed``, ``max_batches``, ``progress`` (see
    :func:`np_merge_models`). ``batch_size``: examples per learning step;
    ``eval_batch_size``: the passes that learn nothing (statistics, validation, RESET).
    With ``steps=0`` nothing is learned and no split is made: the result is
    ``merge_many(models, data, align, bn=bn)``'s model exactly. Inputs are not modified.
    """
    options = renamed_options(get_method("np_merge"), options)
    own, align_options = split_options("np_merge", options, merge_many)
    result = merge_many(
        models, data=data, method="np_merge", batch_size=eval_batch_size, align=align,
        align_options=align_options, learn_batch_size=batch_size, **own,
    )  # fmt: skip
    return MergeResult(result.model, result.report.details)
