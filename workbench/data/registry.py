"""The registry of datasets: every name :func:`load_dataset` takes, built-in or the user's.

A dataset is a name, a :class:`~workbench.data.DatasetInfo` and a loader; adding one is one
call (or one decorated function) in one file, in the style of torchvision's
``get_model``::

    @register_dataset("flowers", info=DatasetInfo("flowers", 5, 3, 32, mean, std))
    def flowers(split):
        return ImageFolder(f"~/flowers/{split}", transform=to_normalized_32x32)

The loader is called as ``loader(split)`` (``"train"`` or ``"test"``), with ``root=`` and
``download=`` when it takes them (the torchvision sources do), and returns any torch
``Dataset`` of ``(image tensor, integer label)`` pairs: :func:`load_dataset` turns it into
a :class:`~workbench.data.TensorImageDataset` once (:func:`~workbench.data.as_image_dataset`),
so that results on it are cached by content and ``subset`` (the command line's
``--limit``) works on every dataset alike.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from workbench.data.images import DatasetInfo, TensorImageDataset
from workbench.data.wrap import as_image_dataset
from workbench.files import cache_dir

__all__ = [
    "Loader",
    "dataset_info",
    "datasets",
    "default_data_root",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "unregister_dataset",
]

Loader = Callable[..., Dataset]
SPLITS = ("train", "test")


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    loader: Loader


_REGISTRY: dict[str, _Entry] = {}


def _qualified_name(function: Callable) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', '?')}"


def register_dataset(
    name: str, loader: Loader | None = None, *, info: DatasetInfo, replace: bool = False
) -> Callable[[Loader], Loader] | Loader:
    """Register ``loader`` as the dataset ``name``, described by ``info`` (whose ``name``
    must be ``name``); as a call with the loader, or as a decorator without it. The loader
    is returned unchanged. A taken name raises unless ``replace=True``; registering the
    same function again (a notebook cell run twice) replaces it."""
    if not isinstance(name, str) or not name or name.split() != [name]:
        raise ValueError(f"A dataset name must be a word without spaces, got {name!r}.")
    if not isinstance(info, DatasetInfo):
        raise TypeError(
            f"info must be a DatasetInfo (classes, channels, image size, normalization), got "
            f"{type(info).__name__}; e.g. info=DatasetInfo({name!r}, 10, 3, 32)."
        )
    if info.name != name:
        raise ValueError(
            f"info.name is {info.name!r} but the dataset is registered as {name!r}; "
            f"use DatasetInfo({name!r}, ...)."
        )

    def decorate(function: Loader) -> Loader:
        if not callable(function):
            raise TypeError(f"A dataset loader must be callable, got {type(function).__name__}.")
        existing = _REGISTRY.get(name)
        if (
            existing is not None
            and not replace
            and _qualified_name(existing.loader) != _qualified_name(function)
        ):
            raise ValueError(
                f"A dataset named {name!r} is already registered "
                f"({_qualified_name(existing.loader)}); pass replace=True to replace it, or "
                "choose another name."
            )
        _REGISTRY[name] = _Entry(info, function)
        return function

    return decorate if loader is None else decorate(loader)


def unregister_dataset(name: str) -> None:
    """Remove the dataset ``name`` from the registry (tests, notebooks that redefine one)."""
    dataset_info(name)
    del _REGISTRY[name]


def datasets() -> list[str]:
    """The registered dataset names, the built-in ones first: what :func:`load_dataset`
    and the command line's ``--dataset`` take."""
    return list(_REGISTRY)


def list_datasets() -> list[str]:
    """Deprecated name of :func:`datasets` (removed in the next release)."""
    warnings.warn(
        "list_datasets() is renamed datasets(); the old name will be removed in the next release.",
        FutureWarning,
        stacklevel=2,
    )
    return datasets()


def dataset_info(name: str) -> DatasetInfo:
    """Classes, input shape and normalization statistics of the registered dataset
    ``name``; ``ValueError`` lists the registered names and suggests the nearest."""
    entry = _REGISTRY.get(name) if isinstance(name, str) else None
    if entry is None:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown dataset {name!r}; expected one of {', '.join(map(repr, _REGISTRY))}."
            f"{hint} Register your own with workbench.register_dataset."
        )
    return entry.info


def default_data_root() -> Path:
    """Where downloaded datasets are cached: ``workbench.cache_dir("datasets")``, that is
    ``$WORKBENCH_DATA_DIR`` if set, else ``datasets`` in the workbench's cache folder
    (``$WORKBENCH_CACHE_DIR``, by default the user cache folder; never the checkout).
    """
    return cache_dir("datasets")


def _takes(function: Callable, option: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: give it the split only
        return False
    return any(p.kind is p.VAR_KEYWORD or p.name == option for p in parameters)


def load_dataset(
    name: str = "mnist-5k",
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
) -> TensorImageDataset:
    """Load the registered dataset ``name`` (see :func:`datasets`), normalized, in memory.

    ``split`` is ``"train"`` or ``"test"``. The embedded datasets (``"mnist-5k"``: 4,000
    train / 1,000 test; ``"digits"``: 80/20) come from installed packages with a fixed,
    class-stratified split, so every machine sees the same images. The torchvision
    datasets are read from ``root`` (default :func:`default_data_root`) and fetched only
    when ``download=True``. Whatever a loader returns is read once into a
    :class:`TensorImageDataset` (``.info``, ``.subset``, cached results by content).
    """
    info = dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    loader = _REGISTRY[name].loader
    options = {
        "root": Path(root).expanduser() if root else default_data_root(),
        "download": download,
    }
    dataset = loader(split, **{k: v for k, v in options.items() if _takes(loader, k)})
    if not isinstance(dataset, Dataset):
        raise TypeError(
            f"The loader of dataset {name!r} ({_qualified_name(loader)}) returned "
            f"{type(dataset).__name__}; a loader must return a torch Dataset of (image "
            "tensor, integer label) pairs."
        )
    return as_image_dataset(dataset, info, split)
