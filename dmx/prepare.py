"""Config -> training-ready data: the dataset, its noisy labels, the train / noisy-validation /
test index sets (`prepare_data`), and the same as device tensors for the loop (`DeviceData`).

A sweep driver calls `prepare_noisy_labels` once so that every trial trains on one label file.
Every random choice here draws from its own seeded stream, never from the loop's generators, so
preparing data twice gives the same indices and a resumed run sees the same split.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dmx.config import Config
from dmx.data import ImageDataset, load_dataset
from dmx.data.augment import normalize, random_crop_flip
from dmx.labels import NoisyLabels, load_noisy_labels, make_or_load_noisy_labels


@dataclass(frozen=True)
class PreparedData:
    dataset: ImageDataset
    noisy: NoisyLabels
    train_idx: np.ndarray  # (N,) indices into the dataset's training set used for training
    val_idx: np.ndarray  # (V,) held-out part of the NOISY training set (selection objective)
    test_idx: np.ndarray  # (M,) indices into the test set


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU. Asking for CUDA without it is an error, not a
    silent fallback: a sweep that believes it has GPUs must not crawl on CPUs."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"run.device={name!r} but this machine has no usable CUDA device "
            f"(torch {torch.__version__}, cuda build: {torch.version.cuda}). "
            "Use run.device=auto or cpu, or run on a GPU node."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"run.device={name!r} but MPS is not available. Use auto or cpu.")
    return device


_SPLIT_STREAM, _TEST_STREAM = 0x5B117, 0x7E57  # stream tags: never collide with noise.seed


def _stratified_subset(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` indices with the class proportions of `labels`, sorted (seeded)."""
    if size >= len(labels):
        return np.arange(len(labels))
    order = rng.permutation(len(labels))
    # Round-robin over classes in a shuffled order keeps proportions within one sample per class.
    by_class = [order[labels[order] == c] for c in np.unique(labels)]
    take = np.floor(np.array([len(b) for b in by_class]) * size / len(labels)).astype(int)
    remaining = size - take.sum()
    for c in rng.permutation(len(by_class))[:remaining]:
        take[c] += 1
    return np.sort(np.concatenate([b[:t] for b, t in zip(by_class, take)]))


def _load_labels(cfg: Config, dataset: ImageDataset) -> NoisyLabels:
    num_train = len(dataset.train_labels)
    if cfg.noise.label_file:
        return load_noisy_labels(
            Path(cfg.noise.label_file),
            expected_num_samples=num_train,
            num_classes=dataset.num_classes,
            true_labels=dataset.train_labels.numpy(),  # JSON / NPY / CSV files carry no truth
        )
    cache = Path(cfg.noise.cache_dir or Path(cfg.data.root) / "noisy_labels").expanduser()
    return make_or_load_noisy_labels(dataset, cfg.noise, cache_dir=cache.resolve())


def prepare_noisy_labels(cfg: Config) -> Config:
    """Create (or reuse) the persisted noisy labels of `cfg` and return cfg pointing at the file by
    absolute path. A sweep driver calls this once so that every trial trains on the same labels."""
    dataset = load_dataset(cfg.data.dataset, Path(cfg.data.root), download=cfg.data.download)
    noisy = _load_labels(cfg, dataset)
    root = str(Path(cfg.data.root).expanduser().resolve())
    return cfg.with_overrides(
        {"noise.label_file": str(Path(noisy.path).resolve()), "data.root": root}
    )


def prepare_data(cfg: Config) -> PreparedData:
    dataset = load_dataset(cfg.data.dataset, Path(cfg.data.root), download=cfg.data.download)
    noisy = _load_labels(cfg, dataset)
    # Own streams for the split (the noise generator may use the same integer seed, and the same
    # stream would pick the same samples: the validation set would be exactly the flipped labels).
    split_rng = np.random.default_rng([cfg.data.split_seed, _SPLIT_STREAM])
    pool = np.arange(len(dataset.train_labels))
    if cfg.data.subset > len(pool):
        raise ValueError(
            f"data.subset={cfg.data.subset} is larger than the {cfg.data.dataset} training set "
            f"({len(pool)} samples); use --subset {len(pool)} or less, or 0 for all."
        )
    if cfg.data.subset:
        pool = _stratified_subset(noisy.noisy_labels, cfg.data.subset, split_rng)
    # The validation split is drawn from the NOISY labels only: a user never has the truth.
    num_val = int(round(cfg.data.val_fraction * len(pool)))
    shuffled = split_rng.permutation(pool)
    val_idx, train_idx = np.sort(shuffled[:num_val]), np.sort(shuffled[num_val:])
    test_idx = np.arange(len(dataset.test_labels))
    if cfg.data.test_subset:
        test_idx = _stratified_subset(
            dataset.test_labels.numpy(),
            cfg.data.test_subset,
            np.random.default_rng([cfg.data.split_seed, _TEST_STREAM]),
        )
    if len(train_idx) < 2:
        raise ValueError(
            f"Only {len(train_idx)} training samples remain after data.subset={cfg.data.subset} "
            f"and data.val_fraction={cfg.data.val_fraction}; use a larger subset or a smaller "
            "fraction."
        )
    absent = set(range(dataset.num_classes)) - set(
        np.unique(noisy.noisy_labels[train_idx]).tolist()
    )
    if absent:
        # Not fatal (e.g. a tiny subset of CIFAR-100): the nets keep all outputs, but say so.
        warnings.warn(
            f"Classes {sorted(absent)[:10]}{'...' if len(absent) > 10 else ''} never occur among "
            "the noisy training labels: the model cannot learn them from labels. Check the noise "
            "file or use a larger data.subset.",
            stacklevel=2,
        )
    return PreparedData(dataset, noisy, train_idx, val_idx, test_idx)


class DeviceData:
    """The prepared data as device tensors, plus the train-time transform (uint8 -> augmented,
    normalised float). What the loop sees of the data: index sets into `train_x`, never files."""

    def __init__(self, cfg: Config, data: PreparedData, device: torch.device) -> None:
        ds = data.dataset
        self.device = device
        self.mean, self.std = ds.mean, ds.std
        self.padding, self.hflip = ds.crop_padding, ds.hflip
        self.channels_last = cfg.run.channels_last
        # uint8 on the device: 4x smaller than float, augmentation and normalisation per batch.
        self.train_x = ds.train_images[data.train_idx].to(device)  # (N, C, H, W) uint8
        self.noisy_y = torch.from_numpy(data.noisy.noisy_labels[data.train_idx]).to(device)  # (N,)
        self.true_y = data.noisy.true_labels[data.train_idx]  # (N,) numpy, metrics only
        self.val_x = ds.train_images[data.val_idx].to(device)
        self.val_y = torch.from_numpy(data.noisy.noisy_labels[data.val_idx]).to(device)
        self.test_x = ds.test_images[data.test_idx].to(device)
        self.test_y = ds.test_labels[data.test_idx].to(device)
        self.num_classes = ds.num_classes

    def _format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_view(self, images_u8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        aug = random_crop_flip(images_u8, padding=self.padding, hflip=self.hflip, generator=gen)
        return self._format(normalize(aug, self.mean, self.std))

    def plain_view(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self._format(normalize(images_u8, self.mean, self.std))


__all__ = [
    "DeviceData",
    "PreparedData",
    "prepare_data",
    "prepare_noisy_labels",
    "resolve_device",
]
