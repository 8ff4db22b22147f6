"""Data splits across models: each model of a population trained on its own part of the data.

:func:`partition` divides a dataset into parts in one of the two ways the model-merging and
federated-learning literature compares merges on:

* ``"disjoint"``: each part holds a disjoint set of classes (all examples of a class in one
  part), the classes dealt round-robin in a seeded random order;
* ``"dirichlet"``: each class's examples are shared among the parts in proportions drawn
  from a symmetric Dirichlet(``alpha``) distribution, per class (Hsu et al., 2019). Small
  ``alpha`` gives skewed parts (most of a class in one part), large ``alpha`` near-equal
  ones.

Every example lands in exactly one part. Each part records how it was made and what it
holds in its ``.partition`` attribute, a JSON-ready dict (see :func:`partition`), which
:func:`workbench.train_models` puts into the checkpoint metadata of the model trained on it.

(A room of its own, above :mod:`workbench.validation`, whose argument checks it uses.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, Subset

from workbench.data import TensorImageDataset
from workbench.data.images import class_labels
from workbench.validation import check_choice, check_data, check_int, check_number
from workbench.vocabulary import keyword_only

__all__ = ["SPLITS", "partition"]

SPLITS = ("disjoint", "dirichlet")


@keyword_only(renamed={"alpha": "concentration"})
def partition(
    dataset: Dataset, parts: int, how: str = "disjoint", concentration: float = 0.5, seed: int = 0
) -> list[Dataset]:
    """Divide ``dataset`` into ``parts`` datasets, every example in exactly one of them.

    ``how="disjoint"``: the classes present, in a random order drawn from ``seed``, are
    dealt round-robin to the parts, and each part holds every example of its classes (so
    ``parts`` may not exceed the number of classes). ``how="dirichlet"``: for each class,
    proportions ``p ~ Dirichlet(concentration, ..., concentration)`` are drawn (a ``numpy`` Generator seeded
    with ``seed``) and the class's examples, in a random order, are cut into the parts by
    them; ``concentration`` must be a finite number > 0 (ignored by ``"disjoint"``). A part left
    with no example at all is an error (a smaller number of parts, a larger ``concentration`` or
    another seed avoids it).

    A :class:`~workbench.data.TensorImageDataset` gives TensorImageDatasets (its ``.info``
    and split name kept; the examples in the dataset's order); another dataset gives
    ``torch.utils.data.Subset``\\ s (its ``.info`` copied when it has one). Each part carries
    ``.partition``: ``{"split": how, "alpha": concentration (None for "disjoint"), "seed": seed,
    "part": i, "parts": parts, "classes": [the classes it holds], "counts": [its number of
    examples of each class 0..num_classes-1]}``. The same ``seed`` gives the same parts;
    ``dataset`` is not modified.
    """
    if isinstance(dataset, DataLoader):
        raise TypeError(
            "partition needs a Dataset, got a DataLoader; pass its .dataset and make loaders "
            "of the parts."
        )
    check_data(dataset, name="dataset")
    parts = check_int("parts", parts, minimum=2)
    check_choice("how", how, SPLITS)
    concentration = check_number("concentration", concentration, low=0.0, low_inclusive=False)
    seed = check_int("seed", seed)
    labels = class_labels(dataset)
    classes = np.unique(labels)
    if len(classes) and classes[0] < 0:
        raise ValueError(
            f"The dataset has negative labels ({int(classes[0])}); expected classes >= 0."
        )
    info = getattr(dataset, "info", None)
    num_classes = max(int(getattr(info, "num_classes", 0) or 0), int(classes[-1]) + 1)
    rng = np.random.default_rng(seed)
    if how == "disjoint":
        if parts > len(classes):
            raise ValueError(
                f"parts={parts} disjoint parts need at least {parts} classes, but the dataset "
                f"has {len(classes)}; pass parts <= {len(classes)}, or how='dirichlet'."
            )
        order = rng.permutation(classes)
        indices = [np.flatnonzero(np.isin(labels, order[i::parts])) for i in range(parts)]
    else:
        shares: list[list[np.ndarray]] = [[] for _ in range(parts)]
        for cls in classes:
            members = rng.permutation(np.flatnonzero(labels == cls))
            proportions = rng.dirichlet(np.full(parts, concentration))
            cuts = np.round(np.cumsum(proportions)[:-1] * len(members)).astype(int)
            for share, piece in zip(shares, np.split(members, cuts), strict=True):
                share.append(piece)
        indices = [np.sort(np.concatenate(share)) for share in shares]
    empty = [i for i, idx in enumerate(indices) if len(idx) == 0]
    if empty:
        raise ValueError(
            f"Parts {empty} of the Dirichlet(concentration={concentration:g}) split (seed={seed}) received no "
            "example; pass a larger concentration, fewer parts or another seed."
        )
    return [
        _part(dataset, idx, labels, num_classes, how, concentration, seed, i, parts)
        for i, idx in enumerate(indices)
    ]


def _part(
    dataset: Dataset,
    indices: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    how: str,
    alpha: float,
    seed: int,
    part: int,
    parts: int,
) -> Dataset:
    counts = np.bincount(labels[indices], minlength=num_classes)
    record: dict[str, Any] = {
        "split": how,
        "alpha": alpha if how == "dirichlet" else None,
        "seed": seed,
        "part": part,
        "parts": parts,
        "classes": np.flatnonzero(counts).tolist(),
        "counts": counts.tolist(),
    }
    if isinstance(dataset, TensorImageDataset):
        result: Dataset = dataset.subset(indices, dataset.split)
    else:
        result = Subset(dataset, indices.tolist())
        if hasattr(dataset, "info"):
            result.info = dataset.info
    result.partition = record
    return result
