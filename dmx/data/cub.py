"""dataset=cub200: Caltech-UCSD Birds-200-2011 in its distributed layout (CUB_200_2011.tgz).

    ROOT/CUB_200_2011/images.txt               <image id> <relative path>   (1-based ids)
    ROOT/CUB_200_2011/image_class_labels.txt   <image id> <class id>        (1-based classes)
    ROOT/CUB_200_2011/train_test_split.txt     <image id> <1 = train, 0 = test>
    ROOT/CUB_200_2011/classes.txt              <class id> <name>  ("1 001.Black_footed_Albatross")
    ROOT/CUB_200_2011/images/<name>/<file>.jpg

ROOT may also be the CUB_200_2011 folder itself. 5,994 training and 5,794 test images of 200
classes; the labels are clean (`train_truth` None: noise is generated from them). Class names are
classes.txt's, as written there. Recipe (ours; ImageNet-pretrained ResNet-50 as for Clothing1M):
Resize 256 -> RandomCrop 224 + flip for training, Resize 256 -> CenterCrop 224 for evaluation;
mean / std ImageNet's with pretrained weights, else measured on the training images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dmx.data import ImageDataset
from dmx.data.filesets import (
    DataLayoutError,
    FileLayout,
    FileList,
    FileOptions,
    abspath,
    build_file_dataset,
    missing_dataset,
    read_lines,
)

FOLDER = "CUB_200_2011"
SOURCE = (
    "download CUB_200_2011.tgz from the Caltech Vision page "
    "(https://www.vision.caltech.edu/datasets/cub_200_2011/) and extract it into data.root"
)
_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def find_cub(root: str | Path) -> Path:
    """ROOT/CUB_200_2011, or ROOT itself when it is that folder."""
    root = Path(root).expanduser()
    for candidate in (root / FOLDER, root):
        if (candidate / "images.txt").is_file():
            return candidate
    raise missing_dataset("CUB-200-2011", root / FOLDER / "images.txt", SOURCE)


def _id_table(path: Path) -> dict[int, str]:
    """`<id> <value>` lines -> {id: value}; DataLayoutError naming file:line on a bad line."""
    if not path.is_file():
        raise missing_dataset("CUB-200-2011", path, SOURCE)
    table: dict[int, str] = {}
    for lineno, text in read_lines(path):
        key, _, value = text.replace("\t", " ").partition(" ")
        if not key.isdigit() or not value.strip():
            raise DataLayoutError(
                f"{path}: line {lineno}: expected '<id> <value>', found {text!r}. The file is "
                "damaged; extract CUB_200_2011.tgz again."
            )
        if int(key) in table:
            raise DataLayoutError(f"{path}: line {lineno}: id {key} appears twice; re-extract.")
        table[int(key)] = value.strip()
    return table


def load_cub_layout(root: str | Path) -> FileLayout:
    folder = find_cub(root)
    images, labels, split, classes = (_id_table(folder / f) for f in _FILES)
    class_ids = sorted(classes)
    if class_ids != list(range(1, len(class_ids) + 1)):
        raise DataLayoutError(
            f"{folder / 'classes.txt'}: class ids must be 1..{len(class_ids)}; re-extract."
        )
    names = tuple(classes[i] for i in class_ids)
    train_files, train_y, test_files, test_y = [], [], [], []
    for image_id in sorted(images):
        for table, file in ((labels, "image_class_labels.txt"), (split, "train_test_split.txt")):
            if image_id not in table:
                raise DataLayoutError(
                    f"{folder / file}: no entry for image {image_id} of images.txt; re-extract."
                )
        y, is_train = labels[image_id], split[image_id]
        if not y.isdigit() or not 1 <= int(y) <= len(names) or is_train not in ("0", "1"):
            raise DataLayoutError(
                f"{folder}: image {image_id}: class {y!r} (1..{len(names)}) / split "
                f"{is_train!r} (0 or 1) is invalid; re-extract CUB_200_2011.tgz."
            )
        path = abspath(folder / "images" / images[image_id])
        (train_files if is_train == "1" else test_files).append(path)
        (train_y if is_train == "1" else test_y).append(int(y) - 1)  # 1-based -> 0-based
    return FileLayout(
        name="cub200",
        class_names=names,
        train=FileList(tuple(train_files), np.array(train_y, dtype=np.int64)),
        test=FileList(tuple(test_files), np.array(test_y, dtype=np.int64)),
        stream_size=(256, 224),
        random_resized_crop=False,
        small_default=False,
    )


def load_cub200(root: str | Path, **options: Any) -> ImageDataset:
    """CUB-200-2011 under `root` (module docstring); `options` as `FileOptions`."""
    return build_file_dataset(load_cub_layout(root), FileOptions.from_options(root, options))


__all__ = ["load_cub200", "load_cub_layout"]
