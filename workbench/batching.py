"""One pass over data: the ``(inputs, labels)`` batches of a Dataset or DataLoader.

Every analysis reads its data through :func:`batches`, so this is where inputs are checked
as they stream (:func:`check_inputs`: floating point and finite; a whole in-memory dataset
once per content, any other data batch by batch), where data without labels is
accepted for the passes that need none, and where a pass's default batch size is chosen
from the input size, the models and a memory budget (:func:`choose_batch_size`).
"""

from __future__ import annotations

import itertools
import math
import os
import re
import weakref
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from workbench.data import DataLike, TensorImageDataset
from workbench.modules import eval_mode, model_device

__all__ = [
    "BUDGET_VARIABLE",
    "DEFAULT_BUDGET",
    "MAX_BATCH",
    "Batches",
    "as_loader",
    "batches",
    "check_inputs",
    "choose_batch_size",
    "memory_budget",
    "on_device",
]

DEFAULT_BUDGET = 2 * 1024**3  # bytes of activations a pass may hold by default
BUDGET_VARIABLE = "WORKBENCH_BATCH_MEMORY"  # overrides it: bytes, or e.g. "8GB", "512MB"
MAX_BATCH = 500  # larger batches no longer pay off on a CPU (and were the old default)
LIVE_FACTOR = 4  # tensors of the largest activation's size alive at once in a forward


def on_device(data: DataLike, device: torch.device) -> DataLike:
    """An in-memory dataset moved to ``device`` once, instead of once per batch and point."""
    if isinstance(data, TensorImageDataset) and data.images.device != device:
        return TensorImageDataset(
            data.images.to(device), data.targets.to(device), data.info, data.split
        )
    return data


def as_loader(data: DataLike, batch_size: int = 500) -> DataLoader:
    """A DataLoader over ``data``: returned as is when it already is one."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    raise TypeError(
        f"Expected a torch Dataset or DataLoader, got {type(data).__name__}. "
        "Wrap tensors in torch.utils.data.TensorDataset(inputs, labels)."
    )


class Batches(Iterable[tuple[torch.Tensor, torch.Tensor | None]]):
    """The ``(inputs, labels)`` batches of one pass over some data, with their count.

    ``len()`` is the number of batches where it is known (in-memory datasets, DataLoaders
    over map-style datasets), so that progress bars show a total ("7/8", not "7/?"); it
    raises ``TypeError`` where it is not, as ``len()`` of a plain iterator does.
    """

    def __init__(
        self, iterator: Iterator[tuple[torch.Tensor, torch.Tensor]], count: int | None
    ) -> None:
        self._iterator, self._count = iterator, count

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._iterator

    def __len__(self) -> int:
        if self._count is None:
            raise TypeError("The number of batches of this data is not known in advance.")
        return self._count


def batches(
    data: DataLike,
    batch_size: int = 500,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    max_batches: int | None = None,
) -> Batches:
    """The ``(inputs, labels)`` batches of a Dataset or DataLoader, one pass.

    In-memory datasets are sliced directly (no per-sample collation). A DataLoader is
    iterated as configured by its owner; ``batch_size`` and ``shuffle`` then do not apply.
    ``max_batches`` stops early, for quick estimates. Every batch's inputs are checked
    finite (:func:`check_inputs`) as they are yielded; data without labels (a bare tensor
    or 1-tuple per batch) yields ``labels=None``, for the passes that need none.
    """
    if isinstance(data, TensorImageDataset):
        count = math.ceil(len(data) / batch_size)
        _check_whole(data.images)  # once per content, instead of batch by batch
        source = _tensor_batches(data, batch_size, shuffle, generator)
    else:
        if shuffle and not isinstance(data, DataLoader):
            loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)
        else:
            loader = as_loader(data, batch_size)
        try:
            count = len(loader)
        except TypeError:  # a loader over an iterable-style dataset
            count = None
        source = _loader_batches(loader)
    if max_batches is not None:
        source = itertools.islice(source, max_batches)
        count = max_batches if count is None else min(count, max_batches)
    return Batches(source, count)


def check_inputs(inputs: torch.Tensor, where: str = "data") -> None:
    """Refuse inputs that are not a floating-point tensor of finite values (one NaN image
    would corrupt every statistic, match and exemplar computed from it), naming the first
    bad example. Every batch that :func:`batches` yields has passed it."""
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point():
        found = inputs.dtype if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise TypeError(
            f"The {where}'s inputs must be a floating-point tensor, got {found}; normalize "
            "images to float32 first."
        )
    if bool(torch.isfinite(inputs.sum())):  # NaN and infinities propagate into the sum
        return
    finite = torch.isfinite(inputs)  # a non-finite sum: find the examples (or an overflow)
    if not bool(finite.all()):
        rows = (~finite).reshape(len(inputs), -1).any(1).nonzero().reshape(-1)
        raise ValueError(
            f"The {where} holds {len(rows)} examples with NaN or infinite values (the first "
            f"at position {int(rows[0])}); they would corrupt every statistic computed from "
            "it. Remove or repair them."
        )


# id of an in-memory tensor checked finite -> (a reference to it, its version counter then)
_CHECKED_IMAGES: dict[int, tuple[weakref.ref, int]] = {}


def _check_whole(images: torch.Tensor) -> None:
    """:func:`check_inputs` on a whole in-memory tensor, once for each of its contents (an
    in-place change bumps the tensor's version counter and it is checked again)."""
    key = id(images)
    entry = _CHECKED_IMAGES.get(key)
    if entry is not None and entry[0]() is images and entry[1] == images._version:
        return
    check_inputs(images, "data")
    _CHECKED_IMAGES[key] = (
        weakref.ref(images, lambda _ref: _CHECKED_IMAGES.pop(key, None)),
        images._version,
    )


def _loader_batches(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """``(inputs, labels)`` of each batch, checked: a pair (a longer tuple's rest is
    ignored), or inputs alone (a bare tensor, or a 1-tuple), whose labels are ``None``."""
    for batch in loader:
        if isinstance(batch, torch.Tensor):
            batch = (batch,)
        if not isinstance(batch, (tuple, list)) or not batch:
            raise TypeError(
                f"A batch of the data is a {type(batch).__name__}; expected (inputs, labels) "
                "or a tensor of inputs. Make the dataset return (image, label) pairs."
            )
        check_inputs(batch[0], "batch of the data")
        yield batch[0], batch[1] if len(batch) > 1 else None


def _tensor_batches(
    data: TensorImageDataset, batch_size: int, shuffle: bool, generator: torch.Generator | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    order = torch.randperm(len(data), generator=generator) if shuffle else None
    for start in range(0, len(data), batch_size):
        if order is None:
            sl = slice(start, start + batch_size)
            yield data.images[sl], data.targets[sl]
        else:
            idx = order[start : start + batch_size]
            yield data.images[idx], data.targets[idx]


def _parse_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9.]+)\s*([kmgt]?i?b?)\s*", text.lower())
    if match is None:
        raise ValueError(
            f"{BUDGET_VARIABLE}={text!r} is not a memory size; set it to bytes or a size such "
            "as '8GB' or '512MB'."
        )
    unit = match.group(2)[:1]
    return int(float(match.group(1)) * 1024 ** " kmgt".index(unit or " "))


def _available(device: torch.device) -> int | None:
    """Memory free for a pass on ``device`` now (bytes), where it can be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            fields = dict(line.split(":", 1) for line in meminfo)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _first_example(data: DataLike) -> torch.Tensor:
    if isinstance(data, TensorImageDataset):
        return data.images[:1]
    item = data[0]
    inputs = item[0] if isinstance(item, (tuple, list)) else item
    return torch.as_tensor(inputs)[None]


def _largest_activation(model: nn.Module, example: torch.Tensor) -> int:
    """Bytes of the largest output of any of ``model``'s modules on one example."""
    largest = example.numel() * example.element_size()

    def hook(_module, _inputs, output) -> None:
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with eval_mode(model), torch.no_grad():
            model(example.to(model_device(model)))
    finally:
        for handle in handles:
            handle.remove()
    return largest


def memory_budget(device: torch.device, budget: int | None = None) -> int:
    """Bytes a pass on ``device`` may hold: ``budget``, else the environment variable
    ``WORKBENCH_BATCH_MEMORY`` (bytes, or "8GB", "512MB"), else :data:`DEFAULT_BUDGET`;
    never more than half the memory free on the device now."""
    if budget is None:
        override = os.environ.get(BUDGET_VARIABLE)
        budget = _parse_bytes(override) if override else DEFAULT_BUDGET
    free = _available(device)
    return budget if free is None else min(budget, free // 2)


def choose_batch_size(
    models: Sequence[nn.Module],
    data: DataLike,
    *,
    batch_size: int | None = None,
    budget: int | None = None,
) -> int:
    """The batch size of a pass of ``models`` side by side over ``data``: ``batch_size``
    when given; otherwise as many examples as fit a memory budget, at most
    :data:`MAX_BATCH` (the batching of a DataLoader is its own and is kept).

    Estimate: one eval-mode forward of each model on the first example finds its
    largest activation (any module's output); a forward pass holds about
    :data:`LIVE_FACTOR` tensors of that size at once per example (a block's input kept for
    its residual, a layer's input and output, one more). Budget: ``budget`` bytes, else
    the environment variable ``WORKBENCH_BATCH_MEMORY`` (bytes, or "8GB", "512MB"), else
    :data:`DEFAULT_BUDGET` (2 GiB); never more than half the memory free on the models'
    device. Data whose first example cannot be read ahead (empty, iterable-style) or does
    not fit the models gets :data:`MAX_BATCH` (the pass then reports the problem). At 224 px that is about 80 images for two ResNet-50s; a shipped MNIST CNN
    gets :data:`MAX_BATCH`.
    """
    if batch_size is not None:
        return batch_size
    if isinstance(data, DataLoader):
        return MAX_BATCH  # not used: the loader batches as its owner configured it
    try:
        example = _first_example(data)
    except (IndexError, KeyError, NotImplementedError):  # empty, or iterable-style data
        return MAX_BATCH
    if len(example) == 0:
        return MAX_BATCH  # empty data: the pass itself says so, clearly
    budget = memory_budget(model_device(models[0]), budget)
    try:
        per_example = LIVE_FACTOR * sum(_largest_activation(m, example) for m in models)
    except (RuntimeError, ValueError, TypeError):
        return MAX_BATCH  # data that does not fit the model: the pass's own check says how
    return max(1, min(MAX_BATCH, budget // max(per_example, 1)))
