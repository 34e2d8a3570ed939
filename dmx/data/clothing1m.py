"""dataset=clothing1m: Clothing1M (Xiao et al., CVPR 2015) in its distributed layout.

    ROOT/images/<0-9>/<00-99>/<name>.jpg     the ~1M images
    ROOT/noisy_label_kv.txt                  images/0/00/x.jpg LABEL   (noisy labels, ~1M)
    ROOT/clean_label_kv.txt                  images/0/00/x.jpg LABEL   (clean labels, ~72k)
    ROOT/noisy_train_key_list.txt            images/0/00/x.jpg         (the noisy training set)
    ROOT/clean_val_key_list.txt              (the clean validation set, 14,313 keys)
    ROOT/clean_test_key_list.txt             (the clean test set, 10,526 keys)

The list files may also sit in ROOT/annotations/. The DivideMix reference
(dataloader_clothing1M.py) points ROOT at a folder holding the list files and the image folders
0..9 directly, and maps a key to ROOT + key[7:] (the key without its `images/`); that layout is
accepted too: without ROOT/images/, a key `images/...` is looked up the reference's way.

Training split: noisy_train_key_list with its NOISY labels (noisy_label_kv); `train_truth` is the
clean label (clean_label_kv) where a key has one, UNKNOWN elsewhere. Clean validation and test
splits: the clean key lists with their clean labels. Normalisation: Clothing1M's own mean / std
(the reference's), whatever the weights; Resize 256 -> RandomCrop 224 + flip for training,
Resize 256 -> CenterCrop 224 for evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dmx.data import UNKNOWN, ImageDataset
from dmx.data.filesets import (
    DataLayoutError,
    FileLayout,
    FileList,
    FileOptions,
    abspath,
    build_file_dataset,
    missing_dataset,
    parse_key_label,
    read_lines,
)

CLASSES = (
    "T-Shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker", "Jacket",
    "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear",
)  # fmt: skip
# The reference's dataloader_clothing1M.py: Normalize((0.6959, 0.6537, 0.6371), (0.3113, ...)).
MEAN = (0.6959, 0.6537, 0.6371)
STD = (0.3113, 0.3192, 0.3214)
SOURCE = (
    "Clothing1M is given on request by its authors (Tong Xiao et al.; see "
    "https://github.com/Cysu/noisy_label for the contact), then extract images/ and the list "
    "files into data.root"
)
_PREFIX = "images/"


def _list_dir(root: Path) -> Path:
    for folder in (root, root / "annotations"):
        if (folder / "noisy_label_kv.txt").is_file():
            return folder
    raise missing_dataset("Clothing1M", root / "noisy_label_kv.txt", SOURCE)


def _kv(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise missing_dataset("Clothing1M", path, SOURCE)
    fix = "The file is damaged; copy it again from the Clothing1M release."
    out = {}
    for lineno, text in read_lines(path):
        key, label = parse_key_label(path, lineno, text, fix=fix)
        if not 0 <= label < len(CLASSES):
            raise DataLayoutError(
                f"{path}: line {lineno}: label {label} is outside 0..{len(CLASSES) - 1}. {fix}"
            )
        out[key] = label
    return out


def _keys(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise missing_dataset("Clothing1M", path, SOURCE)
    return read_lines(path)


def load_clothing1m_layout(root: str | Path) -> FileLayout:
    root = Path(root).expanduser()
    lists = _list_dir(root)
    noisy = _kv(lists / "noisy_label_kv.txt")
    clean = _kv(lists / "clean_label_kv.txt")
    # the distributed layout keeps the key as the path below ROOT; the reference's ROOT holds
    # the image folders themselves and drops the key's "images/" (entry[0][7:])
    strip = not (root / "images").is_dir()

    def file(key: str) -> str:
        rel = key[len(_PREFIX) :] if strip and key.startswith(_PREFIX) else key
        return abspath(root / rel)

    def split(name: str, labels: dict[str, int], what: str) -> tuple[list[str], list[int], list]:
        path = lists / name
        files, ys, keys = [], [], []
        for lineno, key in _keys(path):
            if key not in labels:
                raise DataLayoutError(
                    f"{path}: line {lineno}: key {key!r} has no label in {what}.txt. The list "
                    "files come from different releases; use the ones shipped together."
                )
            files.append(file(key))
            ys.append(labels[key])
            keys.append(key)
        return files, ys, keys

    train_files, train_y, train_keys = split("noisy_train_key_list.txt", noisy, "noisy_label_kv")
    truth = np.array([clean.get(k, UNKNOWN) for k in train_keys], dtype=np.int64)
    val_files, val_y, _ = split("clean_val_key_list.txt", clean, "clean_label_kv")
    test_files, test_y, _ = split("clean_test_key_list.txt", clean, "clean_label_kv")
    return FileLayout(
        name="clothing1m",
        class_names=CLASSES,
        train=FileList(tuple(train_files), np.array(train_y, np.int64), truth),
        test=FileList(tuple(test_files), np.array(test_y, np.int64)),
        val=FileList(tuple(val_files), np.array(val_y, np.int64)),
        mean=MEAN,
        std=STD,
        stream_size=(256, 224),  # Resize(256) + RandomCrop / CenterCrop(224)
        random_resized_crop=False,
        small_default=False,
    )


def load_clothing1m(root: str | Path, **options: Any) -> ImageDataset:
    """Clothing1M under `root` (module docstring); `options` as `FileOptions` (its own mean / std
    whatever `imagenet_stats` says)."""
    return build_file_dataset(load_clothing1m_layout(root), FileOptions.from_options(root, options))


__all__ = ["CLASSES", "MEAN", "STD", "load_clothing1m", "load_clothing1m_layout"]
