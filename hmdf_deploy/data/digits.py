"""scikit-learn's bundled 8×8 digits: the static-image dataset that works offline (DESIGN
"Data that works offline").

1797 grey images, 10 classes, shipped inside scikit-learn, so no download is ever needed. The
train/test split is fixed (stratified, 20 % test, ``random_state=0``) and shared with
neuro-digits, so accuracies on the two are comparable and never depend on a training seed.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

TEST_FRACTION = 0.2
SPLIT_RANDOM_STATE = 0


@lru_cache(maxsize=1)
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 images scaled to [0, 1] as float32 (N, 8, 8), and their int64 labels (N,).

    Read once per process (the loader parses a CSV).
    """
    from sklearn.datasets import load_digits  # imported lazily: sklearn is slow to import

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    images.setflags(write=False)  # cached and shared: nobody may modify it in place
    labels = bunch.target.astype(np.int64)
    labels.setflags(write=False)
    return images, labels


@lru_cache(maxsize=1)
def digit_split() -> tuple[np.ndarray, np.ndarray]:
    """Fixed train and test indices into `digit_images` (stratified, independent of any seed)."""
    from sklearn.model_selection import train_test_split

    _, labels = digit_images()
    train, test = train_test_split(
        np.arange(len(labels)),
        test_size=TEST_FRACTION,
        stratify=labels,
        random_state=SPLIT_RANDOM_STATE,
    )
    train, test = np.sort(train), np.sort(test)
    train.setflags(write=False)
    test.setflags(write=False)
    return train, test
