"""dataset=webvision: mini-WebVision (WebVision 1.0, Google images of the first 50 classes), as the
DivideMix reference's dataloader_webvision.py reads it, plus ILSVRC2012's validation images of
the same classes.

    ROOT/info/train_filelist_google.txt      google/q0001/x.jpg LABEL    (paths below ROOT)
    ROOT/info/val_filelist.txt               val000001.jpg LABEL      (below ROOT/val_images_256/)
    ROOT/val_images_256/...                  (the resized release; ROOT/val_images/ also works)
    ROOT/info/synsets.txt                    n01440764 tench, Tinca tinca   (class i = line i + 1)
    ILSVRC2012 validation images of classes 0..49, either
    ROOT/info/imagenet_val_filelist.txt      x.JPEG LABEL                (below ROOT/imagenet/val/)
    or the reference's folders
    ROOT/imagenet/val/<class index>/<image>  (0..49; a folder named by the class's synset id,
                                              e.g. n01440764, is accepted too)

Only entries with a label below 50 are kept. Splits: train = the Google training list (web
labels: noisy, the truth unknown, `train_truth` UNKNOWN everywhere); test = the WebVision
validation set; `extra_tests["imagenet"]` = the ILSVRC2012 validation images (absent, with a
warning, when neither form is there). Class names are the first name of each synset in
info/synsets.txt (WebVision 1.0 ships it: 1000 lines in ILSVRC2012 order); without the file,
"0".."49". (info/queries_synsets_map.txt maps query ids to classes and names nothing.)
Recipe (reference): ImageNet mean / std; Resize 320 -> RandomResizedCrop 299 + flip for training,
Resize 320 -> CenterCrop 299 for evaluation.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from dmx.data import UNKNOWN, ImageDataset
from dmx.data.filesets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FileLayout,
    FileList,
    FileOptions,
    abspath,
    build_file_dataset,
    is_image_file,
    missing_dataset,
    parse_key_label,
    read_lines,
)

NUM_CLASSES = 50  # mini-WebVision: the first 50 classes (the reference's num_class)
SOURCE = (
    "download WebVision 1.0 (the resized Google images, the validation images and info/) from "
    "https://data.vision.ee.ethz.ch/cvl/webvision/dataset2017.html, and the ILSVRC2012 "
    "validation images from https://image-net.org"
)
IMAGENET_LIST = "info/imagenet_val_filelist.txt"


def _filelist(path: Path, base: Path, num_classes: int) -> FileList:
    """`relpath label` lines with label < num_classes -> files below `base`."""
    if not path.is_file():
        raise missing_dataset("WebVision", path, SOURCE)
    fix = "Use the list files of the WebVision 1.0 release (`relative/path LABEL` per line)."
    files, labels = [], []
    for lineno, text in read_lines(path):
        rel, label = parse_key_label(path, lineno, text, fix=fix)
        if 0 <= label < num_classes:
            files.append(abspath(base / rel))
            labels.append(label)
    return FileList(tuple(files), np.array(labels, dtype=np.int64))


def class_names(root: Path, num_classes: int) -> tuple[str, ...]:
    """The first name of each of the first `num_classes` synsets of info/synsets.txt (a name
    that repeats gets its synset id appended), else "0", "1", ..."""
    path = root / "info" / "synsets.txt"
    if not path.is_file():
        return tuple(str(i) for i in range(num_classes))
    lines = [text for _, text in read_lines(path)][:num_classes]
    if len(lines) < num_classes:
        return tuple(str(i) for i in range(num_classes))
    wnids = [line.split()[0] for line in lines]
    names = [line.partition(" ")[2].split(",")[0].strip() or w for line, w in zip(lines, wnids)]
    return tuple(n if names.count(n) == 1 else f"{n} ({w})" for n, w in zip(names, wnids))


def _synset_ids(root: Path) -> list[str]:
    path = root / "info" / "synsets.txt"
    return [text.split()[0] for _, text in read_lines(path)] if path.is_file() else []


def _imagenet(root: Path, num_classes: int) -> FileList | None:
    """The ILSVRC2012 validation images of the first classes: the list file, else the folders."""
    base = root / "imagenet" / "val"
    if (root / IMAGENET_LIST).is_file():
        return _filelist(root / IMAGENET_LIST, base, num_classes)
    if not base.is_dir():
        return None
    wnids = _synset_ids(root)
    files, labels = [], []
    for c in range(num_classes):
        folders = [base / str(c)] + ([base / wnids[c]] if c < len(wnids) else [])
        folder = next((f for f in folders if f.is_dir()), None)
        if folder is None:
            continue
        names = sorted(n for n in os.listdir(folder) if is_image_file(n))
        files.extend(abspath(folder / n) for n in names)
        labels.extend([c] * len(names))
    if not files:
        return None
    return FileList(tuple(files), np.array(labels, dtype=np.int64))


def load_webvision_layout(root: str | Path, *, num_classes: int = NUM_CLASSES) -> FileLayout:
    root = Path(root).expanduser()
    info = root / "info"
    if not (info / "train_filelist_google.txt").is_file():
        raise missing_dataset("WebVision", info / "train_filelist_google.txt", SOURCE)
    train = _filelist(info / "train_filelist_google.txt", root, num_classes)
    val_base = root / "val_images_256"
    if not val_base.is_dir() and (root / "val_images").is_dir():
        val_base = root / "val_images"  # the full-size release
    test = _filelist(info / "val_filelist.txt", val_base, num_classes)
    imagenet = _imagenet(root, num_classes)
    if imagenet is None:
        warnings.warn(
            f"WebVision: no ILSVRC2012 validation images (looked for {root / IMAGENET_LIST} and "
            f"{root / 'imagenet' / 'val'}/<class index>/); the ImageNet test is skipped.",
            stacklevel=3,
        )
    return FileLayout(
        name="webvision",
        class_names=class_names(root, num_classes),
        train=FileList(train.files, train.labels, np.full(len(train), UNKNOWN, dtype=np.int64)),
        test=test,
        extra_tests={"imagenet": imagenet} if imagenet is not None else {},
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        stream_size=(320, 299),  # Resize(320) + RandomResizedCrop / CenterCrop(299)
        random_resized_crop=True,
        small_default=False,
    )


def load_webvision(root: str | Path, **options: Any) -> ImageDataset:
    """mini-WebVision under `root` (module docstring); `options` as `FileOptions`."""
    return build_file_dataset(load_webvision_layout(root), FileOptions.from_options(root, options))


__all__ = ["NUM_CLASSES", "class_names", "load_webvision", "load_webvision_layout"]
