"""``"digits"``: scikit-learn's 1,797 8x8 digits, offline (an 80/20 class-stratified split)."""

from __future__ import annotations

import numpy as np

from workbench.data.images import DatasetInfo, TensorImageDataset, fixed_split
from workbench.data.registry import register_dataset

INFO = DatasetInfo("digits", 10, 1, 8, (0.3053,), (0.3760,))


@register_dataset("digits", info=INFO)
def digits(split: str) -> TensorImageDataset:
    """scikit-learn's digits scaled to [0, 1]; 20% of every class is the test split."""
    from sklearn.datasets import load_digits

    loaded = load_digits()
    images = (loaded.images[:, None] / 16.0).astype(np.float32)
    return fixed_split(images, loaded.target.astype(np.int64), INFO, split, test_fraction=0.2)
