"""What every dataset of the workbench is: :class:`TensorImageDataset`, normalized images
and integer targets in memory, described by a :class:`DatasetInfo`; and the class-stratified
splits (a fixed train/test split of the embedded sets, :func:`train_val_split`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

__all__ = [
    "DataLike",
    "DatasetInfo",
    "DatasetUnavailableError",
    "TensorImageDataset",
    "class_labels",
    "embedded_split",
    "fixed_split",
    "normalize",
    "train_val_split",
]

DataLike = Dataset | DataLoader


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither on disk nor downloadable from here."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: its classes, shape and normalization.

    ``mean`` and ``std`` are the per-channel statistics the images were normalized with
    (what feature visualization undoes to show them); left out, they are 0 and 1: the
    images are taken as they come.
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        sizes = (self.num_classes, self.in_channels, self.image_size)
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in sizes):
            raise ValueError(
                f"DatasetInfo({self.name!r}): num_classes, in_channels and image_size must be "
                f"positive integers, got {sizes}."
            )
        mean = tuple(float(m) for m in self.mean) or (0.0,) * self.in_channels
        std = tuple(float(s) for s in self.std) or (1.0,) * self.in_channels
        if len(mean) != self.in_channels or len(std) != self.in_channels:
            raise ValueError(
                f"DatasetInfo({self.name!r}): mean and std need one value per channel "
                f"({self.in_channels}), got {len(mean)} and {len(std)}."
            )
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)


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


def normalize(images: np.ndarray | torch.Tensor, info: DatasetInfo) -> torch.Tensor:
    """Images in [0, 1], (N, C, H, W), normalized by ``info``'s channel statistics (as
    torchvision's ``Normalize``), in float32."""
    x = torch.as_tensor(images, dtype=torch.float32)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    return (x - mean) / std


def embedded_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) of an embedded dataset: ``round(fraction * count)`` of every
    class in the test split.

    Both parts come in a fixed random order, never sorted by class (the source files
    are), so that the first batches of a split are a fair sample of all of it. These
    indices define the embedded datasets' splits, which the shipped models were trained
    on and every published number was measured on, so they are drawn as they always were
    (scikit-learn's stratified split, which :func:`train_val_split` uses, draws others).
    """
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_held = round(len(idx) * fraction)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return rng.permutation(np.concatenate(keep)), rng.permutation(np.concatenate(held))


def fixed_split(
    images: np.ndarray, labels: np.ndarray, info: DatasetInfo, split: str, test_fraction: float
) -> TensorImageDataset:
    """Part ``split`` of an embedded dataset: raw ``images`` in [0, 1] (N, C, H, W) and
    their ``labels``, normalized, with ``test_fraction`` of every class held out for
    ``"test"`` by a fixed seed, so that every machine sees the same images."""
    train_idx, test_idx = embedded_split(labels, test_fraction, seed=0)
    idx = train_idx if split == "train" else test_idx
    return TensorImageDataset(
        normalize(images[idx], info), torch.from_numpy(labels[idx]), info, split
    )


def train_val_split(
    dataset: Dataset, val_fraction: float = 0.1, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Carve a validation split out of a training set: ``(train, val)``, stratified by class.

    scikit-learn's stratified shuffle split (:func:`sklearn.model_selection.train_test_split`
    with ``stratify``, ``random_state=seed``): ``ceil(val_fraction * len(dataset))``
    examples held out, each class in proportion to its size (rounded up or down to whole
    examples), both parts in a random order; the same ``seed`` gives the same split.
    Refused (``ValueError``) when a class has a single example, or when either part would
    hold fewer examples than there are classes. Use the validation part to choose
    hyperparameters, never the test set.
    """
    from sklearn.model_selection import train_test_split

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
    labels = class_labels(dataset)
    try:
        keep, held = train_test_split(
            np.arange(len(labels)), test_size=val_fraction, random_state=seed, stratify=labels
        )
    except ValueError as error:  # a class too small, or a part smaller than the classes
        raise ValueError(
            f"A stratified split of {len(labels)} examples with val_fraction={val_fraction:g} "
            f"is not possible: {str(error).rstrip('.')}. Pass more data, another "
            "val_fraction, or a validation set of your own where the function takes one "
            "(val_data=)."
        ) from None
    if isinstance(dataset, TensorImageDataset):
        return dataset.subset(keep, "train"), dataset.subset(held, "val")
    return Subset(dataset, keep.tolist()), Subset(dataset, held.tolist())


def class_labels(dataset: Dataset) -> np.ndarray:
    """Every item's label, as int64: the dataset's ``targets`` when it lists them, else
    read item by item."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [dataset[i][1] for i in range(len(dataset))]
    return np.asarray(targets, dtype=np.int64)
