"""Any torch dataset of ``(image, label)`` pairs as a :class:`TensorImageDataset`: read once
into memory, so that it gets what the workbench's own datasets have (results cached by
content, ``subset`` and the command line's ``--limit``, batches sliced without collation)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from workbench.data.images import DatasetInfo, TensorImageDataset

__all__ = ["as_image_dataset"]

# Datasets this long are read with a progress bar unless told otherwise.
PROGRESS_FROM = 10_000


def as_image_dataset(
    dataset: Dataset,
    info: DatasetInfo | None = None,
    split: str | None = None,
    *,
    progress: bool | None = None,
) -> TensorImageDataset:
    """``dataset`` (any map-style torch ``Dataset`` of ``(image tensor (C, H, W), integer
    label)`` pairs: an ``ImageFolder``, a torchvision dataset, a ``Subset``) read once into
    a :class:`TensorImageDataset`, its transforms applied; the images are taken as they
    come (normalize them in the transform).

    ``info`` describes it (checked against the images and labels); without it, it is
    inferred: the name of the dataset's class, its ``classes`` (else the largest label + 1),
    the images' channels and size, and mean 0 / std 1. ``split`` names the part (default:
    the dataset's own, else ``"train"``). ``progress``: show a progress bar (default: for
    datasets of 10,000 items or more). A :class:`TensorImageDataset` is not copied: it
    comes back as it is, or sharing its tensors when given another ``info`` or ``split``.
    """
    if isinstance(dataset, TensorImageDataset):
        images, targets = dataset.images, dataset.targets
        if (info is None or info == dataset.info) and split in (None, dataset.split):
            return dataset
        info, split = info or dataset.info, split or dataset.split
    elif isinstance(dataset, Dataset):
        images, targets = _read(dataset, progress)
        info = info or _inferred_info(dataset, images, targets)
    else:
        raise TypeError(
            f"as_image_dataset takes a torch Dataset of (image, label) pairs, got "
            f"{type(dataset).__name__}."
        )
    if not isinstance(info, DatasetInfo):
        raise TypeError(f"info must be a DatasetInfo or None, got {type(info).__name__}.")
    _check_fits(info, images, targets)
    return TensorImageDataset(images, targets, info, split or "train")


def _read(dataset: Dataset, progress: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every item of ``dataset`` as (N, C, H, W) float32 images and (N,) int64 labels."""
    name = type(dataset).__name__
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"{name} has no length (an IterableDataset?): as_image_dataset reads map-style "
            "datasets, whose items are dataset[i]; collect the items in a TensorDataset first."
        ) from None
    if n == 0:
        raise ValueError(f"{name} is empty: there are no images to read.")
    images: torch.Tensor | None = None
    targets = torch.empty(n, dtype=torch.long)
    show = n >= PROGRESS_FROM if progress is None else progress
    for i in tqdm(range(n), desc=f"Reading {name}", disable=not show, leave=False):
        image, targets[i] = _item(dataset, i)
        if images is None:
            images = torch.empty((n, *image.shape), dtype=torch.float32)
        elif image.shape != images.shape[1:]:
            raise ValueError(
                f"Item {i} of {name} is an image of shape {tuple(image.shape)}, item 0 of "
                f"{tuple(images.shape[1:])}: all images must have one size; resize them in "
                "the dataset's transform (transforms.Resize((size, size)))."
            )
        images[i] = image
    assert images is not None  # n >= 1
    return images, targets


def _item(dataset: Dataset, index: int) -> tuple[torch.Tensor, int]:
    """Item ``index`` as a (C, H, W) image tensor and an integer label, or a clear error."""
    item = dataset[index]
    where = f"Item {index} of {type(dataset).__name__}"
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise TypeError(f"{where} is a {type(item).__name__}; expected an (image, label) pair.")
    image, label = item
    if not isinstance(image, torch.Tensor):
        raise TypeError(
            f"{where} has a {type(image).__name__} image; expected a tensor (C, H, W): give "
            "the dataset transform=transforms.ToTensor() (and Normalize)."
        )
    if not image.is_floating_point() or image.ndim not in (2, 3):
        raise TypeError(
            f"{where} has a {image.dtype} image of shape {tuple(image.shape)}; expected a "
            "floating-point tensor (C, H, W) or (H, W): convert it with transforms.ToTensor()."
        )
    is_integer = isinstance(label, (int, np.integer)) and not isinstance(label, (bool, np.bool_))
    if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point():
        is_integer, label = label.dtype != torch.bool, label.item()
    if not is_integer:
        raise TypeError(
            f"{where} has the label {label!r} ({type(label).__name__}); expected an integer "
            "class index."
        )
    return (image[None] if image.ndim == 2 else image), int(label)


def _inferred_info(dataset: Dataset, images: torch.Tensor, targets: torch.Tensor) -> DatasetInfo:
    """A :class:`DatasetInfo` read off the data (see :func:`as_image_dataset`)."""
    name = getattr(dataset, "name", None)
    classes = getattr(dataset, "classes", None)
    count = int(targets.max()) + 1
    if isinstance(classes, (list, tuple)):
        count = max(count, len(classes))
    height, width = images.shape[2:]
    if height != width:
        raise ValueError(
            f"{type(dataset).__name__}'s images are {height}x{width}; a DatasetInfo describes "
            "square images: resize them (transforms.Resize((size, size))), or pass info=."
        )
    return DatasetInfo(
        name if isinstance(name, str) else type(dataset).__name__,
        count,
        images.shape[1],
        height,
    )


def _check_fits(info: DatasetInfo, images: torch.Tensor, targets: torch.Tensor) -> None:
    """Raise ``ValueError`` when the images or labels disagree with ``info``."""
    channels, height, width = images.shape[1:]
    if (channels, height, width) != (info.in_channels, info.image_size, info.image_size):
        raise ValueError(
            f"The images are {channels}x{height}x{width} (channels x height x width), but "
            f"info {info.name!r} describes {info.in_channels}x{info.image_size}x"
            f"{info.image_size}: resize or convert them in the dataset's transform, or "
            "correct the DatasetInfo."
        )
    low, high = (int(targets.min()), int(targets.max())) if len(targets) else (0, 0)
    if low < 0 or high >= info.num_classes:
        raise ValueError(
            f"The labels run from {low} to {high}, but info {info.name!r} has "
            f"{info.num_classes} classes (labels 0 to {info.num_classes - 1}); correct "
            "num_classes or the labels."
        )
