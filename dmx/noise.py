"""Synthetic and human label noise: label arrays in, label arrays out.

The definitions follow the DivideMix reference (dataloader_cifar.py):

* symmetric: exactly `int(rate * N)` samples, chosen uniformly without replacement, get a label
  drawn uniformly from ALL `C` classes — so about `rate / C` of them keep their true label and the
  realised noise rate is about `rate * (1 - 1/C)`. `exclude_true_class=True` draws from the other
  `C - 1` classes instead (realised rate exactly `int(rate * N) / N`).
* asymmetric: exactly `int(rate * N)` samples, chosen uniformly from the whole set (not per
  class), are mapped through a class transition; classes that map to themselves stay clean, so
  the realised rate is below `rate`.

Randomness comes in as a `np.random.Generator`; nothing here reads global RNG state.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

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


def _num_noisy(rate: float, n: int) -> int:
    # The reference uses int(rate * N); the tiny epsilon keeps e.g. 0.29 * 100 = 28.999... at 29
    # and equals int(rate * N) whenever rate * N is not within 1e-9 below an integer.
    return int(math.floor(rate * n + 1e-9))


def _check_rate(rate: float) -> None:
    if not (0.0 <= float(rate) <= 1.0):
        raise ValueError(f"noise rate {rate!r} is out of range: pass a fraction in [0, 1].")


def _check_labels(labels: np.ndarray, num_classes: int, what: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array of class indices, got shape {labels.shape}.")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {labels.dtype}.")
    labels = labels.astype(np.int64, copy=False)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{what} must lie in [0, {num_classes}), found values in "
            f"[{labels.min()}, {labels.max()}]: pass the dataset's num_classes."
        )
    return labels


def _check_transition(transition: np.ndarray) -> np.ndarray:
    transition = np.asarray(transition)
    if transition.ndim != 1 or not np.issubdtype(transition.dtype, np.integer):
        raise ValueError(
            f"transition must be a 1-D integer array (class -> class), got shape "
            f"{transition.shape} dtype {transition.dtype}."
        )
    c = len(transition)
    if transition.size and (transition.min() < 0 or transition.max() >= c):
        raise ValueError(
            f"transition maps into classes outside [0, {c}): its length must equal num_classes "
            "and every entry must be a class index."
        )
    return transition.astype(np.int64, copy=False)


def symmetric_noise(
    labels: np.ndarray,
    *,
    rate: float,
    num_classes: int,
    rng: np.random.Generator,
    exclude_true_class: bool = False,
) -> np.ndarray:
    """Re-draw the labels of exactly `int(rate * N)` random samples uniformly.

    labels (N,) int -> (N,) int64. With `exclude_true_class=False` (the reference) the new label
    is uniform over all `num_classes`, so some re-drawn labels equal the true one; with True it is
    uniform over the other `num_classes - 1`, so exactly `int(rate * N)` labels change.
    """
    _check_rate(rate)
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: label noise needs at least 2 classes.")
    labels = _check_labels(labels, num_classes)
    noisy = labels.copy()
    idx = rng.permutation(len(labels))[: _num_noisy(rate, len(labels))]
    if exclude_true_class:
        # shift by 1..C-1 modulo C: uniform over the C-1 classes that differ from the true one
        noisy[idx] = (labels[idx] + rng.integers(1, num_classes, size=len(idx))) % num_classes
    else:
        noisy[idx] = rng.integers(0, num_classes, size=len(idx))
    return noisy


def asymmetric_noise(
    labels: np.ndarray,
    *,
    rate: float,
    transition: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Map exactly `int(rate * N)` random samples through `transition` (C,) class -> class.

    labels (N,) int -> (N,) int64. Samples are chosen from the whole set regardless of class (as
    the reference does); those whose class maps to itself stay clean.
    """
    _check_rate(rate)
    transition = _check_transition(transition)
    labels = _check_labels(labels, len(transition))
    noisy = labels.copy()
    idx = rng.permutation(len(labels))[: _num_noisy(rate, len(labels))]
    noisy[idx] = transition[labels[idx]]
    return noisy


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


def noise_rate(true: np.ndarray, noisy: np.ndarray) -> float:
    """Fraction of samples whose noisy label differs from the true one; (N,), (N,) -> float."""
    true, noisy = np.asarray(true), np.asarray(noisy)
    if true.shape != noisy.shape or true.ndim != 1:
        raise ValueError(
            f"true {true.shape} and noisy {noisy.shape} labels must be 1-D of the same length."
        )
    return float(np.mean(true != noisy)) if true.size else 0.0


def _numpy_safe_globals() -> list:
    # CIFAR-N files were pickled by numpy 1.x (numpy.core.*); numpy 2 lives in numpy._core.
    # torch's weights_only loader matches globals by name, so register both spellings.
    try:
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    globs: list = [np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        globs += [(multiarray._reconstruct, f"{mod}._reconstruct"),
                  (multiarray.scalar, f"{mod}.scalar")]  # fmt: skip
    # dtype instances pickle as their numpy.dtypes.* class in some numpy versions
    globs += sorted({type(np.dtype(t)) for t in "?bBhHiIlLqQefdgFDG"}, key=str)
    return globs


def load_human_labels(path: str | Path, *, key: str) -> np.ndarray:
    """Load one label vector from a CIFAR-N file (CIFAR-10_human.pt / CIFAR-100_human.pt).

    The files are torch zip archives holding a dict of numpy arrays. They are read with
    `torch.load(weights_only=True)`, which executes no code: only numpy array reconstruction is
    admitted. CIFAR-10N keys: clean_label, aggre_label, worse_label, random_label1..3;
    CIFAR-100N: clean_label, noisy_label (and *_coarse_label). Returns (N,) int64 in the original
    training order.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"CIFAR-N label file {path} does not exist: point noise.human_file at "
            "CIFAR-10_human.pt or CIFAR-100_human.pt (from the CIFAR-N release)."
        )
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            data = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises UnpicklingError / RuntimeError for bad archives
        raise ValueError(
            f"{path}: cannot read it as a CIFAR-N label file ({type(e).__name__}: {e}). "
            "Use the original CIFAR-10_human.pt / CIFAR-100_human.pt; re-download it if damaged."
        ) from e
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a dict of label arrays, found {type(data).__name__}.")
    if key not in data:
        raise ValueError(
            f"{path} has no key {key!r}; available keys: {sorted(data)}. Pass one of them as "
            "noise.human_key."
        )
    labels = np.asarray(data[key])
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}[{key!r}] is not a 1-D integer label vector: {labels.shape}.")
    return labels.astype(np.int64)
