"""Class names and image thumbnails of training samples, for label-issue outputs and reports.

`class_names(dataset)` needs no files (the names are facts of the dataset); `thumbnails` reads the
dataset from its folder (the run's `data.root`) and returns small PNGs of the samples asked for.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def class_names(dataset: str) -> tuple[str, ...] | None:
    """Class names of a dmx dataset by name, without reading its files (None when unknown)."""
    if dataset in ("cifar10", "cifar100"):
        from dmx.data.cifar import CIFAR10_CLASSES, CIFAR100_CLASSES

        return CIFAR10_CLASSES if dataset == "cifar10" else CIFAR100_CLASSES
    if dataset == "digits":
        return tuple(str(d) for d in range(10))
    return None


def png_thumbnail(image: np.ndarray, *, scale: int = 3) -> bytes:
    """(C, H, W) uint8 (C = 1 or 3) -> PNG bytes, enlarged `scale` times (nearest neighbour, so
    an 8x8 digit or a 32x32 CIFAR image stays sharp)."""
    from matplotlib.image import imsave

    pixels = np.asarray(image)
    pixels = pixels[0] if pixels.shape[0] == 1 else np.transpose(pixels, (1, 2, 0))  # (H, W[, 3])
    pixels = np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)
    buffer = io.BytesIO()
    imsave(buffer, pixels, format="png", cmap="gray" if pixels.ndim == 2 else None)
    return buffer.getvalue()


def thumbnails(
    dataset: str, root: str | Path, indices: Sequence[int], *, scale: int = 3
) -> list[bytes]:
    """PNG thumbnails of the training samples `indices` (indices into the full training set, as
    clean_probs.parquet's `index`) of `dataset` read from `root` (never downloaded).
    FileNotFoundError / ValueError when the data are not there."""
    from dmx.data import load_dataset

    data = load_dataset(dataset, root, download=False)
    images = data.train_images.numpy()  # (N, C, H, W) uint8
    return [png_thumbnail(images[int(i)], scale=scale) for i in indices]


__all__ = ["class_names", "png_thumbnail", "thumbnails"]
