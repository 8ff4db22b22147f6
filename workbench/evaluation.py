"""Loss and accuracy of a classifier over a dataset, jointly and per part of a data split."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from workbench.batching import batches, choose_batch_size
from workbench.data import DataLike
from workbench.modules import eval_mode, model_device
from workbench.validation import (
    check_data,
    check_int,
    check_labels,
    check_logits,
    check_models,
    check_number,
)
from workbench.vocabulary import MEASURED, keyword_only


@dataclass(frozen=True)
class Metrics:
    """Mean cross-entropy ``loss`` and ``accuracy`` (in [0, 1]) over ``count`` examples."""

    loss: float
    accuracy: float
    count: int

    @property
    def diverged(self) -> bool:
        """True when the loss is NaN or infinite: the model's outputs blew up."""
        return not math.isfinite(self.loss)


@keyword_only(("eval_data", "batch_size", "max_batches"), moved=MEASURED)
def evaluate(
    model: nn.Module,
    *,
    eval_data: DataLike,
    batch_size: int | None = None,
    max_batches: int | None = None,
) -> Metrics:
    """Cross-entropy loss and accuracy of ``model`` in eval mode over ``eval_data``.

    Runs on the model's device; the model is left as it was (same mode, same device).
    ``batch_size`` ``None`` fits the batches to a memory budget
    (:func:`~workbench.batching.choose_batch_size`: 500 for small images, fewer for large
    ones); the numbers do not depend on it. Labels must be class indices the model scores (:func:`~workbench.validation.check_labels`:
    an ignore index such as -100, one-hot rows or a class out of range are refused).
    """
    check_models(model)
    if batch_size is not None:
        check_int("batch_size", batch_size, minimum=1)
    if max_batches is not None:
        check_int("max_batches", max_batches, minimum=1)
    check_fits(model, eval_data)
    batch_size = choose_batch_size([model], eval_data, batch_size=batch_size)
    device = model_device(model)
    loss_sum, correct, count = 0.0, 0, 0
    with eval_mode(model), torch.inference_mode():
        for inputs, labels in batches(eval_data, batch_size, max_batches=max_batches):
            logits = forward_checked(model, inputs.to(device))
            labels = check_labels(labels, logits.shape[1], count=len(logits)).to(device)
            loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
            count += len(labels)
    if count == 0:
        raise ValueError("Cannot evaluate on an empty dataset: it yielded no examples.")
    return Metrics(loss_sum / count, correct / count, count)


def check_fits(
    model: nn.Module, data: DataLike, name: str = "data", *, labels: bool | None = True
) -> int:
    """Refuse, before any work, ``data`` that cannot give correct numbers for ``model``:
    empty, inputs that do not fit it, or (``labels=True``, for anything that computes a
    loss or an accuracy) labels it does not score, *anywhere* in the data: checked whole
    where the labels are listed (in-memory datasets, datasets with ``.targets``), batch by
    batch while streaming otherwise (:func:`~workbench.validation.check_data`). Returns the
    number of classes the model scores, from one forward pass on the first two inputs.
    ``labels=None``: the labels are checked if the data has them (data that serves
    statistics and, where a validation split is carved from it, accuracies)."""
    check_data(data, name=name)
    first = next(iter(batches(data, batch_size=2, max_batches=1)), None)
    if first is None or len(first[0]) == 0:
        raise ValueError(
            f"The {name} is empty (it yielded no examples); pass a dataset with at least "
            "one example."
        )
    with eval_mode(model), torch.inference_mode():
        logits = forward_checked(model, first[0][:2].to(model_device(model)))
    if labels or (labels is None and first[1] is not None):
        check_data(data, num_classes=logits.shape[1], labels=True, name=name)  # whole first
        check_labels(first[1], logits.shape[1], name)
    return logits.shape[1]


def forward_checked(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``model(inputs)`` as class scores ``(batch, classes)`` (another kind of output is a
    clear error: :func:`~workbench.validation.check_logits`), turning a shape mismatch
    into an error that names both shapes."""
    try:
        return check_logits(model(inputs), model)
    except RuntimeError as exc:
        if "shape" not in str(exc) and "size" not in str(exc):
            raise
        raise ValueError(
            f"{type(model).__name__} cannot take inputs of shape {tuple(inputs.shape)} "
            f"({str(exc).splitlines()[0]}). Check that the data matches the model's "
            "in_channels and image size."
        ) from exc


def same_function(
    model: nn.Module, other: nn.Module, data: DataLike, rtol: float = 1e-4, examples: int = 64
) -> bool:
    """Whether ``other`` computes ``model``'s function on the first ``examples`` of
    ``data``: the relative L2 error of its outputs is below ``rtol``.

    A permuted copy of a model passes (float32 sums in another order differ by about
    1e-7); a model mapped by general linear maps through ReLUs (CCA) does not.
    """
    inputs, _ = next(iter(batches(data, batch_size=examples, max_batches=1)))
    outputs = []
    for candidate in (model, other):
        with eval_mode(candidate), torch.inference_mode():
            device = model_device(candidate)
            outputs.append(forward_checked(candidate, inputs.to(device)).float().cpu())
    error = torch.linalg.vector_norm(outputs[1] - outputs[0])
    return bool(error <= rtol * torch.linalg.vector_norm(outputs[0]))


def part_class_weights(parts: Sequence[Any]) -> list[dict[int, float | None]]:
    """How much each class counts for each part of a split (see :func:`per_part_accuracy`):
    ``{class: weight}`` per part; ``None`` weights stand for "the evaluation data's own count
    of the class". A part is a dataset (the per-class counts that
    :func:`workbench.partition` recorded in its ``.partition``, else its labels counted), a
    mapping ``{class: weight}`` or a collection of class indices."""
    if isinstance(parts, (str, bytes, Dataset)) or not isinstance(parts, Sequence) or not parts:
        raise TypeError(
            "parts must be a non-empty sequence of parts: datasets (e.g. wb.partition(...)), "
            f"class-index collections or {{class: weight}} mappings; got {type(parts).__name__}."
        )
    found = []
    for index, part in enumerate(parts):
        where = f"parts[{index}]"
        if isinstance(part, Dataset):
            record = getattr(part, "partition", None)
            if isinstance(record, Mapping) and "counts" in record:
                counts = torch.as_tensor(record["counts"], dtype=torch.long)
            else:
                check_data(part, name=where)
                labels = [check_labels(y, 2**62, where) for _, y in batches(part)]
                counts = torch.bincount(torch.cat(labels))
            weights = {int(c): float(counts[c]) for c in counts.nonzero().reshape(-1)}
        elif isinstance(part, Mapping):
            weights = {
                check_int(f"{where} class", c, minimum=0): check_number(
                    f"{where}[{c!r}]", w, low=0.0
                )
                for c, w in part.items()
            }
        elif isinstance(part, Iterable) and not isinstance(part, (str, bytes)):
            items = part.tolist() if isinstance(part, torch.Tensor) else list(part)
            weights = {check_int(f"{where} class", c, minimum=0): None for c in items}
        else:
            raise TypeError(
                f"{where} is a {type(part).__name__}; expected a dataset, a collection of class "
                "indices or a {class: weight} mapping."
            )
        if not any(w is None or w > 0 for w in weights.values()):
            raise ValueError(f"{where} holds no class (or only zero weights).")
        found.append(weights)
    return found


@keyword_only(("eval_data", "parts", "batch_size"), moved=MEASURED)
def per_part_accuracy(
    model: nn.Module,
    *,
    eval_data: DataLike,
    parts: Sequence[Any],
    batch_size: int | None = None,
) -> list[float]:
    """The accuracy of ``model`` on ``eval_data`` as each part of a split sees it, one number
    per part: the per-class accuracies on ``eval_data`` averaged with the part's weight of
    each class.

    A part given as a collection of class indices weights its classes by their counts in
    ``eval_data``: the result is exactly the accuracy on its examples of those classes. A
    part given as a dataset (a part from :func:`workbench.partition`, e.g. of the training
    set) weights each class by its number of examples in the part: for a disjoint split that
    is the accuracy on the part's classes, for a Dirichlet split the accuracy under the
    part's label distribution. A ``{class: weight}`` mapping gives the weights directly.
    Classes that ``eval_data`` lacks are left out; a part sharing no class with it is an
    error. One pass over ``eval_data``; the model is left as it was.
    """
    check_models(model)
    if batch_size is not None:
        check_int("batch_size", batch_size, minimum=1)
    check_data(eval_data)
    batch_size = choose_batch_size([model], eval_data, batch_size=batch_size)
    weights = part_class_weights(parts)
    device = model_device(model)
    correct: torch.Tensor | None = None
    count: torch.Tensor | None = None
    with eval_mode(model), torch.inference_mode():
        for inputs, labels in batches(eval_data, batch_size):
            logits = forward_checked(model, inputs.to(device))
            labels = check_labels(labels, logits.shape[1], count=len(logits)).to(device)
            hits = torch.bincount(labels[logits.argmax(1) == labels], minlength=logits.shape[1])
            seen = torch.bincount(labels, minlength=logits.shape[1])
            correct = hits.cpu() if correct is None else correct + hits.cpu()
            count = seen.cpu() if count is None else count + seen.cpu()
    if count is None:
        raise ValueError("Cannot evaluate on an empty dataset: it yielded no examples.")
    results = []
    for index, part in enumerate(weights):
        total = hit = 0.0
        for cls, weight in part.items():
            if cls >= len(count) or count[cls] == 0:
                continue
            w = float(count[cls]) if weight is None else weight
            total += w
            hit += w * float(correct[cls]) / float(count[cls])
        if total == 0:
            raise ValueError(
                f"parts[{index}] shares no class with the data (its classes: "
                f"{sorted(part)[:10]}); evaluate on data that holds them."
            )
        results.append(hit / total)
    return results
