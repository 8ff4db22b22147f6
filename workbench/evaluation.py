"""Loss and accuracy of a classifier over a dataset."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from workbench.data import DataLike, batches
from workbench.modules import eval_mode, model_device
from workbench.validation import check_data, check_int, check_labels, check_logits, check_models


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


def evaluate(
    model: nn.Module,
    data: DataLike,
    batch_size: int = 500,
    max_batches: int | None = None,
) -> Metrics:
    """Cross-entropy loss and accuracy of ``model`` in eval mode over ``data``.

    Runs on the model's device; the model is left as it was (same mode, same device).
    Labels must be class indices the model scores (:func:`~workbench.validation.check_labels`:
    an ignore index such as -100, one-hot rows or a class out of range are refused).
    """
    check_models(model)
    check_int("batch_size", batch_size, minimum=1)
    if max_batches is not None:
        check_int("max_batches", max_batches, minimum=1)
    check_data(data)
    device = model_device(model)
    loss_sum, correct, count = 0.0, 0, 0
    with eval_mode(model), torch.inference_mode():
        for inputs, labels in batches(data, batch_size, max_batches=max_batches):
            logits = forward_checked(model, inputs.to(device))
            labels = check_labels(labels, logits.shape[1], count=len(logits)).to(device)
            loss_sum += F.cross_entropy(logits.float(), labels, reduction="sum").item()
            correct += (logits.argmax(1) == labels).sum().item()
            count += len(labels)
    if count == 0:
        raise ValueError("Cannot evaluate on an empty dataset: it yielded no examples.")
    return Metrics(loss_sum / count, correct / count, count)


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
