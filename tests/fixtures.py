"""Shared test helper: tiny CIFAR folders in the official on-disk format.

`write_cifar_fixture(tmp_path)` writes ROOT/cifar-10-batches-py (or ROOT/cifar-100-python) with
python pickles laid out exactly like the official files (protocol 2, bytes keys, `data` as
(n, 3072) uint8 rows of R, G, B planes, labels as lists of int). Images are class-dependent — a
class colour plus a class stripe pattern plus pixel noise — so a small net learns them in a few
epochs, even under random crops and flips.
"""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import numpy as np

from dmx.data.cifar import (
    CIFAR10_CLASSES,
    CIFAR100_CLASSES,
    CIFAR100_COARSE_CLASSES,
    CIFAR100_FINE_TO_COARSE,
)


def class_images(labels: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
    """(n,) class indices -> (n, 3, 32, 32) uint8 images whose look depends on the class."""
    n = len(labels)
    # class colour: fixed per class (not per call), well inside 0..255 so noise does not clip much
    palette = np.random.default_rng(12345).integers(40, 216, size=(int(labels.max()) + 1, 3))
    coords = np.arange(32, dtype=np.float64)
    freq = 1 + (labels // 2) % 4  # (n,) 1..4 stripes over the image
    phase = 2 * np.pi * freq[:, None] * coords[None, :] / 32  # (n, 32)
    wave = 35 * np.sin(phase)  # (n, 32)
    vertical = (labels % 2 == 1)[:, None, None]  # odd classes: vertical stripes
    stripes = np.where(vertical, wave[:, None, :], wave[:, :, None])  # (n, 32, 32)
    pixel_noise = rng.normal(0, 12, (n, 3, 32, 32))
    images = palette[labels][:, :, None, None] + stripes[:, None] + pixel_noise
    return np.clip(np.round(images), 0, 255).astype(np.uint8)


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def _dump(obj: dict, path: Path) -> None:
    # protocol 2 with bytes keys: what the official (Python 2) files contain
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar_fixture(
    root: Path,
    *,
    dataset: str = "cifar10",
    n_train: int = 500,
    n_test: int = 100,
    seed: int = 0,
) -> Path:
    """Write a small CIFAR-10/100 folder under `root`; returns `root` (pass it as data.root).

    CIFAR-10: `n_train` split over data_batch_1..5 (n_train must be a multiple of 5), plus
    test_batch and batches.meta. CIFAR-100: train / test with fine_labels and coarse_labels (the
    standard fine -> coarse table), plus meta. Labels are class-balanced, in shuffled order.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    if dataset == "cifar10":
        if n_train % 5:
            raise ValueError(f"n_train={n_train} must be a multiple of 5 (five train batches).")
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        ytr, yte = _balanced_labels(n_train, 10, rng), _balanced_labels(n_test, 10, rng)
        xtr, xte = class_images(ytr, rng=rng), class_images(yte, rng=rng)
        per = n_train // 5
        for b in range(5):
            s = slice(b * per, (b + 1) * per)
            _dump(
                {
                    b"batch_label": f"training batch {b + 1} of 5".encode(),
                    b"labels": [int(v) for v in ytr[s]],
                    b"data": xtr[s].reshape(-1, 3072),
                    b"filenames": [f"train_{i:05d}.png".encode() for i in range(s.start, s.stop)],
                },
                folder / f"data_batch_{b + 1}",
            )
        _dump(
            {
                b"batch_label": b"testing batch 1 of 1",
                b"labels": [int(v) for v in yte],
                b"data": xte.reshape(-1, 3072),
                b"filenames": [f"test_{i:05d}.png".encode() for i in range(n_test)],
            },
            folder / "test_batch",
        )
        _dump(
            {
                b"label_names": [c.encode() for c in CIFAR10_CLASSES],
                b"num_cases_per_batch": per,
                b"num_vis": 3072,
            },
            folder / "batches.meta",
        )
    elif dataset == "cifar100":
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", n_train), ("test", n_test)):
            y = _balanced_labels(n, 100, rng)
            _dump(
                {
                    b"filenames": [f"{split}_{i:05d}.png".encode() for i in range(n)],
                    b"batch_label": f"{split}ing batch 1 of 1".encode(),
                    b"fine_labels": [int(v) for v in y],
                    b"coarse_labels": [int(CIFAR100_FINE_TO_COARSE[v]) for v in y],
                    b"data": class_images(y, rng=rng).reshape(-1, 3072),
                },
                folder / split,
            )
        _dump(
            {
                b"fine_label_names": [c.encode() for c in CIFAR100_CLASSES],
                b"coarse_label_names": [c.encode() for c in CIFAR100_COARSE_CLASSES],
            },
            folder / "meta",
        )
    else:
        raise ValueError(f"dataset={dataset!r}: choose 'cifar10' or 'cifar100'.")
    return root


def poisoned_model_source(*, nan_after: int) -> str:
    """Source of a module with `make(num_classes, in_channels=3)`: a linear model whose outputs
    turn NaN once it has run more than `nan_after` training forward passes. The count is a
    buffer, so it is checkpointed and a resumed run hits the NaN again (as a real divergence
    would). With NAN_BUILDS set, every net built appends a line to that file."""
    return textwrap.dedent(
        f"""
        import os
        import torch
        from torch import nn

        class Poisoned(nn.Module):
            def __init__(self, num_classes, in_channels):
                super().__init__()
                if os.environ.get("NAN_BUILDS"):  # counts the nets built (training attempts)
                    with open(os.environ["NAN_BUILDS"], "a") as fh:
                        fh.write("built\\n")
                self.fc = nn.Linear(in_channels, num_classes)
                self.register_buffer("calls", torch.zeros(()))

            def forward(self, x):
                if self.training:
                    self.calls += 1
                out = self.fc(x.mean((2, 3)))
                return out * float("nan") if self.calls > {nan_after} else out

        def make(num_classes, in_channels=3):
            return Poisoned(num_classes, in_channels)
        """
    )


# ----------------------------------------------------------------------------- image files
# Tiny image-file datasets in the exact on-disk layouts of dmx.data.folder / manifest / cub /
# clothing1m / webvision: real JPEG / PNG files of several sizes and modes (RGB, grayscale,
# palette, RGBA), written with PIL. The picture depends on the class (its colour and stripe
# direction), so a small net could learn them.


def file_image(label: int, size: tuple[int, int], *, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 picture of class `label` at `size` = (H, W)."""
    h, w = size
    colour = np.random.default_rng(1000 + label).integers(40, 216, size=3)
    coords = np.arange(max(h, w), dtype=np.float64)
    wave = 35 * np.sin(2 * np.pi * (1 + label % 3) * coords / max(h, w))
    stripes = wave[None, :w] if label % 2 else wave[:h, None]  # (1, W) or (H, 1)
    image = colour[None, None, :] + stripes[..., None] + rng.normal(0, 10, (h, w, 3))
    return np.clip(np.round(image), 0, 255).astype(np.uint8)


def write_image(
    path: Path, label: int, *, rng: np.random.Generator, size=(24, 32), mode: str = "RGB"
) -> Path:
    """An image file of class `label`; the format follows the suffix (.jpg / .png / .webp),
    `mode` is PIL's (RGB, L = grayscale, P = palette, RGBA (PNG only), CMYK (JPEG only))."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(file_image(label, size, rng=rng))
    if mode == "L":
        image = image.convert("L")
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif mode == "RGBA":
        image = image.convert("RGBA")
        image.putalpha(200)
    elif mode == "CMYK":  # some web JPEGs are (ImageNet has a few)
        image = image.convert("CMYK")
    image.save(path)
    return path


def write_corrupt(path: Path) -> Path:
    """A file named like an image that no decoder can read (a JPEG header, then garbage)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xdb\x00\x43" + bytes(range(7, 60)))  # cut-off table
    return path


# size and PIL mode of the i-th file of a fixture: mixed sizes, one grayscale, one palette, one RGBA
_VARIANTS = [
    ((24, 32), "RGB", ".jpg"),
    ((40, 30), "RGB", ".png"),
    ((32, 32), "L", ".png"),
    ((20, 44), "P", ".png"),
    ((36, 36), "RGBA", ".png"),
    ((28, 28), "RGB", ".JPEG"),
]


def _variant(i: int) -> tuple[tuple[int, int], str, str]:
    return _VARIANTS[i % len(_VARIANTS)]


# the same for the JPEG-only releases (CUB, Clothing1M, WebVision): a grayscale and a CMYK JPEG
_JPEG_VARIANTS = [((24, 32), "RGB"), ((40, 30), "L"), ((20, 44), "CMYK"), ((36, 36), "RGB")]


def _jpeg_variant(i: int) -> tuple[tuple[int, int], str]:
    return _JPEG_VARIANTS[i % len(_JPEG_VARIANTS)]


def write_image_folder(
    root: Path,
    classes=("cat", "dog", "owl"),
    *,
    per_class: int = 6,
    seed: int = 0,
    gray: bool = False,
    corrupt: str | None = None,
) -> Path:
    """ROOT/<class>/<image> with `per_class` files per class of mixed sizes, modes and formats
    (one in a nested subfolder), plus what a loader must ignore: a hidden file, a hidden folder,
    a non-image file and an image-less folder `noisy_labels/` (dmx's label cache). `gray`: every
    image grayscale. `corrupt`: the name of a class that also gets an undecodable `broken.jpg`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        for i in range(per_class):
            size, mode, suffix = _variant(i + c)
            sub = "nested/" if i == per_class - 1 else ""
            write_image(
                root / name / f"{sub}img{i:02d}{suffix}", c, rng=rng, size=size,
                mode="L" if gray else mode,
            )  # fmt: skip
        (root / name / "notes.txt").write_text("not an image\n")
        write_image(root / name / ".hidden.jpg", c, rng=rng)
    write_image(root / ".thumbnails" / "x.jpg", 0, rng=rng)
    (root / "noisy_labels").mkdir(exist_ok=True)
    (root / "noisy_labels" / "labels.parquet").write_bytes(b"PAR1")
    if corrupt is not None:
        write_corrupt(root / corrupt / "broken.jpg")
    return root


def write_digits_folders(root: Path) -> tuple[Path, Path]:
    """scikit-learn's 8x8 digits as grayscale PNG files, ROOT/train/<digit>/<index>.png and
    ROOT/test/<digit>/<index>.png, with dmx.data.digits' own train / test split (so the folder
    dataset at image_size 8 holds exactly the digits dataset's pixels). Returns (train, test)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from dmx.data.digits import NUM_TEST, SPLIT_SEED, _stratified_test_mask

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # as dmx.data.digits
    labels = bunch.target.astype(np.int64)
    test = _stratified_test_mask(labels, NUM_TEST, SPLIT_SEED)
    root = Path(root)
    for i, (image, label) in enumerate(zip(images, labels)):
        folder = root / ("test" if test[i] else "train") / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{i:04d}.png")  # (8, 8) uint8: mode L
    return root / "train", root / "test"


def write_manifest_fixture(
    root: Path,
    *,
    fmt: str = "csv",
    names: bool = False,
    seed: int = 0,
    corrupt: bool = False,
) -> Path:
    """ROOT/manifest.csv (or .parquet) over images in ROOT/img/: 12 train rows (the first four
    with a true_label, of which one differs from the label; the rest empty), 3 val and 3 test
    rows, three classes, labels as integers (with ROOT/classes.txt) or as the class names.
    `corrupt`: one more train row whose file cannot be decoded. Returns the manifest's path."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    class_names = ["zebra", "ant", "moose"]
    (root / "classes.txt").write_text("\n".join(class_names) + "\n")
    rows = []
    for i in range(18):
        split = "train" if i < 12 else ("val" if i < 15 else "test")
        label = i % 3
        size, mode, suffix = _variant(i)
        rel = f"img/{split}/{i:02d}{suffix}"
        write_image(root / rel, label, rng=rng, size=size, mode=mode)
        truth = "" if i >= 4 else str((label + (i == 1)) % 3)  # row 1: given label is wrong
        rows.append({"path": rel, "label": label, "true_label": truth, "split": split})
    if corrupt:
        write_corrupt(root / "img/train/broken.jpg")
        rows.append({"path": "img/train/broken.jpg", "label": 0, "true_label": "", "split": ""})
    if names:
        for r in rows:
            r["label"] = class_names[r["label"]]
            r["true_label"] = class_names[int(r["true_label"])] if r["true_label"] else ""
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {k: [r[k] for r in rows] for k in rows[0]}
        if not names:  # integer columns, the unknown truths as nulls (what pandas would write)
            cols["true_label"] = pa.array(
                [int(t) if t != "" else None for t in cols["true_label"]], pa.int64()
            )
        path = root / "manifest.parquet"
        pq.write_table(pa.table(cols), path)
        return path
    path = root / "manifest.csv"
    lines = ["path,label,true_label,split"]
    lines += [f"{r['path']},{r['label']},{r['true_label']},{r['split']}" for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_cub_fixture(root: Path, *, per_class: int = 3, classes: int = 4, seed: int = 0) -> Path:
    """ROOT/CUB_200_2011 as distributed: the four list files (1-based ids; classes.txt with all
    200 classes) and images/<class>/<file>.jpg for the first `classes` classes, `per_class`
    images each, every other image a training image. Returns ROOT."""
    root = Path(root)
    folder = root / "CUB_200_2011"
    rng = np.random.default_rng(seed)
    names = [f"{c + 1:03d}.Bird_{c + 1}" for c in range(200)]
    images, labels, split = [], [], []
    for c in range(classes):
        for i in range(per_class):
            image_id = len(images) + 1
            rel = f"{names[c]}/{names[c].split('.', 1)[1]}_{image_id:04d}_{i}.jpg"
            size, mode = _jpeg_variant(image_id)
            write_image(folder / "images" / rel, c, rng=rng, size=size, mode=mode)
            images.append(f"{image_id} {rel}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {int(image_id % 2 == 1)}")
    (folder / "images.txt").write_text("\n".join(images) + "\n")
    (folder / "image_class_labels.txt").write_text("\n".join(labels) + "\n")
    (folder / "train_test_split.txt").write_text("\n".join(split) + "\n")
    (folder / "classes.txt").write_text("\n".join(f"{c + 1} {n}" for c, n in enumerate(names)))
    return root


def write_clothing1m_fixture(root: Path, *, reference_layout: bool = False, seed: int = 0) -> Path:
    """Clothing1M as distributed: ROOT/images/<d>/<dd>/<name>.jpg, noisy_label_kv.txt,
    clean_label_kv.txt and the three key lists (keys `images/0/00/x.jpg`). 20 noisy training
    images (labels = i % 14; the first 6 also have a clean label, which differs from the noisy
    one for 0 and 3), 4 clean val and 4 clean test images. `reference_layout`: the DivideMix
    reference's instead: the lists and the image folders 0..9 directly in ROOT (keys unchanged).
    Returns ROOT."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    images = root if reference_layout else root / "images"
    noisy, clean, train, val, test = [], [], [], [], []
    for i in range(28):
        key = f"images/{i % 10}/{i:02d}/{i:08d}.jpg"
        label = i % 14
        size, mode = _jpeg_variant(i)
        write_image(images / key[len("images/") :], label, rng=rng, size=size, mode=mode)
        if i < 20:
            noisy.append(f"{key} {label}")
            train.append(key)
            if i < 6:
                clean.append(f"{key} {(label + 1) % 14 if i in (0, 3) else label}")
        else:
            clean.append(f"{key} {label}")
            (val if i < 24 else test).append(key)
    for name, lines in (
        ("noisy_label_kv.txt", noisy),
        ("clean_label_kv.txt", clean),
        ("noisy_train_key_list.txt", train),
        ("clean_val_key_list.txt", val),
        ("clean_test_key_list.txt", test),
    ):
        (root / name).write_text("\n".join(lines) + "\n")
    return root


WEBVISION_SYNSETS = [
    "n01440764 tench, Tinca tinca",
    "n01443537 goldfish, Carassius auratus",
    "n01484850 great white shark, white shark, man-eater, Carcharodon carcharias",
    "n01491361 tiger shark, Galeocerdo cuvieri",
]


def write_webvision_fixture(
    root: Path, *, imagenet: str = "folders", synsets: bool = True, seed: int = 0
) -> Path:
    """mini-WebVision as the reference reads it: ROOT/info/train_filelist_google.txt (16 Google
    images of classes 0..3, plus 2 lines of classes >= 50 that the loader drops),
    info/val_filelist.txt with ROOT/val_images_256/ (4 images + 1 dropped line), info/synsets.txt
    (the real first lines, padded to 1000 with made-up ids) and the ILSVRC2012 val images:
    `imagenet` = "folders" (ROOT/imagenet/val/<class index>/, class 3's folder named by its
    synset id), "list" (info/imagenet_val_filelist.txt below ROOT/imagenet/val/) or "none".
    Returns ROOT."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    info = root / "info"
    info.mkdir(parents=True, exist_ok=True)
    train = []
    for i in range(16):
        rel = f"google/q{i % 4 + 1:04d}/{i:08d}.jpg"
        size, mode = _jpeg_variant(i)
        write_image(root / rel, i % 4, rng=rng, size=size, mode=mode)
        train.append(f"{rel} {i % 4}")
    train += ["google/q0999/00000999.jpg 51", "google/q0998/00000998.jpg 700"]  # class >= 50
    (info / "train_filelist_google.txt").write_text("\n".join(train) + "\n")
    val = []
    for i in range(4):
        write_image(root / "val_images_256" / f"val{i:06d}.jpg", i, rng=rng, size=(30, 26))
        val.append(f"val{i:06d}.jpg {i}")
    val.append("val000999.jpg 120")
    (info / "val_filelist.txt").write_text("\n".join(val) + "\n")
    if synsets:
        lines = WEBVISION_SYNSETS + [f"n9{i:07d} made-up class {i}" for i in range(4, 1000)]
        (info / "synsets.txt").write_text("\n".join(lines) + "\n")
    if imagenet != "none":
        entries = []
        for c in range(4):
            folder = WEBVISION_SYNSETS[c].split()[0] if c == 3 and imagenet == "folders" else str(c)
            for i in range(2):
                rel = f"{folder}/ILSVRC2012_val_{c * 10 + i:08d}.JPEG"
                write_image(root / "imagenet" / "val" / rel, c, rng=rng, size=(34, 30))
                entries.append(f"{rel} {c}")
        if imagenet == "list":
            entries.append("999/ILSVRC2012_val_00099999.JPEG 640")  # class >= 50: dropped
            (info / "imagenet_val_filelist.txt").write_text("\n".join(entries) + "\n")
    return root
