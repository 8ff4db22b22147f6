"""The torchvision datasets ``"mnist"``, ``"fashion-mnist"``, ``"cifar10"`` and
``"cifar100"``: read from a local folder (:func:`~workbench.data.default_data_root`) and
downloaded only when asked to, then held in memory like every other dataset (at most
50,000 32x32 images: 600 MB)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from workbench.data.images import (
    DatasetInfo,
    DatasetUnavailableError,
    TensorImageDataset,
    normalize,
)
from workbench.data.mnist5k import MNIST_STATS
from workbench.data.registry import register_dataset

INFOS = (
    DatasetInfo("mnist", 10, 1, 28, *MNIST_STATS),
    DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,)),
    DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
)
CLASSES = {
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
}


def load_torchvision(
    split: str, *, root: Path, download: bool, info: DatasetInfo
) -> TensorImageDataset:
    """Split ``split`` of torchvision's dataset ``info.name`` under ``root``, as
    ``ToTensor`` and ``Normalize(info.mean, info.std)`` would give it, read at once from
    the arrays torchvision holds (no per-image transform)."""
    from torchvision import datasets

    cls = getattr(datasets, CLASSES[info.name])
    try:
        dataset = cls(str(root), train=split == "train", download=download)
    except (RuntimeError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        action = "download" if download else "find"
        hint = (
            "this machine cannot reach the download server; copy the files there from a machine that can"
            if download
            else "pass download=True on a machine with network access, or copy the files there"
        )
        raise DatasetUnavailableError(
            f"Could not {action} {info.name!r} under {root} ({reason}): {hint}."
        ) from None
    pixels = torch.as_tensor(np.asarray(dataset.data))
    # MNIST-like sets hold (N, H, W) uint8, the CIFARs (N, H, W, C)
    pixels = pixels[:, None] if pixels.ndim == 3 else pixels.permute(0, 3, 1, 2)
    images = normalize(pixels.float().div(255), info)
    targets = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.long)
    return TensorImageDataset(images, targets, info, split)


for _info in INFOS:
    register_dataset(_info.name, functools.partial(load_torchvision, info=_info), info=_info)
