"""One pass over data: the ``(inputs, labels)`` batches of a Dataset or DataLoader.

Every analysis reads its data through :func:`batches`, so this is where inputs are checked
as they stream (:func:`check_inputs`: floating point and finite; a whole in-memory dataset
once per content, any other data batch by batch), and where data without labels is
accepted for the passes that need none.
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from workbench.data import DataLike, TensorImageDataset

__all__ = ["Batches", "as_loader", "batches", "check_inputs", "on_device"]


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
