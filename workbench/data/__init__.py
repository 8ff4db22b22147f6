"""Datasets: a registry of names (:func:`datasets`, :func:`register_dataset`), each loaded
as an in-memory :class:`TensorImageDataset` of normalized images; :func:`as_image_dataset`
reads any torch dataset of ``(image, label)`` pairs into one. :mod:`workbench.batching`
iterates over them.

Built in, one file per source: ``"mnist-5k"`` (the default; :mod:`.mnist5k`, offline),
``"digits"`` (:mod:`.digits`, offline) and the torchvision datasets ``"mnist"``,
``"fashion-mnist"``, ``"cifar10"``, ``"cifar100"`` (:mod:`.torchvision_sets`, read from a
local folder, downloaded only when asked to). A user's own dataset (an ``ImageFolder``, a
local copy of a benchmark) is one :func:`register_dataset` call away from every function
and command that takes a dataset name.
"""

# The built-in sources register themselves on import, the default first.
from workbench.data import mnist5k  # noqa: F401  # isort: skip
from workbench.data import digits, torchvision_sets  # noqa: F401
from workbench.data.images import (
    DataLike,
    DatasetInfo,
    DatasetUnavailableError,
    TensorImageDataset,
    train_val_split,
)
from workbench.data.registry import (
    dataset_info,
    datasets,
    default_data_root,
    list_datasets,
    load_dataset,
    register_dataset,
    unregister_dataset,
)
from workbench.data.wrap import as_image_dataset

__all__ = [
    "DataLike",
    "DatasetInfo",
    "DatasetUnavailableError",
    "TensorImageDataset",
    "as_image_dataset",
    "dataset_info",
    "datasets",
    "default_data_root",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "train_val_split",
    "unregister_dataset",
]
