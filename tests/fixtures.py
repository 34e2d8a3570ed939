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
