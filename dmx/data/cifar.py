"""CIFAR-10 and CIFAR-100 from the official "python version" pickles.

Layouts accepted (ROOT is `data.root` / `--data-dir`):
  ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
  ROOT/cifar-100-python/{train, test, meta}
or ROOT itself being that folder (torchvision users sometimes point at it directly).

The pickles are read through `dmx.data.safe_pickle` (no code execution). torchvision is used only
to download and extract when `download=True`; its integrity check is never run on existing files
(locally rebuilt copies have different checksums).

The asymmetric-noise class transitions are facts about these datasets, so they live here too and
travel with each loaded dataset as `ImageDataset.asym_transition` (`dmx.noise.asymmetric_noise`
takes the transition as an argument).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dmx.data import ImageDataset, Transforms, in_memory_dataset
from dmx.data.safe_pickle import load_pickle

# Normalisation constants exactly as the DivideMix reference (dataloader_cifar.py).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
CIFAR100_MEAN = (0.507, 0.487, 0.441)
CIFAR100_STD = (0.267, 0.256, 0.276)

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR100_FOLDER = "cifar-100-python"
_ROW = 3 * 32 * 32  # one image row: R, G, B planes of 32x32, row-major

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip
CIFAR100_COARSE_CLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)  # fmt: skip


# Asymmetric noise of the reference (dataloader_cifar.py), class -> class.
# CIFAR-10 classes: 0 airplane, 1 automobile, 2 bird, 3 cat, 4 deer, 5 dog, 6 frog, 7 horse,
# 8 ship, 9 truck. Reference: truck->automobile, bird->airplane, deer->horse, cat<->dog.
CIFAR10_TRANSITION = np.array([0, 1, 0, 5, 7, 3, 6, 7, 8, 1], dtype=np.int64)
CIFAR10_TRANSITION.setflags(write=False)

# The standard CIFAR-100 fine -> coarse (superclass) table; used only when the data files carry
# no coarse labels. Each coarse class has exactly 5 fine classes.
CIFAR100_FINE_TO_COARSE = np.array([
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
], dtype=np.int64)  # fmt: skip
CIFAR100_FINE_TO_COARSE.setflags(write=False)


def cifar100_transition(fine_to_coarse: np.ndarray | None = None) -> np.ndarray:
    """CIFAR-100 asymmetric transition: each fine class -> the next fine class of its superclass.

    fine_to_coarse (100,) int, default the standard table. Within a superclass the fine classes
    are ordered by index and mapped circularly (a -> b -> ... -> e -> a). Returns (100,) int64,
    a permutation that keeps every class inside its superclass.
    """
    f2c = CIFAR100_FINE_TO_COARSE if fine_to_coarse is None else np.asarray(fine_to_coarse)
    if f2c.ndim != 1 or not np.issubdtype(f2c.dtype, np.integer):
        raise ValueError(f"fine_to_coarse must be a 1-D integer array, got shape {f2c.shape}.")
    transition = np.arange(len(f2c), dtype=np.int64)
    for coarse in np.unique(f2c):
        members = np.flatnonzero(f2c == coarse)  # ascending fine indices
        transition[members] = np.roll(members, -1)
    return transition


class DatasetFormatError(ValueError):
    """A dataset file has the wrong keys, shapes or lengths."""


class DownloadError(RuntimeError):
    """The dataset is missing and could not be downloaded (no internet, proxy, server down)."""


def _resolve_folder(root: str | Path, folder: str, *, download: bool, dataset: str) -> Path:
    """Find `folder` as ROOT/folder or ROOT itself; download into ROOT if asked and missing."""
    root = Path(root).expanduser()
    marker = "test_batch" if folder == CIFAR10_FOLDER else "test"
    for candidate in (root / folder, root):
        if (candidate / marker).is_file():
            return candidate
    if download:
        import torchvision.datasets as tvd  # only needed to fetch; imported where used

        cls = tvd.CIFAR10 if folder == CIFAR10_FOLDER else tvd.CIFAR100
        root.mkdir(parents=True, exist_ok=True)
        try:
            cls(str(root), train=True, download=True)  # downloads + extracts to ROOT/folder
        except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
            # Extracted but failing torchvision's per-file md5 check is fine: the files are read
            # and validated below (shapes, lengths, safe unpickling) like any local copy.
            if not (root / folder / marker).is_file():
                raise DownloadError(
                    f"Could not download {dataset} from {cls.url} into {root}: {exc}. Without "
                    f"internet access, fetch {cls.filename} elsewhere, extract it so that "
                    f"{root / folder}/ exists, and run again without --download."
                ) from exc
        if (root / folder / marker).is_file():
            return root / folder
    raise FileNotFoundError(
        f"{dataset} not found: expected {root / folder}/ (with {marker} inside). Pass "
        f"download=True (`--download`) to fetch it, or point `--data-dir` (data.root) at a folder "
        f"containing `{folder}`."
    )


def _read_split(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One pickle -> images (n, 3, 32, 32) uint8, labels (n,) int64, and the whole dict."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the dataset folder is incomplete. Delete {path.parent} and "
            "download it again (download=True / `--download`)."
        )
    d = load_pickle(path)
    if not isinstance(d, dict) or "data" not in d or label_key not in d:
        keys = sorted(d) if isinstance(d, dict) else type(d).__name__
        raise DatasetFormatError(
            f"{path}: expected a dict with 'data' and {label_key!r}, found {keys}. Is this the "
            "python version of the dataset? Delete it and download it again."
        )
    data = np.asarray(d["data"])
    labels = np.asarray(d[label_key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
        raise DatasetFormatError(
            f"{path}: 'data' must be (n, {_ROW}) uint8 rows, found {data.shape} {data.dtype}. "
            "The file is damaged or not a CIFAR python pickle; delete it and download again."
        )
    if labels.ndim != 1 or len(labels) != len(data):
        raise DatasetFormatError(
            f"{path}: {len(labels)} {label_key} for {len(data)} image rows; the file is "
            "damaged. Delete it and download the dataset again."
        )
    # rows are R, G, B planes of 32x32 in row-major order -> NCHW without any transpose
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64), d


def _names(meta_path: Path, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    if not meta_path.is_file():
        return default
    meta = load_pickle(meta_path)
    names = meta.get(key) if isinstance(meta, dict) else None
    if not names or len(names) != len(default):
        return default
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)


def _check_labels(labels: np.ndarray, num_classes: int, path: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetFormatError(
            f"{path}: labels outside [0, {num_classes}) (found {labels.min()}..{labels.max()}); "
            "this is not the expected dataset. Check the folder or download it again."
        )


def _dataset(name: str, xtr, ytr, xte, yte, **kw: Any) -> ImageDataset:
    # reference: RandomCrop(32, padding=4) + RandomHorizontalFlip()
    transforms = Transforms(crop_padding=4, hflip=True)
    return in_memory_dataset(name, xtr, ytr, xte, yte, transforms=transforms, **kw)


def load_cifar10(root: str | Path, *, download: bool = False) -> ImageDataset:
    """CIFAR-10: train (50000, 3, 32, 32) uint8 in file order, test (10000, 3, 32, 32)."""
    folder = _resolve_folder(root, CIFAR10_FOLDER, download=download, dataset="CIFAR-10")
    parts = [_read_split(folder / f"data_batch_{b}", "labels") for b in range(1, 6)]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte, _ = _read_split(folder / "test_batch", "labels")
    _check_labels(ytr, 10, folder / "data_batch_*")
    _check_labels(yte, 10, folder / "test_batch")
    return _dataset(
        "cifar10", xtr, ytr, xte, yte,
        num_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        class_names=_names(folder / "batches.meta", "label_names", CIFAR10_CLASSES),
        asym_transition=CIFAR10_TRANSITION.copy(),
    )  # fmt: skip


def fine_to_coarse_from_labels(fine: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Derive the (100,) fine -> coarse table from per-sample labels (N,), (N,).

    Fine classes absent from the data take the standard table's entry. Raises if a fine class
    appears with two coarse labels (the files are inconsistent).
    """
    table = CIFAR100_FINE_TO_COARSE.copy()
    pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0)  # (k, 2) distinct pairs
    if len(np.unique(pairs[:, 0])) != len(pairs):
        raise DatasetFormatError(
            "CIFAR-100 coarse_labels are inconsistent: a fine class carries two superclasses."
        )
    table[pairs[:, 0]] = pairs[:, 1]
    return table


def load_cifar100(root: str | Path, *, download: bool = False) -> ImageDataset:
    """CIFAR-100 (fine labels): train (50000, 3, 32, 32) uint8, test (10000, 3, 32, 32).

    The asymmetric transition maps each fine class to the next fine class of its superclass,
    with the superclasses taken from the files' coarse_labels when present.
    """
    folder = _resolve_folder(root, CIFAR100_FOLDER, download=download, dataset="CIFAR-100")
    xtr, ytr, train_dict = _read_split(folder / "train", "fine_labels")
    xte, yte, _ = _read_split(folder / "test", "fine_labels")
    _check_labels(ytr, 100, folder / "train")
    _check_labels(yte, 100, folder / "test")
    coarse = train_dict.get("coarse_labels")
    if coarse is not None and len(coarse) == len(ytr):
        f2c = fine_to_coarse_from_labels(ytr, np.asarray(coarse, dtype=np.int64))
    else:  # files without coarse labels: the standard table
        f2c = CIFAR100_FINE_TO_COARSE
    return _dataset(
        "cifar100", xtr, ytr, xte, yte,
        num_classes=100,
        mean=CIFAR100_MEAN,
        std=CIFAR100_STD,
        class_names=_names(folder / "meta", "fine_label_names", CIFAR100_CLASSES),
        asym_transition=cifar100_transition(f2c),
    )  # fmt: skip
