"""The train / held-out splits of scikit-learn's bundled data sets that the models use.

Fixed seeds, so ``generate.py``, the tests and the benchmark all see the same rows. The
wine split is the same as `edgefleet.simulators.models.train_wine_classifier` makes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

SPLIT_SEED = 0
TEST_SIZE = 0.3


@dataclass(frozen=True)
class Split:
    """Training rows and held-out rows with their integer labels."""

    x_train: NDArray[np.float32]
    y_train: NDArray[np.int64]
    x_test: NDArray[np.float32]
    y_test: NDArray[np.int64]


def _split(x: NDArray[np.float32], y: NDArray[np.int64]) -> Split:
    from sklearn.model_selection import train_test_split

    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=TEST_SIZE, random_state=SPLIT_SEED, stratify=y
    )
    return Split(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def wine_split() -> Split:
    """Wine: 13 raw chemical measurements (float32 ``[N, 13]``), 3 cultivars."""
    from sklearn.datasets import load_wine

    data = load_wine()
    return _split(data.data.astype(np.float32), data.target.astype(np.int64))


def digits_split() -> Split:
    """Digits: 8x8 grey images, pixel values 0..16, as float32 ``[N, 8, 8, 1]``; 10 classes."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images.astype(np.float32)[..., np.newaxis]
    return _split(images, data.target.astype(np.int64))
