"""The checks every public entry point runs before it starts work.

A research tool's worst failure is a number that looks right and is not, so bad input is
refused here, up front, with an error in scikit-learn's style: what was passed, what was
expected, and how to fix it. Three kinds of input are checked:

* **data** (:func:`check_data`): not empty; inputs finite floating-point tensors; labels,
  where they are used, integer class indices in ``[0, classes)``. In-memory datasets are
  checked whole before any work (once per content: the result is remembered until a
  tensor changes), and so are the labels of datasets that list them (``.targets``);
  the images of other datasets and DataLoaders are checked batch by batch as they
  stream (:func:`workbench.batching.batches` refuses a non-finite batch, and
  :func:`check_labels` every labelled batch), since reading them twice would double the
  cost. Every function that reads labels checks them over the whole data before its
  work (:func:`workbench.evaluation.check_labelled`).
* **models** (:func:`check_models`): ``nn.Module`` instances with float32 parameters and
  buffers (the dtype policy: the embedded data and every statistic are float32, so a
  float64 or bfloat16 model is refused with the one-line conversion), and, for several
  models, one architecture. A model whose forward returns a tuple or dict is refused when
  its logits are needed (:func:`check_logits`); :func:`workbench.modules.select_output`
  picks them.
* **arguments** (:func:`check_int`, :func:`check_number`, :func:`check_alphas`,
  :func:`check_weights`, :func:`check_channels`, :func:`check_index`, :func:`check_choice`):
  of the right type (a ``bool`` is never an integer here), finite, in range.
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from workbench.batching import check_inputs
from workbench.data import TensorImageDataset
from workbench.modules import check_compatible

__all__ = [
    "check_alphas",
    "check_channels",
    "check_choice",
    "check_data",
    "check_index",
    "check_int",
    "check_labels",
    "check_logits",
    "check_models",
    "check_number",
    "check_pass",
    "check_weights",
]

_ACCEPTED_DTYPE = torch.float32


# -- arguments ------------------------------------------------------------------------------
def _is_integer(value: Any) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(
        value, (bool, np.bool_)
    )


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int``; ``TypeError`` unless it is an integer (not a bool, not a
    float such as ``2.0``), ``ValueError`` outside ``[minimum, maximum]``."""
    if not _is_integer(value):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = (
            f">= {minimum}"
            if maximum is None
            else f"<= {maximum}"
            if minimum is None
            else f"in [{minimum}, {maximum}]"
        )
        raise ValueError(f"{name} must be {bounds}, got {value}.")
    return value


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
) -> float:
    """``value`` as a finite ``float`` in the given range; ``TypeError`` for a non-number
    (or a bool), ``ValueError`` for NaN, infinities and values out of range."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Real, np.number)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}.")
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    if too_low or (high is not None and value > high):
        left = "[" if low_inclusive else "("
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must be in {left}{lo}, {hi}], got {value:g}.")
    return value


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    """``value`` if it is one of ``choices``, else ``ValueError`` listing them."""
    if not any(value is c or (type(value) is type(c) and value == c) for c in choices):
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}.")
    return value


def check_index(name: str, value: Any, count: int) -> int:
    """A position among ``count`` items (negative counts from the end, as in Python)."""
    index = check_int(name, value, -count, count - 1)
    return index % count


def check_alphas(alphas: int | Sequence[float], name: str = "alphas") -> list[float]:
    """The interpolation points: a number of evenly spaced points in [0, 1] (at least 2),
    or explicit finite values (outside [0, 1] extrapolates)."""
    if _is_integer(alphas):
        count = check_int(name, alphas, minimum=2)
        return np.linspace(0.0, 1.0, count).tolist()
    if isinstance(alphas, torch.Tensor):
        alphas = alphas.detach().cpu().reshape(-1).tolist()
    if isinstance(alphas, (str, bytes)) or not isinstance(alphas, Iterable):
        raise TypeError(
            f"{name} must be a number of points (int >= 2) or a sequence of numbers, got "
            f"{alphas!r} ({type(alphas).__name__})."
        )
    values = [check_number(f"{name}[{i}]", a) for i, a in enumerate(alphas)]
    if not values:
        raise ValueError(f"{name} is empty; pass at least one point, e.g. alphas=11.")
    return values


def check_weights(weights: Sequence[float], count: int, name: str = "weights") -> list[float]:
    """Mixing weights of ``count`` models: one finite number each, not all zero (negative
    weights extrapolate, as the points of a loss plane outside its triangle do)."""
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().reshape(-1).tolist()
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Iterable):
        raise TypeError(f"{name} must be a sequence of numbers, got {type(weights).__name__}.")
    values = [check_number(f"{name}[{i}]", w) for i, w in enumerate(weights)]
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries for {count} models; pass one each.")
    if not any(values):
        raise ValueError(f"{name} are all zero; give at least one model a weight.")
    return values


def check_channels(channels: Any, size: int, name: str = "channels") -> list[int]:
    """Channel indices of a layer with ``size`` channels: integers (no floats, no bools),
    each in ``[0, size)``; an int, a ``range`` or an integer tensor is accepted too."""
    if _is_integer(channels):
        channels = [channels]
    if isinstance(channels, torch.Tensor):
        if channels.is_floating_point() or channels.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer indices, got a {channels.dtype} tensor.")
        channels = channels.reshape(-1).tolist()
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Iterable):
        raise TypeError(f"{name} must be channel indices, got {type(channels).__name__}.")
    found = [check_int(f"{name}[{i}]", c, 0, size - 1) for i, c in enumerate(channels)]
    if not found:
        raise ValueError(f"{name} is empty; pass at least one channel index.")
    return found


# -- models ---------------------------------------------------------------------------------
def check_models(models: Sequence[nn.Module] | nn.Module, name: str = "model") -> None:
    """Refuse what is not a float32 ``nn.Module`` (see the module docstring for the
    policy), and, for several models, models whose architectures differ."""
    listed = [models] if isinstance(models, nn.Module) else list(models)
    if not listed:
        raise ValueError(f"Need at least one {name}; got an empty sequence.")
    for index, model in enumerate(listed):
        where = name if len(listed) == 1 else f"{name} {index}"
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"{where} must be a torch.nn.Module, got {type(model).__name__}; load "
                "checkpoints with workbench.load_checkpoint(path)."
            )
        dtypes = {
            t.dtype
            for t in [*model.parameters(), *model.buffers()]
            if t.is_floating_point() or t.is_complex()
        }
        wrong = sorted(str(d).replace("torch.", "") for d in dtypes - {_ACCEPTED_DTYPE})
        if wrong:
            raise TypeError(
                f"{where} ({type(model).__name__}) has {', '.join(wrong)} parameters or "
                "buffers; the workbench computes in float32 (its data and statistics are "
                "float32). Convert a copy with model.float()."
            )
    if len(listed) > 1:
        check_compatible(listed)


def check_logits(output: Any, model: nn.Module) -> torch.Tensor:
    """``output`` if it is a tensor of class scores ``(batch, classes)``; a clear error for
    a tuple, dict or any other value (pick the logits with
    :func:`workbench.modules.select_output`)."""
    if not isinstance(output, torch.Tensor):
        kind = type(output).__name__
        keys = list(output)[:4] if isinstance(output, dict) else None
        hint = f"select_output(model, {keys[0]!r})" if keys else "select_output(model, 0)"
        raise TypeError(
            f"{type(model).__name__}'s forward returns a {kind}"
            + (f" with keys {keys}" if keys else "")
            + "; the workbench needs a tensor of class scores (batch, classes). Wrap the "
            + f"model so that it returns its logits: workbench.modules.{hint}."
        )
    if output.ndim != 2:
        raise ValueError(
            f"{type(model).__name__} returns outputs of shape {tuple(output.shape)}; "
            "expected class scores of shape (batch, classes)."
        )
    return output


# -- data -----------------------------------------------------------------------------------
def check_labels(
    labels: Any, num_classes: int, where: str = "data", count: int | None = None
) -> torch.Tensor:
    """``labels`` if they are a 1-D integer tensor of class indices in
    ``[0, num_classes)`` (``count`` of them, when given: one per input); else
    ``ValueError``/``TypeError`` saying what was found (float one-hot rows, the ``-100``
    of an ignore index, a class the model does not score)."""
    if labels is None:
        raise ValueError(
            f"The {where} has no labels, and they are needed here (loss and accuracy): "
            "yield (inputs, labels) pairs, e.g. TensorDataset(images, labels)."
        )
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"The {where}'s labels must be a tensor, got {type(labels).__name__}.")
    if labels.is_floating_point() or labels.dtype == torch.bool or labels.is_complex():
        shape = tuple(labels.shape)
        raise TypeError(
            f"The {where}'s labels are {labels.dtype} of shape {shape}; expected integer "
            "class indices (torch.long) of shape (batch,). Convert one-hot rows with "
            "labels.argmax(1), or class numbers with labels.long()."
        )
    if labels.ndim != 1:
        raise ValueError(
            f"The {where}'s labels have shape {tuple(labels.shape)}; expected one class "
            "index per example, shape (batch,)."
        )
    if count is not None and len(labels) != count:
        raise ValueError(
            f"The {where} has {count} inputs but {len(labels)} labels; pass one label each."
        )
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            bad = labels[(labels < 0) | (labels >= num_classes)].unique()[:5].tolist()
            raise ValueError(
                f"The {where} has labels {bad} outside [0, {num_classes}): the model scores "
                f"{num_classes} classes. Negative labels (an ignore index such as -100) and "
                "classes the model was not built for would be counted silently wrong; "
                "remove those examples or build the model for this dataset."
            )
    return labels


# Datasets already checked, with the version counters of their tensors at the time.
_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _tensors_of(data: Any) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The inputs and labels of an in-memory dataset, or ``None``."""
    if isinstance(data, TensorImageDataset):
        return data.images, data.targets
    if isinstance(data, Dataset) and isinstance(getattr(data, "tensors", None), tuple):
        tensors = data.tensors
        return (tensors[0], tensors[1] if len(tensors) > 1 else None) if tensors else None
    return None


def _listed_targets(data: Any) -> torch.Tensor | None:
    """The labels of a dataset that lists them without loading its images (torchvision's
    datasets keep ``.targets``; a ``Subset`` of one picks its indices), or ``None``."""
    if isinstance(data, Subset):
        parent = _listed_targets(data.dataset)
        return None if parent is None else parent[torch.as_tensor(list(data.indices))]
    targets = getattr(data, "targets", None)
    if targets is None or isinstance(targets, (str, bytes)):
        return None
    try:
        targets = torch.as_tensor(np.asarray(targets))
        size = len(data)
    except (TypeError, ValueError, RuntimeError):
        return None
    return targets if targets.ndim == 1 and len(targets) == size else None


def check_data(
    data: Any,
    *,
    num_classes: int | None = None,
    labels: bool = False,
    name: str = "data",
) -> None:
    """Refuse data that cannot give correct results, before any work.

    ``data`` must be a ``Dataset`` or ``DataLoader`` with at least one example. An
    in-memory dataset (:class:`~workbench.data.TensorImageDataset`, ``TensorDataset``) is
    checked whole: finite floating-point inputs and, with ``labels=True``, integer labels
    in ``[0, num_classes)`` (see :func:`check_labels`). A dataset that lists its labels
    (``.targets``, as torchvision's do, or a ``Subset`` of one) has them checked whole
    too; its images, and all of any other data, are checked batch by batch while they
    are read (the module docstring says why).
    """
    if isinstance(data, DataLoader):
        dataset = data.dataset
    elif isinstance(data, Dataset):
        dataset = data
    else:
        raise TypeError(
            f"{name} must be a torch Dataset or DataLoader, got {type(data).__name__}. "
            "Wrap tensors in torch.utils.data.TensorDataset(inputs, labels)."
        )
    try:
        size = len(dataset)
    except TypeError:  # an iterable-style dataset: checked while it streams
        size = None
    if size == 0:
        raise ValueError(f"The {name} is empty; pass a dataset with at least one example.")
    found = _tensors_of(dataset)
    if found is None:
        listed = _listed_targets(dataset) if labels else None
        if listed is not None:  # images streamed, labels checked whole now
            if num_classes is None:
                raise ValueError("check_data(labels=True) needs num_classes.")
            check_labels(listed, num_classes, name)
        return
    inputs, targets = found
    versions = (inputs._version, None if targets is None else targets._version, num_classes)
    remembered = _CHECKED.get(dataset)
    if remembered is not None and remembered[0] == versions and (remembered[1] or not labels):
        return
    check_inputs(inputs, name)
    if labels:
        if num_classes is None:
            raise ValueError("check_data(labels=True) needs num_classes.")
        check_labels(targets, num_classes, name, len(inputs))
    _CHECKED[dataset] = (versions, labels)


def check_pass(data: Any, batch_size: Any, max_batches: Any = None, name: str = "data") -> None:
    """The arguments of one pass over ``data`` that needs inputs only (statistics,
    RESET, exemplars): the data (:func:`check_data`), ``batch_size`` ``None`` (chosen
    for the pass) or ``>= 1`` and ``max_batches`` ``None`` or ``>= 1``."""
    check_data(data, name=name)
    if batch_size is not None:
        check_int("batch_size", batch_size, minimum=1)
    if max_batches is not None:
        check_int("max_batches", max_batches, minimum=1)
