"""Config -> training-ready data: the dataset, its noisy labels, the train / noisy-validation /
test index sets (`prepare_data`), and the same as device tensors for the loop (`DeviceData`).

A sweep driver calls `prepare_noisy_labels` once so that every trial trains on one label file.
Every random choice here draws from its own seeded stream, never from the loop's generators, so
preparing data twice gives the same indices and a resumed run sees the same split.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from dmx.config import Config
from dmx.data import ImageDataset, Split, load_dataset
from dmx.data.device import DeviceData
from dmx.data.views import CLEAN_VAL, NOISY_VAL, TEST, LoopSplits, TrainData
from dmx.labels import (
    NoisyLabels,
    load_noisy_labels,
    make_or_load_noisy_labels,
    training_truth,
)


@dataclass(frozen=True)
class PreparedData:
    dataset: ImageDataset
    noisy: NoisyLabels
    train_idx: np.ndarray  # (N,) indices into the dataset's training set used for training
    val_idx: np.ndarray  # (V,) held-out part of the NOISY training set (selection objective)
    test_idx: np.ndarray  # (M,) indices into the test set

    def splits(self) -> LoopSplits:
        """The run's splits with the labels the loop uses: the training split and the noisy
        validation split carry the NOISY labels; test, the clean validation split and a
        dataset's extra test sets their own (true) labels."""
        ds, noisy = self.dataset, torch.from_numpy(self.noisy.noisy_labels)

        def with_noisy(idx: np.ndarray) -> Split:
            return replace(ds.train.select(idx), labels=noisy[torch.from_numpy(idx)])

        evals = {}
        if len(self.val_idx):
            evals[NOISY_VAL] = with_noisy(self.val_idx)
        if ds.val is not None:
            evals[CLEAN_VAL] = ds.val
        if len(self.test_idx):
            evals[TEST] = ds.test.select(self.test_idx)
        evals.update(ds.extra_tests)
        true_y = self.noisy.true_labels[self.train_idx]
        return LoopSplits(with_noisy(self.train_idx), true_y, evals)


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
            true_labels=training_truth(dataset),  # JSON / NPY / CSV files carry no truth
        )
    cache = Path(cfg.noise.cache_dir or Path(cfg.data.root) / "noisy_labels").expanduser()
    noise = cfg.noise
    if noise.mode == "human":
        noise = replace(noise, human_file=str(human_file(cfg)))
    return make_or_load_noisy_labels(dataset, noise, cache_dir=cache.resolve())


def human_file(cfg: Config) -> Path:
    """The CIFAR-N label file of noise.human_file: as given (absolute, or relative to the working
    folder), else in data.root (where the CIFAR-N presets expect CIFAR-10_human.pt)."""
    given = Path(cfg.noise.human_file).expanduser()
    for candidate in (given, Path(cfg.data.root).expanduser() / given):
        if candidate.is_file():
            return candidate.resolve()
    raise FileNotFoundError(
        f"noise.human_file={cfg.noise.human_file!r}: no such file here or in data.root "
        f"({cfg.data.root}). Get the CIFAR-N label files (CIFAR-10_human.pt, CIFAR-100_human.pt) "
        "from github.com/UCSC-REAL/cifar-10-100n into the data folder, or pass "
        "--set noise.human_file=PATH."
    )


FILE_OPTIONS = (
    "test_root",
    "val_root",
    "manifest",
    "classes_file",
    "pipeline",
    "memory_budget_mb",
    "num_workers",
    "skip_bad_images",
)
"""The data.* fields that file-backed loaders take (CIFAR and digits ignore them)."""


def load_run_dataset(cfg: Config) -> ImageDataset:
    """The dataset of `cfg`, with the options file-backed loaders need: the input size (the
    config's, else the model's own: 224 after a 256 resize for ImageNet backbones) and the
    normalisation (ImageNet's statistics for pretrained weights, else the dataset's own)."""
    from dmx.models import input_size  # the model decides its input size when the config does not

    model_resize, model_crop = input_size(cfg.model.name)
    crop, resize = cfg.data.image_size, cfg.data.resize
    if not crop:
        crop, resize = model_crop, resize or model_resize
    elif not resize and model_crop:  # a crop size alone: the model's resize/crop proportion
        resize = round(crop * model_resize / model_crop)
    options = {key: getattr(cfg.data, key) for key in FILE_OPTIONS}
    return load_dataset(
        cfg.data.dataset,
        Path(cfg.data.root),
        download=cfg.data.download,
        image_size=crop,
        resize=resize,
        imagenet_stats=cfg.model.pretrained,
        cache_dir=str(Path(cfg.data.root).expanduser() / ".dmx_cache"),
        **options,
    )


def prepare_noisy_labels(cfg: Config) -> Config:
    """Create (or reuse) the persisted noisy labels of `cfg` and return cfg pointing at the file by
    absolute path. A sweep driver calls this once so that every trial trains on the same labels;
    a subset or split no trial could use (data.subset larger than the data, ...) is refused here,
    on the driver, instead of failing every trial and its retries."""
    noisy = prepare_data(cfg).noisy  # with every check of the splits a trial would make
    # Absolute paths: Ray runs each trial in a working directory of its own.
    paths = {
        f"data.{key}": str(Path(value).expanduser().resolve())
        for key in ("root", "test_root", "val_root", "manifest", "classes_file")
        if (value := getattr(cfg.data, key))
    }
    return cfg.with_overrides({"noise.label_file": str(Path(noisy.path).resolve()), **paths})


def prepare_data(cfg: Config) -> PreparedData:
    dataset = load_run_dataset(cfg)
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


def load_train_data(cfg: Config, prepared: PreparedData, device: torch.device) -> TrainData:
    """The loop's data on `device`: uint8 tensors resident there (`DeviceData`) for in-memory
    datasets, files streamed through DataLoader workers (`StreamData`) otherwise."""
    ds = prepared.dataset
    common = {
        "num_classes": ds.num_classes,
        "mean": ds.mean,
        "std": ds.std,
        "transforms": ds.transforms,
        "device": device,
        "channels_last": cfg.run.channels_last,
    }
    if ds.in_memory:
        return DeviceData(prepared.splits(), **common)
    from dmx.data.stream import StreamData  # DataLoader workers: only for file-backed data

    return StreamData(
        prepared.splits(),
        **common,
        channels=ds.channels,
        num_workers=cfg.data.num_workers,
        seed=cfg.run.seed,
        skip_bad_images=cfg.data.skip_bad_images,
    )


__all__ = [
    "FILE_OPTIONS",
    "PreparedData",
    "load_run_dataset",
    "load_train_data",
    "prepare_data",
    "prepare_noisy_labels",
    "resolve_device",
]
