"""scikit-learn's bundled handwritten digits (8x8, 10 classes) as an ImageDataset.

It ships with scikit-learn, so it needs no download: the offline dataset for tests, CPU demos
and CI. 1797 images with values 0..16 are scaled to uint8 0..255 and split once, stratified and
seeded, into 1397 train / 400 test images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dmx.data import ImageDataset, Transforms, in_memory_dataset

NUM_TEST = 400  # ~22% of 1797: enough test images for a stable accuracy, most left for training
SPLIT_SEED = 0  # fixed: the split is part of the dataset, not of a run

# Asymmetric noise for digits: swap visually confusable pairs (the analogue of CIFAR-10's
# cat<->dog): 1<->7 (a stroke with or without a bar), 3<->8 (open vs closed loops), 5<->6
# (closed lower loop). Other digits map to themselves.
DIGITS_TRANSITION = np.array([0, 7, 2, 8, 4, 6, 5, 1, 3, 9], dtype=np.int64)
DIGITS_TRANSITION.setflags(write=False)


def _stratified_test_mask(labels: np.ndarray, num_test: int, seed: int) -> np.ndarray:
    """(N,) bool mask of `num_test` samples, classes in proportion, chosen with `seed`."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(labels)
    # per-class quota by largest remainder so that the quotas sum to exactly num_test
    exact = counts * num_test / len(labels)
    quota = np.floor(exact).astype(int)
    quota[np.argsort(-(exact - quota), kind="stable")[: num_test - quota.sum()]] += 1
    mask = np.zeros(len(labels), dtype=bool)
    for c, q in enumerate(quota):  # 10 classes: a loop over classes, not samples
        mask[rng.permutation(np.flatnonzero(labels == c))[:q]] = True
    return mask


def load_digits_dataset(root: str | Path | None = None, *, download: bool = False) -> ImageDataset:
    """Digits: train (1397, 1, 8, 8) uint8, test (400, 1, 8, 8); `root`/`download` are unused.

    mean/std are measured on the train split (on the [0, 1] scale). Random crop uses padding 1
    (an 8x8 image shifted by up to 1 pixel; 4 would destroy it) and no horizontal flip (digits
    are not mirror-symmetric).
    """
    del root, download  # bundled with scikit-learn
    from sklearn.datasets import load_digits  # imported where used (optional-heavy import)

    bunch = load_digits()
    # values are 0..16 counts of set pixels in 4x4 blocks; 16 -> 255
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    test = _stratified_test_mask(labels, NUM_TEST, SPLIT_SEED)
    train_images = images[~test]
    pixels = train_images.astype(np.float64) / 255.0
    return in_memory_dataset(
        "digits",
        train_images,
        labels[~test],
        images[test],
        labels[test],
        num_classes=10,
        mean=(float(pixels.mean()),),
        std=(float(pixels.std()),),
        transforms=Transforms(crop_padding=1, hflip=False),
        class_names=tuple(str(d) for d in range(10)),
        asym_transition=DIGITS_TRANSITION.copy(),
    )
