"""Datasets: the embedded mnist-5k and digits, torchvision offline errors, splits and batches."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from sklearn.model_selection import StratifiedShuffleSplit
from torch.utils.data import DataLoader, Subset, TensorDataset

import workbench as wb
from workbench import batching
from workbench.data import mnist5k


def _rows(images: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in images.flatten(1)}


# --- mnist-5k ---------------------------------------------------------------------------


def test_mnist5k_sizes_and_classes(mnist_train, mnist_test):
    assert len(mnist_train) == 4000
    assert len(mnist_test) == 1000
    assert mnist_train.images.shape == (4000, 1, 28, 28)
    assert mnist_test.images.shape == (1000, 1, 28, 28)
    assert mnist_train.images.dtype == torch.float32
    assert mnist_train.targets.dtype == torch.int64
    assert sorted(mnist_train.targets.unique().tolist()) == list(range(10))
    assert sorted(mnist_test.targets.unique().tolist()) == list(range(10))
    assert mnist_train.split == "train"
    assert mnist_test.split == "test"
    assert mnist_train.info == wb.dataset_info("mnist-5k")


def test_mnist5k_split_is_stratified(mnist_train, mnist_test):
    train_counts = mnist_train.targets.bincount(minlength=10)
    test_counts = mnist_test.targets.bincount(minlength=10)
    for cls in range(10):
        total = int(train_counts[cls] + test_counts[cls])
        assert int(test_counts[cls]) == round(0.2 * total), cls


def test_mnist5k_is_deterministic(mnist_train, mnist_test):
    # Re-read the source file so that the second load does not share the cached arrays.
    mnist5k.arrays.cache_clear()
    train2 = wb.load_dataset("mnist-5k", "train")
    test2 = wb.load_dataset("mnist-5k", "test")
    assert torch.equal(train2.images, mnist_train.images)
    assert torch.equal(train2.targets, mnist_train.targets)
    assert torch.equal(test2.images, mnist_test.images)
    assert torch.equal(test2.targets, mnist_test.targets)


def test_mnist5k_is_normalized(mnist_train):
    assert abs(mnist_train.images.mean().item()) < 0.05
    assert abs(mnist_train.images.std().item() - 1.0) < 0.05
    # Background pixels map to -mean/std of the dataset's statistics.
    info = mnist_train.info
    assert mnist_train.images.min().item() == pytest.approx(-info.mean[0] / info.std[0], abs=1e-6)


def test_mnist5k_train_and_test_are_disjoint(mnist_train, mnist_test):
    train_rows = _rows(mnist_train.images)
    test_rows = _rows(mnist_test.images)
    assert len(train_rows & test_rows) == 0
    # Sanity check of the comparison itself: it does find a shared row.
    assert len(train_rows & _rows(mnist_train.images[:3])) == 3


def test_getitem_and_repr(mnist_test):
    image, label = mnist_test[7]
    assert torch.equal(image, mnist_test.images[7])
    assert int(label) == int(mnist_test.targets[7])
    assert "mnist-5k" in repr(mnist_test)
    assert "n=1000" in repr(mnist_test)
    assert "1x28x28" in repr(mnist_test)


def test_subset_keeps_rows_and_info(mnist_test):
    idx = torch.tensor([5, 0, 999])
    sub = mnist_test.subset(idx, "val")
    assert len(sub) == 3
    assert sub.split == "val"
    assert sub.info is mnist_test.info
    assert torch.equal(sub.images, mnist_test.images[idx])
    assert torch.equal(sub.targets, mnist_test.targets[idx])
    sub_np = mnist_test.subset(np.array([1, 2]), "x")
    assert torch.equal(sub_np.targets, mnist_test.targets[1:3])


def test_tensor_image_dataset_validates_shapes():
    info = wb.dataset_info("mnist-5k")
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        wb.TensorImageDataset(torch.zeros(4, 28, 28), torch.zeros(4, dtype=torch.long), info, "x")
    with pytest.raises(ValueError, match="3 targets"):
        wb.TensorImageDataset(
            torch.zeros(4, 1, 28, 28), torch.zeros(3, dtype=torch.long), info, "x"
        )


# --- digits -------------------------------------------------------------------------------


def test_digits_shapes_and_split():
    from sklearn.datasets import load_digits

    train = wb.load_dataset("digits", "train")
    test = wb.load_dataset("digits", "test")
    assert train.images.shape[1:] == (1, 8, 8)
    assert test.images.shape[1:] == (1, 8, 8)
    info = wb.dataset_info("digits")
    assert (info.in_channels, info.image_size, info.num_classes) == (1, 8, 10)
    all_counts = np.bincount(load_digits().target, minlength=10)
    assert len(train) + len(test) == all_counts.sum()
    expected_test = [round(0.2 * n) for n in all_counts]
    assert test.targets.bincount(minlength=10).tolist() == expected_test
    assert abs(train.images.mean().item()) < 0.1


# --- dataset_info / load_dataset errors ---------------------------------------------------


def test_datasets_and_info():
    names = wb.datasets()
    for name in ("mnist-5k", "digits", "mnist", "fashion-mnist", "cifar10", "cifar100"):
        assert name in names
    for name in names:
        info = wb.dataset_info(name)
        assert info.name == name
        assert len(info.mean) == len(info.std) == info.in_channels
    assert wb.dataset_info("cifar100").num_classes == 100
    assert wb.dataset_info("cifar10").in_channels == 3


def test_list_datasets_is_the_old_name_of_datasets():
    with pytest.warns(FutureWarning, match=r"renamed datasets\(\)"):
        assert wb.list_datasets() == wb.datasets()


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match=r"Unknown dataset 'imagenet'.*'mnist-5k'.*'cifar10'"):
        wb.dataset_info("imagenet")
    with pytest.raises(ValueError, match="Unknown dataset 'nope'"):
        wb.load_dataset("nope")


def test_bad_split_rejected():
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'val'"):
        wb.load_dataset("mnist-5k", "val")


def test_torchvision_dataset_missing_offline(tmp_path):
    with pytest.raises(wb.DatasetUnavailableError) as info:
        wb.load_dataset("mnist", "train", root=tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message
    assert "'mnist'" in message
    assert str(tmp_path) in message
    assert "download=True" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__

    with pytest.raises(wb.DatasetUnavailableError, match="'cifar10'") as info:
        wb.load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert str(tmp_path) in str(info.value)
    assert "\n" not in str(info.value)


def test_torchvision_download_failure_is_one_clean_line(tmp_path, monkeypatch):
    from torchvision import datasets

    # Simulate no network deterministically: the only mirror refuses connections.
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    started = time.perf_counter()
    with pytest.raises(wb.DatasetUnavailableError) as info:
        wb.load_dataset("mnist", "train", root=tmp_path, download=True)
    elapsed = time.perf_counter() - started
    if elapsed > 30:
        pytest.skip(f"the failing download took {elapsed:.0f} s")
    message = str(info.value)
    assert message.startswith("Could not download 'mnist'")
    assert str(tmp_path) in message
    assert "\n" not in message
    assert "Traceback" not in message
    assert 'File "' not in message


# --- train_val_split ----------------------------------------------------------------------


def _indexed_dataset(n_per_class: int = 30, classes: int = 5) -> wb.TensorImageDataset:
    """Images whose pixels all equal their row index, so rows can be traced back."""
    n = n_per_class * classes
    images = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()
    targets = torch.arange(n) % classes
    return wb.TensorImageDataset(images, targets, wb.dataset_info("mnist-5k"), "train")


def _indices(ds: wb.TensorImageDataset) -> list[int]:
    return ds.images[:, 0, 0, 0].long().tolist()


def test_train_val_split_stratified_disjoint_sizes():
    ds = _indexed_dataset(n_per_class=30, classes=5)
    train, val = wb.train_val_split(ds, val_fraction=0.2, seed=3)
    assert isinstance(train, wb.TensorImageDataset)
    assert (train.split, val.split) == ("train", "val")
    assert len(val) == 5 * round(30 * 0.2)
    assert len(train) + len(val) == len(ds)
    train_idx, val_idx = set(_indices(train)), set(_indices(val))
    assert not train_idx & val_idx
    assert train_idx | val_idx == set(range(len(ds)))
    assert val.targets.bincount(minlength=5).tolist() == [round(30 * 0.2)] * 5
    # Targets travel with their images.
    assert torch.equal(val.targets, torch.tensor(_indices(val)) % 5)


def test_train_val_split_on_mnist_is_stratified(mnist_train):
    train, val = wb.train_val_split(mnist_train, val_fraction=0.1, seed=0)
    counts = mnist_train.targets.bincount(minlength=10).double()
    held = val.targets.bincount(minlength=10).double()
    assert len(val) == math.ceil(0.1 * len(mnist_train))
    assert ((held - 0.1 * counts).abs() < 1).all()  # each class's share, to one example
    assert len(train) + len(val) == len(mnist_train)
    assert not _rows(train.images) & _rows(val.images)
    # a random order, not sorted by class
    assert (val.targets[1:] != val.targets[:-1]).sum() > len(val) / 2


def test_train_val_split_is_scikit_learns_stratified_shuffle_split():
    ds = _indexed_dataset(n_per_class=13, classes=4)
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=0.3, random_state=5)
    keep, held = next(splitter.split(np.zeros(len(ds)), ds.targets.numpy()))
    train, val = wb.train_val_split(ds, 0.3, seed=5)
    assert _indices(train) == keep.tolist()
    assert _indices(val) == held.tolist()


def test_train_val_split_refuses_a_split_it_cannot_stratify():
    ds = _indexed_dataset(n_per_class=30, classes=5)
    with pytest.raises(ValueError, match=r"150 examples with val_fraction=0\.02 is not possible"):
        wb.train_val_split(ds, 0.02)  # 3 held out, 5 classes
    single = wb.TensorImageDataset(
        ds.images[:31], torch.tensor([0] * 30 + [1]), wb.dataset_info("mnist-5k"), "train"
    )
    with pytest.raises(ValueError, match=r"only 1 member"):
        wb.train_val_split(single, 0.2)


def test_train_val_split_deterministic_and_seeded():
    ds = _indexed_dataset()
    a_train, a_val = wb.train_val_split(ds, 0.2, seed=7)
    b_train, b_val = wb.train_val_split(ds, 0.2, seed=7)
    _, c_val = wb.train_val_split(ds, 0.2, seed=8)
    assert _indices(a_val) == _indices(b_val)
    assert _indices(a_train) == _indices(b_train)
    assert _indices(a_val) != _indices(c_val)


def test_train_val_split_generic_dataset_gives_subsets():
    x = torch.randn(40, 1, 4, 4)
    y = torch.arange(40) % 4
    train, val = wb.train_val_split(TensorDataset(x, y), val_fraction=0.25, seed=0)
    assert isinstance(train, Subset) and isinstance(val, Subset)
    assert len(val) == 10  # a quarter of 40
    assert not set(train.indices) & set(val.indices)
    assert set(train.indices) | set(val.indices) == set(range(40))
    # 2.5 of each class: two classes give 2, two give 3
    assert sorted(torch.bincount(y[val.indices], minlength=4).tolist()) == [2, 2, 3, 3]


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_train_val_split_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        wb.train_val_split(_indexed_dataset(), val_fraction=fraction)


# --- batches ------------------------------------------------------------------------------


def test_batches_slicing_matches_dataloader(mnist_test):
    sliced = list(batching.batches(mnist_test, batch_size=300))
    loaded = list(DataLoader(mnist_test, batch_size=300, shuffle=False))
    assert [len(labels) for _, labels in sliced] == [300, 300, 300, 100]
    assert len(sliced) == len(loaded)
    for (xs, ys), (xl, yl) in zip(sliced, loaded, strict=True):
        assert torch.equal(xs, xl)
        assert torch.equal(ys, yl)


def test_batches_through_dataloader_and_generic_dataset(mnist_test):
    loader = DataLoader(mnist_test, batch_size=250)
    via_loader = list(batching.batches(loader, batch_size=7))  # the loader's batch size wins
    assert [len(y) for _, y in via_loader] == [250] * 4
    generic = TensorDataset(mnist_test.images, mnist_test.targets)
    via_generic = list(batching.batches(generic, batch_size=400))
    assert [len(y) for _, y in via_generic] == [400, 400, 200]
    assert torch.equal(torch.cat([x for x, _ in via_generic]), mnist_test.images)


def test_batches_shuffle_reproducible(mnist_test):
    def run(seed):
        gen = torch.Generator().manual_seed(seed)
        return list(batching.batches(mnist_test, 300, shuffle=True, generator=gen))

    first, second, other = run(5), run(5), run(6)
    for (x1, y1), (x2, y2) in zip(first, second, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    labels = torch.cat([y for _, y in first])
    assert not torch.equal(labels, mnist_test.targets)  # actually shuffled
    assert torch.equal(labels.sort().values, mnist_test.targets.sort().values)  # a permutation
    assert not torch.equal(labels, torch.cat([y for _, y in other]))


def test_batches_shuffle_generic_dataset_reproducible():
    ds = TensorDataset(torch.arange(50.0).view(50, 1, 1, 1), torch.arange(50))

    def order(seed):
        gen = torch.Generator().manual_seed(seed)
        return torch.cat([y for _, y in batching.batches(ds, 16, shuffle=True, generator=gen)])

    assert torch.equal(order(1), order(1))
    assert sorted(order(1).tolist()) == list(range(50))
    assert order(1).tolist() != list(range(50))


def test_batches_max_batches(mnist_test):
    got = list(batching.batches(mnist_test, 100, max_batches=3))
    assert len(got) == 3
    assert torch.equal(torch.cat([y for _, y in got]), mnist_test.targets[:300])
    gen = torch.Generator().manual_seed(0)
    assert (
        len(list(batching.batches(mnist_test, 100, shuffle=True, generator=gen, max_batches=2)))
        == 2
    )
    loader = DataLoader(mnist_test, batch_size=100)
    assert len(list(batching.batches(loader, max_batches=4))) == 4
    assert len(list(batching.batches(mnist_test, 100, max_batches=0))) == 0


def test_batches_rejects_non_dataset():
    with pytest.raises(TypeError, match="Expected a torch Dataset or DataLoader, got Tensor"):
        list(batching.batches(torch.zeros(3, 1, 2, 2)))
