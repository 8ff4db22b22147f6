"""Datasets as a registry: a user's ImageFolder of PNGs, registered in this file alone,
loads as a TensorImageDataset, subsets, fingerprints by content and runs through the
command line's ``--limit``; ``as_image_dataset`` reads any dataset or says what is wrong;
the torchvision sources come back in memory; checkpoints describe their inputs, so a
model trained on a dataset unknown here still gets a spec without data."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, Subset, TensorDataset
from torchvision import datasets as tv_datasets
from torchvision import transforms

import workbench as wb
from workbench.checkpoints import recorded_dataset_info
from workbench.cli import main
from workbench.fingerprints import data_fingerprint
from workbench.graph import example_input_for

NAME = "folder-test"
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.3)
INFO = wb.DatasetInfo(NAME, 3, 3, 8, MEAN, STD)
TRANSFORM = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])


def _write_png(path: Path, rng: np.random.Generator, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)


def _image_folder(root: Path, per_class: int = 4) -> Path:
    """``root/{train,test}/class<k>/<i>.png``: 3 classes of random 8x8 RGB images."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k in range(3):
            for i in range(per_class):
                _write_png(root / split / f"class{k}" / f"{i}.png", rng)
    return root


@pytest.fixture
def folder(tmp_path: Path):
    """The ImageFolder tree, registered as ``NAME`` for the test, unregistered after."""
    root = _image_folder(tmp_path / "images")

    @wb.register_dataset(NAME, info=INFO)
    def load(split: str) -> Dataset:
        return tv_datasets.ImageFolder(str(root / split), transform=TRANSFORM)

    yield root
    if NAME in wb.datasets():
        wb.unregister_dataset(NAME)


def _stacked(dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


# --- a user's dataset ---------------------------------------------------------------------


def test_registered_folder_loads_in_memory(folder: Path) -> None:
    assert NAME in wb.datasets() and wb.dataset_info(NAME) is INFO
    train = wb.load_dataset(NAME, "train")
    assert isinstance(train, wb.TensorImageDataset)
    assert (train.info, train.split, train.images.shape) == (INFO, "train", (12, 3, 8, 8))
    images, targets = _stacked(tv_datasets.ImageFolder(str(folder / "train"), TRANSFORM))
    assert torch.equal(train.images, images) and torch.equal(train.targets, targets)
    assert wb.load_dataset(NAME, "test").split == "test"


def test_user_dataset_subsets_and_fingerprints_by_content(folder: Path) -> None:
    first, again = wb.load_dataset(NAME), wb.load_dataset(NAME)
    assert first is not again
    assert data_fingerprint(first) is not None
    assert data_fingerprint(first) == data_fingerprint(again)
    part = first.subset(torch.tensor([0, 5]), "val")
    assert torch.equal(part.images, first.images[[0, 5]]) and part.info is INFO
    _write_png(folder / "train" / "class1" / "2.png", np.random.default_rng(99))
    assert data_fingerprint(wb.load_dataset(NAME)) != data_fingerprint(first)


def test_the_command_line_trains_on_a_user_dataset_and_limits_it(
    folder: Path, tmp_path: Path
) -> None:
    models, out = tmp_path / "models", tmp_path / "out"
    train = ["train", "cnn", "--dataset", NAME, "--seeds", "0", "1", "--epochs", "1"]
    train += ["--width", "0.25", "--translate", "0", "--out", str(models)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(train) == 0
    paths = sorted(map(str, models.glob("*.safetensors")))
    assert len(paths) == 2
    assert wb.read_metadata(paths[0])["dataset_info"]["image_size"] == 8
    lmc = ["lmc", "--dataset", NAME, "--models", *paths, "--limit", "5", "--alphas", "3"]
    lmc += ["--methods", "none", "weight", "--bn", "none", "--no-cache", "--out", str(out)]
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        assert main(lmc) == 0
    assert f"({NAME}, bn=none)" in printed.getvalue()
    assert len(pd.read_csv(out / "lmc.csv")) == 4  # two methods, train and test


# --- registering ----------------------------------------------------------------------------


def test_register_as_a_call_and_its_errors(folder: Path) -> None:
    def other(split: str) -> Dataset:
        return TensorDataset(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))

    with pytest.raises(ValueError, match=rf"'{NAME}' is already registered .*replace=True"):
        wb.register_dataset(NAME, other, info=INFO)
    assert wb.register_dataset(NAME, other, info=INFO, replace=True) is other
    assert len(wb.load_dataset(NAME)) == 2
    with pytest.raises(ValueError, match=r"info.name is 'folder-test' but .* as 'x'"):
        wb.register_dataset("x", other, info=INFO)
    with pytest.raises(TypeError, match=r"info must be a DatasetInfo .* got dict"):
        wb.register_dataset("x", other, info={"name": "x"})
    with pytest.raises(ValueError, match="a word without spaces, got 'two words'"):
        wb.register_dataset("two words", other, info=INFO)
    wb.register_dataset(NAME, lambda split: [1, 2], info=INFO, replace=True)
    with pytest.raises(TypeError, match=r"returned list; a loader must return a torch Dataset"):
        wb.load_dataset(NAME)
    wb.unregister_dataset(NAME)
    with pytest.raises(ValueError, match=r"Unknown dataset 'folder-test'.*register_dataset"):
        wb.load_dataset(NAME)


def test_a_loader_that_takes_root_and_download_gets_them(tmp_path: Path) -> None:
    seen = {}
    info = wb.DatasetInfo("root-test", 2, 1, 4)

    def load(split: str, root: Path, download: bool) -> Dataset:
        seen.update(split=split, root=root, download=download)
        return TensorDataset(torch.zeros(3, 1, 4, 4), torch.tensor([0, 1, 1]))

    wb.register_dataset("root-test", load, info=info)
    try:
        loaded = wb.load_dataset("root-test", "test", root=tmp_path, download=True)
    finally:
        wb.unregister_dataset("root-test")
    assert seen == {"split": "test", "root": tmp_path, "download": True}
    assert (loaded.split, loaded.info, len(loaded)) == ("test", info, 3)


def test_dataset_info_checks_itself() -> None:
    plain = wb.DatasetInfo("plain", 10, 3, 32)
    assert (plain.mean, plain.std) == ((0.0,) * 3, (1.0,) * 3)
    with pytest.raises(ValueError, match=r"one value per channel \(3\), got 1 and 1"):
        wb.DatasetInfo("bad", 10, 3, 32, (0.5,), (0.2,))
    with pytest.raises(ValueError, match=r"positive integers, got \(0, 3, 32\)"):
        wb.DatasetInfo("bad", 0, 3, 32)


# --- as_image_dataset -----------------------------------------------------------------------


def test_as_image_dataset_reads_any_dataset() -> None:
    images, labels = torch.randn(5, 2, 6, 6), torch.tensor([0, 3, 1, 3, 2])
    wrapped = wb.as_image_dataset(TensorDataset(images, labels), progress=False)
    assert torch.equal(wrapped.images, images) and torch.equal(wrapped.targets, labels)
    assert wrapped.info == wb.DatasetInfo("TensorDataset", 4, 2, 6)
    assert wrapped.split == "train"
    part = wb.as_image_dataset(Subset(wrapped, [4, 1]), wrapped.info, "val", progress=True)
    assert torch.equal(part.images, images[[4, 1]]) and part.split == "val"
    assert wb.as_image_dataset(wrapped) is wrapped  # already in memory: not copied
    relabelled = wb.as_image_dataset(wrapped, split="test")
    assert relabelled.images is wrapped.images and relabelled.split == "test"
    gray = [(torch.ones(6, 6), np.int64(1)), (torch.zeros(6, 6), torch.tensor(0))]
    assert wb.as_image_dataset(_Listed(gray)).images.shape == (2, 1, 6, 6)


class _Listed(Dataset):
    """A dataset of the given items."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


class _Stream(IterableDataset):
    def __iter__(self):
        yield torch.zeros(1, 4, 4), 0


def test_as_image_dataset_says_what_is_wrong(folder: Path) -> None:
    image = torch.zeros(1, 4, 4)
    with pytest.raises(TypeError, match=r"Item 0 of ImageFolder has a Image image.*ToTensor"):
        wb.as_image_dataset(tv_datasets.ImageFolder(str(folder / "train")))
    with pytest.raises(TypeError, match=r"Item 1 of _Listed has the label 0.5 .*integer class"):
        wb.as_image_dataset(_Listed([(image, 0), (image, 0.5)]))
    with pytest.raises(TypeError, match=r"has a torch.uint8 image .*floating-point"):
        wb.as_image_dataset(_Listed([(image.byte(), 0)]))
    with pytest.raises(TypeError, match=r"Item 0 of _Listed is a Tensor; expected an \(image"):
        wb.as_image_dataset(_Listed([image]))
    with pytest.raises(ValueError, match=r"Item 1 .* shape \(1, 5, 5\), item 0 of \(1, 4, 4\)"):
        wb.as_image_dataset(_Listed([(image, 0), (torch.zeros(1, 5, 5), 1)]))
    with pytest.raises(ValueError, match=r"images are 1x4x4 .* describes 3x8x8"):
        wb.as_image_dataset(_Listed([(image, 0)]), INFO)
    with pytest.raises(ValueError, match=r"labels run from 0 to 7, but .* has 3 classes"):
        wb.as_image_dataset(_Listed([(torch.zeros(3, 8, 8), 0), (torch.zeros(3, 8, 8), 7)]), INFO)
    with pytest.raises(ValueError, match=r"images are 4x6; .* square images"):
        wb.as_image_dataset(_Listed([(torch.zeros(1, 4, 6), 0)]))
    with pytest.raises(TypeError, match=r"_Stream has no length .*TensorDataset"):
        wb.as_image_dataset(_Stream())
    with pytest.raises(ValueError, match="_Listed is empty"):
        wb.as_image_dataset(_Listed([]))
    with pytest.raises(TypeError, match=r"takes a torch Dataset .* got list"):
        wb.as_image_dataset([(image, 0)])


# --- torchvision sources ----------------------------------------------------------------------


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as MNIST ships them: magic (uint8, ndim), big-endian sizes, the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_torchvision_mnist_is_read_into_memory_like_torchvision(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    for prefix, n in (("train", 7), ("t10k", 3)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n))
    train = wb.load_dataset("mnist", "train", root=tmp_path)
    assert isinstance(train, wb.TensorImageDataset) and len(train) == 7
    info = wb.dataset_info("mnist")
    reference = tv_datasets.MNIST(
        str(tmp_path),
        train=True,
        transform=transforms.Compose(
            [transforms.ToTensor(), transforms.Normalize(info.mean, info.std)]
        ),
    )
    images, targets = _stacked(reference)
    assert torch.equal(train.images, images) and torch.equal(train.targets, targets)
    assert len(train.subset(torch.tensor([0, 3]), "train")) == 2  # what --limit does
    assert len(wb.load_dataset("mnist", "test", root=tmp_path)) == 3


# --- checkpoints describe their inputs --------------------------------------------------------


def _saved_pair(tmp_path: Path, in_channels: int, **metadata) -> list[torch.nn.Module]:
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = wb.create_model("cnn", width=0.25, num_classes=3, in_channels=in_channels)
        path = tmp_path / f"seed{seed}.safetensors"
        wb.save_checkpoint(model, path, overwrite=True, **metadata)
        models.append(wb.load_checkpoint(path))
    return models


def _aligns_without_data(a: torch.nn.Module, b: torch.nn.Module, shape: tuple) -> None:
    assert tuple(example_input_for(a).shape) == shape
    aligned = wb.align(a, b, method="weight")
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(aligned(x), b(x), rtol=1e-5, atol=1e-5)


def test_a_model_of_an_unknown_dataset_aligns_without_data(tmp_path: Path) -> None:
    a, b = _saved_pair(tmp_path, 1, dataset="never-registered")
    assert wb.checkpoint_metadata(a)["dataset"] == "never-registered"
    assert "dataset_info" not in wb.checkpoint_metadata(a)
    assert recorded_dataset_info(a) is None
    _aligns_without_data(a, b, (2, 1, 32, 32))  # channels from the first conv, 32x32


def test_a_checkpoint_keeps_its_dataset_info_where_the_name_is_unknown(
    folder: Path, tmp_path: Path
) -> None:
    saved = _saved_pair(tmp_path, 3, dataset=NAME)
    wb.unregister_dataset(NAME)
    a, b = (wb.load_checkpoint(tmp_path / f"seed{s}.safetensors") for s in (0, 1))
    assert saved[0] is not a and recorded_dataset_info(a) == INFO
    _aligns_without_data(a, b, (2, 3, 8, 8))


def test_a_broken_dataset_record_falls_back_to_the_registry(tmp_path: Path) -> None:
    a, b = _saved_pair(tmp_path, 1, dataset="mnist-5k", dataset_info={"image_size": "big"})
    assert recorded_dataset_info(a) == wb.dataset_info("mnist-5k")
    _aligns_without_data(a, b, (2, 1, 28, 28))
