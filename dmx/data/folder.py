"""dataset=folder: images in class folders, torchvision's ImageFolder layout.

    ROOT/<class name>/<image>            data.root: the training images; the folder name is
                                         the image's given (possibly noisy) label
    TEST_ROOT/<class name>/<image>       data.test_root (optional; without it there is no test
                                         split and only the validation splits are reported)
    VAL_ROOT/<class name>/<image>        data.val_root (optional): a CLEAN validation split

As torchvision's ImageFolder: the classes are the training root's folder names in sorted order
(class i = the i-th name), an image is a file with one of IMG_EXTENSIONS (any case), found at any
depth below its class folder, in sorted-walk order. Unlike ImageFolder, hidden files and folders
(names starting with '.', e.g. macOS `._x.jpg` or dmx's own `.dmx_cache`) are skipped, and a folder
holding no image at all is not a class (dmx keeps its noisy-label cache in ROOT/noisy_labels by
default). A class folder of the test or validation root that the training root lacks is an
error naming it; a training class missing from them is fine.

The labels are given, not checked: `train_truth` is UNKNOWN everywhere (generated noise is
measured against the folder labels, `dmx.labels.training_truth`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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
    empty_files,
    is_image_file,
)

IMG_HINT = (".jpg", ".png", ".webp", "...")  # for messages; the full list is IMG_EXTENSIONS


def _class_files(folder: Path) -> list[str]:
    """The image files below `folder`, in torchvision's order (sorted walk, sorted names)."""
    found = []
    walk = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # prune hidden folders
        walk.append((dirpath, filenames))
    for dirpath, filenames in sorted(walk):
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if is_image_file(f))
    return found


def scan_image_folder(
    root: str | Path, *, classes: Sequence[str] | None = None, what: str = "data.root"
) -> tuple[tuple[str, ...], FileList]:
    """(class names, files) of ROOT/<class>/<image>. With `classes` (the training classes) the
    folder names must be among them and take their indices."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"{what}={root}: no such folder. An image folder dataset is {what}/<class name>/"
            "<image> (docs/datasets.md); check the path."
        )
    entries = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    per_class = {name: _class_files(root / name) for name in entries}
    per_class = {name: files for name, files in per_class.items() if files}
    if not per_class:
        raise DataLayoutError(
            f"{what}={root}: no class folder with images ({', '.join(IMG_HINT)}) in it. The layout "
            f"is {what}/<class name>/<image>; check the path."
        )
    if classes is None:
        names = tuple(per_class)
    else:
        names = tuple(classes)
        unknown = [n for n in per_class if n not in names]
        if unknown:
            raise DataLayoutError(
                f"{root / unknown[0]}: class folder {unknown[0]!r} ({what}) is not a class of the "
                f"training folder, which has {len(names)}: {', '.join(names[:8])}"
                f"{', ...' if len(names) > 8 else ''}. Rename it to a training class, or add "
                "training images for it."
            )
    index = {n: i for i, n in enumerate(names)}
    files = [abspath(f) for n, fs in per_class.items() for f in fs]
    labels = np.array([index[n] for n, fs in per_class.items() for _ in fs], dtype=np.int64)
    return names, FileList(tuple(files), labels)


def load_folder(
    root: str | Path, *, test_root: str = "", val_root: str = "", **options: Any
) -> ImageDataset:
    """The image-folder dataset under `root` (module docstring); `options` as `FileOptions`."""
    names, train = scan_image_folder(root)
    test = empty_files()
    if test_root:
        _, test = scan_image_folder(test_root, classes=names, what="data.test_root")
    val = None
    if val_root:
        _, val = scan_image_folder(val_root, classes=names, what="data.val_root")
    unknown = np.full(len(train), UNKNOWN, dtype=np.int64)
    layout = FileLayout(
        name="folder",
        class_names=names,
        train=FileList(train.files, train.labels, unknown),
        test=test,
        val=val,
    )
    return build_file_dataset(layout, FileOptions.from_options(root, options))


__all__ = ["load_folder", "scan_image_folder"]
