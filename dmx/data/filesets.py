"""Image files -> an ImageDataset: what every file-backed loader (folder, manifest, CUB-200,
Clothing1M, WebVision) shares once it has read its layout into lists of (path, label).

A loader parses its on-disk layout into a `FileLayout` (file lists per split, class names, the
dataset's recipe) and hands it to `build_file_dataset` with the run's `FileOptions`. This module
then decides the path (DESIGN §2):
- memory: every image decoded ONCE (DataLoader workers), resized to a fixed square, kept as one
  uint8 tensor per split and cached on disk (`dmx.data.cache`), so a second run starts in seconds;
- stream: the splits keep one absolute path per image and `dmx.data.stream` decodes per batch.

The rule (`plan_pipeline`), with S = data.image_size and R = data.resize (`dmx.prepare` fills them
in from the model; 0 = nobody said):
- pipeline=stream: files, S x S crops after resizing the shorter side to R
  (0 -> the dataset's recipe: 224 after 256; WebVision 299 after 320; R = S * 256/224 when only S
  is given);
- pipeline=memory: decode to S x S (0 -> 32, the CIFAR-size nets), shorter side resized to R
  (0 -> S) then centre-cropped; an error when the decoded splits exceed data.memory_budget_mb;
- pipeline=auto: memory when S <= 64 and the decoded train + val + test (+ extra tests) bytes,
  N * 3 * S * S, fit data.memory_budget_mb, else stream. With S = 0 an image folder or manifest
  tries memory at 32 px; CUB-200, Clothing1M and WebVision stream at their recipe size.

Normalisation: the dataset's own constants when it has them (Clothing1M, WebVision); ImageNet's
with pretrained weights (`imagenet_stats`); else measured on the training images: exactly on the
memory path, on a seeded sample of up to 1000 training images (at the eval-time preprocessing) on
the streaming path, cached with the file list.

Channels: the streaming path always decodes to RGB. The memory path stores one channel when no
decoded training / evaluation image carries colour (every pixel R = G = B, e.g. a folder of
grayscale PNGs) and the statistics are measured (pretrained nets want 3 channels), else RGB.

Bad files (`skip_bad_images`): off, a file that cannot be decoded stops the load (memory path)
or the stream (streaming path) with `BadImageError` naming it. On, every file is decoded once
(in parallel, the results cached by path + size + mtime), bad files are left out of every split,
listed in `ImageDataset.bad_files` and named in one warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmx.data import ImageDataset, Split, Transforms
from dmx.data.decode import BadImageError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
"""torchvision.datasets.folder.IMG_EXTENSIONS (compared lower-case, as ImageFolder does)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MEMORY_MAX_SIZE = 64  # px: above this, auto streams (a 64 px image is already 12 KB decoded)
MEMORY_DEFAULT_SIZE = 32  # px: the CIFAR-size nets' input, when nobody gave a size
STATS_SAMPLE = 1000  # training images sampled for the streaming path's mean / std
_STATS_SEED = 0  # fixed: the statistics belong to the dataset, not to a run

_PIPELINES = ("auto", "memory", "stream")


class DataLayoutError(ValueError):
    """A dataset's list file or folder does not have the expected content; the one-line message
    names the file, the line, the problem and the fix."""


@dataclass(frozen=True)
class FileList:
    """One split as files: absolute paths, their labels, and (training split) what is known of the
    truth (`dmx.data.UNKNOWN` where unknown; None: the labels are the truth)."""

    files: tuple[str, ...]
    labels: np.ndarray  # (N,) int64
    truth: np.ndarray | None = None  # (N,) int64

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        object.__setattr__(self, "labels", labels)
        if len(labels) != len(self.files):
            raise ValueError(f"{len(self.files)} files but {len(labels)} labels.")
        if self.truth is not None:
            truth = np.asarray(self.truth, dtype=np.int64).reshape(-1)
            object.__setattr__(self, "truth", truth)
            if len(truth) != len(labels):
                raise ValueError(f"{len(truth)} true labels for {len(labels)} files.")

    def __len__(self) -> int:
        return len(self.files)

    def keep(self, mask: np.ndarray) -> FileList:
        """The entries where `mask` (N,) bool is True."""
        idx = np.flatnonzero(mask)
        truth = None if self.truth is None else self.truth[idx]
        return FileList(tuple(self.files[i] for i in idx), self.labels[idx], truth)


def empty_files() -> FileList:
    return FileList((), np.zeros(0, dtype=np.int64))


@dataclass(frozen=True)
class FileLayout:
    """What a loader read off the disk, and the parts of the recipe that belong to the dataset."""

    name: str
    class_names: tuple[str, ...]
    train: FileList
    test: FileList = field(default_factory=empty_files)
    val: FileList | None = None  # a CLEAN validation split
    extra_tests: Mapping[str, FileList] = field(default_factory=dict)
    mean: tuple[float, ...] | None = None  # the dataset's own constants (None: measured)
    std: tuple[float, ...] | None = None
    stream_size: tuple[int, int] = (256, 224)  # (resize, crop) of the recipe (streaming)
    random_resized_crop: bool = False  # streaming train crop: RandomResizedCrop, else RandomCrop
    small_default: bool = True  # image_size 0: try the memory path at 32 px (folders, manifests)

    def splits(self) -> dict[str, FileList]:
        """Every split by name: train, test, val (when present), extra:<name>."""
        out = {"train": self.train, "test": self.test}
        if self.val is not None:
            out["val"] = self.val
        out.update({f"extra:{k}": v for k, v in self.extra_tests.items()})
        return out


@dataclass(frozen=True)
class FileOptions:
    """The run's options for a file-backed loader (`dmx.prepare.load_run_dataset` passes them)."""

    image_size: int = 0
    resize: int = 0
    pipeline: str = "auto"
    memory_budget_mb: int = 4096
    num_workers: int = 4
    skip_bad_images: bool = False
    imagenet_stats: bool = False
    cache_dir: str = ""  # "" -> ROOT/.dmx_cache

    def __post_init__(self) -> None:
        if self.pipeline not in _PIPELINES:
            raise ValueError(f"data.pipeline={self.pipeline!r}: choose one of {_PIPELINES}.")
        if min(self.image_size, self.resize, self.memory_budget_mb, self.num_workers) < 0:
            raise ValueError(f"sizes, budget and workers must be >= 0: {self}.")

    @classmethod
    def from_options(cls, root: str | Path, options: Mapping[str, Any]) -> FileOptions:
        """The fields of `options` this class knows (others belong to other loaders); the cache
        folder defaults to ROOT/.dmx_cache (hidden: an image folder never takes it for a class)."""
        known = {k: options[k] for k in cls.__dataclass_fields__ if options.get(k) is not None}
        if not known.get("cache_dir"):
            known["cache_dir"] = str(Path(root).expanduser() / ".dmx_cache")
        return cls(**known)


@dataclass(frozen=True)
class Plan:
    """The path a dataset takes and the sizes its files are brought to."""

    memory: bool
    resize: int  # shorter side before the crop
    crop: int  # the network input is crop x crop


def decoded_bytes(num_images: int, size: int) -> int:
    """Bytes of `num_images` RGB uint8 images of size x size (the memory path's footprint)."""
    return num_images * 3 * size * size


def plan_pipeline(layout: FileLayout, opts: FileOptions) -> Plan:
    """Memory or stream, and the sizes (the rule in the module docstring)."""
    n = sum(len(s) for s in layout.splits().values())
    budget = opts.memory_budget_mb * 2**20
    stream_resize, stream_crop = layout.stream_size
    if opts.pipeline != "stream":
        mem = opts.image_size or MEMORY_DEFAULT_SIZE
        need = decoded_bytes(n, mem)
        if opts.pipeline == "memory":
            if need > budget:
                raise ValueError(
                    f"{layout.name}: data.pipeline=memory needs {need / 2**20:.0f} MB for "
                    f"{n} images decoded at {mem}x{mem}, over data.memory_budget_mb="
                    f"{opts.memory_budget_mb}. Raise the budget, lower data.image_size, or use "
                    "data.pipeline=stream (or auto)."
                )
            return Plan(True, opts.resize or mem, mem)
        small = opts.image_size <= MEMORY_MAX_SIZE if opts.image_size else layout.small_default
        if small and need <= budget:
            return Plan(True, opts.resize or mem, mem)
    crop = opts.image_size or stream_crop
    resize = opts.resize or int(round(crop * stream_resize / stream_crop))
    return Plan(False, resize, crop)


def _warn_bad(name: str, bad: Mapping[str, str]) -> None:
    first = "; ".join(f"{p} ({r})" for p, r in list(bad.items())[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    warnings.warn(
        f"{name}: left out {len(bad)} image file(s) that cannot be decoded "
        f"(data.skip_bad_images=true): {first}{more}. ImageDataset.bad_files lists them all; a "
        "run writes them to RUN_DIR/bad_images.txt.",
        stacklevel=3,
    )


def _safe_std(std: list[float]) -> tuple[float, ...]:
    # A constant channel (std 0) would divide by zero when normalising: floor it at one grey level.
    return tuple(max(float(s), 1.0 / 255.0) for s in std)


def _empty_images(channels: int, size: int) -> torch.Tensor:
    return torch.zeros((0, channels, size, size), dtype=torch.uint8)


def _as_split(files: FileList, images: torch.Tensor | None) -> Split:
    labels = torch.from_numpy(files.labels.copy())
    # In memory the paths stay beside the pixels: reports and exports name the files.
    return Split(labels, images=images, files=files.files)


def _drop_bad(layout: FileLayout, bad: Mapping[str, str]) -> FileLayout:
    """The layout without the files in `bad`."""
    if not bad:
        return layout

    def keep(s: FileList) -> FileList:
        return s.keep(np.array([f not in bad for f in s.files], dtype=bool))

    return replace(
        layout,
        train=keep(layout.train),
        test=keep(layout.test),
        val=None if layout.val is None else keep(layout.val),
        extra_tests={k: keep(v) for k, v in layout.extra_tests.items()},
    )


def build_file_dataset(layout: FileLayout, opts: FileOptions) -> ImageDataset:
    """The ImageDataset of `layout` on the path `plan_pipeline` chooses (module docstring)."""
    from dmx.data import cache  # DataLoader workers and torch.save: only when files are loaded

    if not len(layout.train):
        raise DataLayoutError(f"{layout.name}: the training split has no image files.")
    plan = plan_pipeline(layout, opts)
    fixed = layout.mean is not None
    if fixed:
        mean, std = layout.mean, layout.std
    elif opts.imagenet_stats:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        mean = std = None  # measured below
    bad: dict[str, str] = {}
    if plan.memory:
        decoded = cache.load_or_decode(
            {k: s.files for k, s in layout.splits().items()},
            name=layout.name,
            resize=plan.resize,
            crop=plan.crop,
            cache_dir=opts.cache_dir,
            num_workers=opts.num_workers,
            stop_at_bad=not opts.skip_bad_images,
        )
        if decoded.bad and not opts.skip_bad_images:  # a cache made with skipping on
            path, reason = next(iter(decoded.bad.items()))
            raise BadImageError(path, reason)
        bad = decoded.bad
        images = decoded.images
        kept = _drop_bad(layout, bad)
        if mean is None:
            mean, std = decoded.mean, _safe_std(list(decoded.std))
            if decoded.gray:  # R = G = B everywhere: one channel says it all, losslessly
                images = {k: v[:, :1].contiguous() for k, v in images.items()}
                mean, std = mean[:1], std[:1]
        channels = int(images["train"].shape[1])
        splits = {k: _as_split(s, images[k]) for k, s in kept.splits().items()}
        transforms = Transforms(
            crop_padding=plan.crop // 8,  # 4 at 32 px, as the reference's RandomCrop(32, 4)
            hflip=True,
            resize=plan.resize,  # how the files became the stored images (predict, export)
            crop=plan.crop,
        )
    else:
        if opts.skip_bad_images:
            every = [f for s in layout.splits().values() for f in s.files]
            bad = cache.check_files(every, cache_dir=opts.cache_dir, num_workers=opts.num_workers)
        kept = _drop_bad(layout, bad)
        channels = 3
        if mean is None:
            mean, std = cache.stream_stats(
                kept.train.files,
                name=layout.name,
                resize=plan.resize,
                crop=plan.crop,
                cache_dir=opts.cache_dir,
                num_workers=opts.num_workers,
                sample=STATS_SAMPLE,
                seed=_STATS_SEED,
            )
            std = _safe_std(list(std))
        splits = {k: _as_split(s, None) for k, s in kept.splits().items()}
        transforms = Transforms(
            crop_padding=0,
            hflip=True,
            resize=plan.resize,
            crop=plan.crop,
            random_resized_crop=layout.random_resized_crop,
        )
    if bad:
        _warn_bad(layout.name, bad)
    if not len(kept.train):
        raise DataLayoutError(f"{layout.name}: every training image file is bad; nothing is left.")
    truth = kept.train.truth
    return ImageDataset(
        name=layout.name,
        train=splits["train"],
        test=splits["test"],
        val=splits.get("val"),
        extra_tests={k.split(":", 1)[1]: v for k, v in splits.items() if k.startswith("extra:")},
        num_classes=len(layout.class_names),
        class_names=tuple(layout.class_names),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        transforms=transforms,
        train_truth=None if truth is None else torch.from_numpy(truth.copy()),
        channels=channels,
        bad_files=tuple(sorted(bad)),
    )


# ---------------------------------------------------------------------- helpers for loaders


def is_image_file(name: str) -> bool:
    """A visible file with one of torchvision's image extensions (case-insensitive)."""
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def abspath(path: str | Path) -> str:
    """The absolute path without resolving symlinks (the name the user knows the file by)."""
    return os.path.abspath(os.path.expanduser(str(path)))


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a text list file (UTF-8)."""
    with open(path, encoding="utf-8") as fh:
        return [(i, s) for i, line in enumerate(fh, 1) if (s := line.strip())]


def parse_key_label(path: Path, lineno: int, text: str, *, fix: str) -> tuple[str, int]:
    """`relative/path.jpg LABEL` -> (path, label); DataLayoutError naming file:line otherwise.
    The label is the last field (after spaces or a tab), so a path with spaces still parses."""
    parts = text.rsplit(None, 1)
    key = parts[0].strip() if len(parts) == 2 else ""
    try:
        value = int(parts[-1])
    except ValueError:
        value = None
    if not key or value is None:
        raise DataLayoutError(
            f"{path}: line {lineno}: expected 'PATH LABEL' (an integer label), found {text!r}. "
            f"{fix}"
        )
    return key, value


def missing_dataset(what: str, expected: Path | str, source: str) -> FileNotFoundError:
    """The one-line error of a dataset that is not where it should be."""
    return FileNotFoundError(
        f"{what} not found: expected {expected}. dmx does not download it: {source} "
        "(layouts in docs/datasets.md); point --data-dir (data.root) at the folder."
    )


__all__ = [
    "DataLayoutError",
    "FileLayout",
    "FileList",
    "FileOptions",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMG_EXTENSIONS",
    "Plan",
    "abspath",
    "build_file_dataset",
    "decoded_bytes",
    "empty_files",
    "is_image_file",
    "missing_dataset",
    "parse_key_label",
    "plan_pipeline",
    "read_lines",
]
