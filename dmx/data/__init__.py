"""Datasets: splits of images (in memory, or files streamed from disk), their labels, and a
registry of loaders by name.

Two ways an image reaches the network (DESIGN §2, "two data paths, one loop"):
- in memory: small images (CIFAR, digits, any folder of images that fits the memory budget at its
  size) live whole as one uint8 NCHW tensor. 50k CIFAR images are 150 MB, a selection of samples
  is an index set, and augmentation runs per batch on the device (`dmx.data.augment`), not per
  image in DataLoader workers;
- files: large sets (Clothing1M, WebVision, big image folders) keep a path per image and stream
  through a DataLoader with workers (`dmx.data.stream`).
A `Split` is one or the other; the loop never sees the difference (`dmx.data.views`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

UNKNOWN = -1
"""A true label nobody knows (real-world noisy data): clean-detection metrics skip it."""


@dataclass(frozen=True)
class Split:
    """Images and their labels: a uint8 tensor in memory, or one file path per image (streamed),
    or both (a folder decoded into memory keeps its paths, to name its files in reports).

    `labels` are the labels this split carries: the true ones of a clean benchmark (CIFAR), the
    given (noisy) ones of a real-world training set (Clothing1M; see `ImageDataset.train_truth`).
    """

    labels: torch.Tensor  # (N,) int64
    images: torch.Tensor | None = None  # (N, C, H, W) uint8, CPU: the in-memory path
    files: tuple[str, ...] = ()  # absolute paths: the streaming path

    def __post_init__(self) -> None:
        n = int(self.labels.shape[0]) if self.labels.ndim == 1 else -1
        if self.labels.dtype != torch.int64 or n < 0:
            raise ValueError(
                f"labels must be a 1-D int64 tensor, got {tuple(self.labels.shape)} "
                f"{self.labels.dtype}."
            )
        if self.images is None and not self.files and n:
            raise ValueError("a Split holds images (in memory) or files (or both), not neither.")
        if self.images is not None:
            if self.images.dtype != torch.uint8 or self.images.ndim != 4:
                raise ValueError(
                    f"images must be a (N, C, H, W) uint8 tensor, got "
                    f"{tuple(self.images.shape)} {self.images.dtype}."
                )
            if self.images.shape[0] != n:
                raise ValueError(f"{self.images.shape[0]} images but {n} labels.")
        if self.files and len(self.files) != n:
            raise ValueError(f"{len(self.files)} files but {n} labels.")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def in_memory(self) -> bool:
        return self.images is not None or not self.files

    def select(self, idx: np.ndarray) -> Split:
        """The rows `idx` (N',) of this split, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        t = torch.from_numpy(idx)
        images = self.images[t] if self.images is not None else None
        files = tuple(self.files[i] for i in idx.tolist()) if self.files else ()
        return Split(self.labels[t], images=images, files=files)


@dataclass(frozen=True)
class Transforms:
    """How an image becomes a network input (train: augmented; eval: deterministic).

    In memory (images already at their training size): train = zero-padded random crop of
    `crop_padding` + horizontal flip, as the reference's RandomCrop(32, padding=4) +
    RandomHorizontalFlip(); eval = the image itself. Files: train = resize the shorter side to
    `resize` (0: keep), then RandomCrop(crop) or, with `random_resized_crop`,
    RandomResizedCrop(crop), then the flip; eval = resize, CenterCrop(crop)."""

    crop_padding: int = 4
    hflip: bool = True
    resize: int = 0
    crop: int = 0
    random_resized_crop: bool = False

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or self.resize < 0 or self.crop < 0:
            raise ValueError(f"crop_padding, resize and crop must be >= 0: {self}.")


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image dataset: training and test splits, optional clean validation and extra
    test splits, class names, normalisation and augmentation.

    `train.labels` are the labels the training files carry. A clean benchmark's are the truth
    (`train_truth` None) and noise is made from them (`dmx.labels`). A real-world noisy set's are
    already noisy: `train_truth` then holds what is known of the truth (`UNKNOWN` where nobody
    checked), e.g. Clothing1M's clean_label_kv.txt or a manifest's `true_label` column.
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, on the [0, 1] pixel scale
    std: tuple[float, ...]
    transforms: Transforms = field(default_factory=Transforms)
    asym_transition: np.ndarray | None = None  # (num_classes,) class -> class (asym noise)
    val: Split | None = None  # a CLEAN validation split (Clothing1M's; a folder's val/)
    extra_tests: Mapping[str, Split] = field(default_factory=dict)  # e.g. {"imagenet": ...}
    train_truth: torch.Tensor | None = None  # (N,) int64 with UNKNOWN; None: train.labels true
    channels: int = 3  # of the network input (files are decoded to this many)
    bad_files: tuple[str, ...] = ()  # left out because they cannot be decoded (skip_bad_images)

    def __post_init__(self) -> None:
        # Catch loader bugs here, once, instead of as shape errors deep inside training.
        splits = {"train": self.train, "test": self.test, **dict(self.extra_tests)}
        if self.val is not None:
            splits["val"] = self.val
        for split, s in splits.items():
            labels = s.labels
            if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"{self.name} {split} labels fall outside [0, {self.num_classes})."
                )
            if s.images is not None and s.images.shape[1] != self.channels:
                raise ValueError(
                    f"{self.name} {split} images have {s.images.shape[1]} channels, the "
                    f"dataset {self.channels}."
                )
        if self.train.images is not None and self.test.images is not None:
            if self.test.images.shape[1:] != self.train.images.shape[1:]:
                raise ValueError(f"{self.name}: train and test images differ in shape.")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"{self.name}: mean/std need one value per channel ({self.channels}).")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.class_names)} class names for "
                             f"{self.num_classes} classes.")  # fmt: skip
        if self.asym_transition is not None and self.asym_transition.shape != (self.num_classes,):
            raise ValueError(f"{self.name}: asym_transition must have shape ({self.num_classes},).")
        if self.train_truth is not None and self.train_truth.shape != self.train.labels.shape:
            raise ValueError(f"{self.name}: train_truth must have one entry per training image.")

    # Shorthands of the fields most code reads.
    @property
    def train_labels(self) -> torch.Tensor:
        return self.train.labels

    @property
    def test_labels(self) -> torch.Tensor:
        return self.test.labels

    @property
    def train_images(self) -> torch.Tensor:
        """(N, C, H, W) uint8 of an in-memory dataset."""
        if self.train.images is None:
            raise ValueError(f"{self.name} streams its images from files; it has no tensor.")
        return self.train.images

    @property
    def test_images(self) -> torch.Tensor:
        if self.test.images is None:
            raise ValueError(f"{self.name} streams its images from files; it has no tensor.")
        return self.test.images

    @property
    def in_memory(self) -> bool:
        return self.train.in_memory

    @property
    def in_channels(self) -> int:
        """Number of image channels of the network input (3 for CIFAR, 1 for digits)."""
        return self.channels

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the network input."""
        if self.train.images is not None:
            return int(self.train.images.shape[2]), int(self.train.images.shape[3])
        return self.transforms.crop, self.transforms.crop


def in_memory_dataset(
    name: str,
    xtr: np.ndarray | torch.Tensor,
    ytr: np.ndarray | torch.Tensor,
    xte: np.ndarray | torch.Tensor,
    yte: np.ndarray | torch.Tensor,
    **kw: Any,
) -> ImageDataset:
    """An ImageDataset from (N, C, H, W) uint8 train / test arrays and their labels."""

    def split(x: Any, y: Any) -> Split:
        images = torch.as_tensor(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x)
        return Split(torch.as_tensor(np.asarray(y), dtype=torch.int64), images=images)

    train, test = split(xtr, ytr), split(xte, yte)
    return ImageDataset(name=name, train=train, test=test, channels=train.images.shape[1], **kw)


DatasetLoader = Callable[..., ImageDataset]  # (root, *, download=False, **options) -> ImageDataset


# Loaders import their module when called: keeps `import dmx.data` cheap (no sklearn import
# unless digits are asked for) and avoids a circular import with the modules that import
# ImageDataset from here.
def _cifar10(root: str | Path, *, download: bool = False, **_: Any) -> ImageDataset:
    from dmx.data.cifar import load_cifar10

    return load_cifar10(root, download=download)


def _cifar100(root: str | Path, *, download: bool = False, **_: Any) -> ImageDataset:
    from dmx.data.cifar import load_cifar100

    return load_cifar100(root, download=download)


def _digits(root: str | Path, *, download: bool = False, **_: Any) -> ImageDataset:
    from dmx.data.digits import load_digits_dataset

    return load_digits_dataset(root, download=download)


# Image files (docs/datasets.md): options are dmx.data.filesets.FileOptions plus each layout's own
# (test_root, val_root, manifest, classes_file); none downloads (download is ignored).
def _folder(root: str | Path, *, download: bool = False, **options: Any) -> ImageDataset:
    from dmx.data.folder import load_folder

    return load_folder(root, **options)


def _manifest(root: str | Path, *, download: bool = False, **options: Any) -> ImageDataset:
    from dmx.data.manifest import load_manifest

    return load_manifest(root, **options)


def _cub200(root: str | Path, *, download: bool = False, **options: Any) -> ImageDataset:
    from dmx.data.cub import load_cub200

    return load_cub200(root, **options)


def _clothing1m(root: str | Path, *, download: bool = False, **options: Any) -> ImageDataset:
    from dmx.data.clothing1m import load_clothing1m

    return load_clothing1m(root, **options)


def _webvision(root: str | Path, *, download: bool = False, **options: Any) -> ImageDataset:
    from dmx.data.webvision import load_webvision

    return load_webvision(root, **options)


DATASETS: dict[str, DatasetLoader] = {
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "digits": _digits,  # scikit-learn's bundled 8x8 digits: offline, for tests and CPU demos
    "folder": _folder,  # ROOT/<class name>/<image> (+ data.test_root, data.val_root)
    "manifest": _manifest,  # data.manifest: CSV / parquet of path,label[,true_label][,split]
    "cub200": _cub200,  # CUB-200-2011 as distributed (CUB_200_2011/images.txt, ...)
    "clothing1m": _clothing1m,  # Clothing1M as distributed (noisy_label_kv.txt, images/, ...)
    "webvision": _webvision,  # mini-WebVision (first 50 classes) + ILSVRC2012 val
}


def load_dataset(
    name: str, root: str | Path, *, download: bool = False, **options: Any
) -> ImageDataset:
    """Load a registered dataset by name (`DATASETS`) from `root`; `options` go to loaders that
    take them (file-backed datasets: image size, pipeline, ...)."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}: choose one of {sorted(DATASETS)}.") from None
    return loader(root, download=download, **options)


__all__ = [
    "DATASETS",
    "ImageDataset",
    "Split",
    "Transforms",
    "UNKNOWN",
    "in_memory_dataset",
    "load_dataset",
]
