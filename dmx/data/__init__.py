"""Datasets as in-memory uint8 tensors, plus a name registry.

Small-image datasets (CIFAR, digits) live whole in memory as uint8 NCHW tensors: 50k CIFAR
images are 150 MB, a selection of samples is a boolean mask, and augmentation runs per batch on
the device (see `dmx.data.augment`) instead of per image in DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image dataset held in memory.

    The labels the files carry are treated as the true labels; noise is applied later
    (`dmx.labels`).
    """

    name: str
    train_images: torch.Tensor  # (N, C, H, W) uint8, CPU
    train_labels: torch.Tensor  # (N,) int64
    test_images: torch.Tensor  # (M, C, H, W) uint8
    test_labels: torch.Tensor  # (M,) int64
    num_classes: int
    mean: tuple[float, ...]  # per channel, on the [0, 1] pixel scale
    std: tuple[float, ...]
    crop_padding: int  # random-crop padding of the train augmentation (4 on CIFAR)
    hflip: bool  # random horizontal flip in the train augmentation
    class_names: tuple[str, ...]
    asym_transition: np.ndarray | None  # (num_classes,) class -> class for asymmetric noise

    def __post_init__(self) -> None:
        # Catch loader bugs here, once, instead of as shape errors deep inside training.
        for split, images, labels in (
            ("train", self.train_images, self.train_labels),
            ("test", self.test_images, self.test_labels),
        ):
            if images.dtype != torch.uint8 or images.ndim != 4:
                raise ValueError(
                    f"{self.name} {split}_images must be a (N, C, H, W) uint8 tensor, got "
                    f"{tuple(images.shape)} {images.dtype}."
                )
            if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
                raise ValueError(
                    f"{self.name} {split}_labels must be int64 of shape ({images.shape[0]},), "
                    f"got {tuple(labels.shape)} {labels.dtype}."
                )
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"{self.name} {split}_labels fall outside [0, {self.num_classes})."
                )
        c = self.train_images.shape[1]
        if self.test_images.shape[1:] != self.train_images.shape[1:]:
            raise ValueError(f"{self.name}: train and test images differ in shape.")
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"{self.name}: mean/std need one value per channel ({c}).")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class names for "
                             f"{self.num_classes} classes.")  # fmt: skip
        if self.asym_transition is not None and self.asym_transition.shape != (self.num_classes,):
            raise ValueError(f"{self.name}: asym_transition must have shape ({self.num_classes},).")

    @property
    def in_channels(self) -> int:
        """Number of image channels (3 for CIFAR, 1 for digits)."""
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of every image."""
        return int(self.train_images.shape[2]), int(self.train_images.shape[3])


DatasetLoader = Callable[..., ImageDataset]  # (root, *, download=False) -> ImageDataset


# Loaders import their module when called: keeps `import dmx.data` cheap (no sklearn import
# unless digits are asked for) and avoids a circular import with the modules that import
# ImageDataset from here.
def _cifar10(root: str | Path, *, download: bool = False) -> ImageDataset:
    from dmx.data.cifar import load_cifar10

    return load_cifar10(root, download=download)


def _cifar100(root: str | Path, *, download: bool = False) -> ImageDataset:
    from dmx.data.cifar import load_cifar100

    return load_cifar100(root, download=download)


def _digits(root: str | Path, *, download: bool = False) -> ImageDataset:
    from dmx.data.digits import load_digits_dataset

    return load_digits_dataset(root, download=download)


DATASETS: dict[str, DatasetLoader] = {
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "digits": _digits,  # scikit-learn's bundled 8x8 digits: offline, for tests and CPU demos
}


def load_dataset(name: str, root: str | Path, *, download: bool = False) -> ImageDataset:
    """Load a registered dataset by name (`DATASETS`) from `root`."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}: choose one of {sorted(DATASETS)}.") from None
    return loader(root, download=download)


__all__ = ["DATASETS", "ImageDataset", "load_dataset"]
