"""Synthetic label noise and its measure: label arrays in, label arrays out.

The definitions follow the DivideMix reference (dataloader_cifar.py):

* symmetric: exactly `int(rate * N)` samples, chosen uniformly without replacement, get a label
  drawn uniformly from ALL `C` classes — so about `rate / C` of them keep their true label and the
  realised noise rate is about `rate * (1 - 1/C)`. `exclude_true_class=True` draws from the other
  `C - 1` classes instead (realised rate exactly `int(rate * N) / N`).
* asymmetric: exactly `int(rate * N)` samples, chosen uniformly from the whole set (not per
  class), are mapped through a class transition; classes that map to themselves stay clean, so
  the realised rate is below `rate`.

Randomness comes in as a `np.random.Generator`; nothing here reads global RNG state, a file or
torch. Dataset facts live with the dataset: the class transitions in `dmx.data.cifar` (and
`ImageDataset.asym_transition`), the human (CIFAR-N) label files in `dmx.data.cifar_n`.
"""

from __future__ import annotations

import math

import numpy as np


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


def noise_rate(true: np.ndarray, noisy: np.ndarray) -> float:
    """Fraction of samples whose noisy label differs from the true one; (N,), (N,) -> float.

    A negative true label means "unknown" (real-world data where nobody checked the label): such
    samples are left out; NaN when no true label is known at all."""
    true, noisy = np.asarray(true), np.asarray(noisy)
    if true.shape != noisy.shape or true.ndim != 1:
        raise ValueError(
            f"true {true.shape} and noisy {noisy.shape} labels must be 1-D of the same length."
        )
    if not true.size:
        return 0.0
    known = true >= 0
    return float(np.mean(true[known] != noisy[known])) if known.any() else float("nan")
