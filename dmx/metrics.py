"""Evaluation metrics: accuracy (top-1 / top-k, best and last-10 mean) and clean detection.

Arrays in (numpy or torch), Python floats out. Undefined values (empty inputs, a single class
for the AUC) are NaN rather than errors, so a per-epoch metrics row always has every key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score

from dmx.divide import ArrayLike, as_numpy  # one tensor/array conversion for the math modules


def accuracy(logits_or_pred: ArrayLike, labels: ArrayLike) -> float:
    """Top-1 accuracy in percent.

    Args:
        logits_or_pred: (N, C) logits / probabilities (argmax over C) or (N,) predicted classes.
        labels: (N,) true class indices.

    Returns:
        100 * fraction correct; NaN when N == 0.
    """
    scores = as_numpy(logits_or_pred)
    y = as_numpy(labels).reshape(-1)  # (N,)
    if scores.ndim == 2:
        pred = scores.argmax(axis=1)  # (N,)
    elif scores.ndim == 1:
        pred = scores
    else:
        raise ValueError(f"expected (N, C) logits or (N,) predictions, got shape {scores.shape}.")
    if pred.shape[0] != y.shape[0]:
        raise ValueError(f"{pred.shape[0]} predictions but {y.shape[0]} labels.")
    if y.size == 0:
        return math.nan
    return float(100.0 * np.mean(pred == y))


def topk_accuracy(logits: ArrayLike, labels: ArrayLike, k: int) -> float:
    """Top-k accuracy in percent: the true class is among the k highest scores.

    Args:
        logits: (N, C) scores; labels: (N,) true class indices; k: 1 <= k <= C.

    Returns:
        100 * fraction of rows whose label is in the top k; NaN when N == 0. Ties at the k-th
        score are broken by class index order of a stable sort (lower index first).
    """
    scores = as_numpy(logits)
    y = as_numpy(labels).reshape(-1)  # (N,)
    if scores.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {scores.shape}.")
    if not 1 <= k <= scores.shape[1]:
        raise ValueError(f"k must be in [1, C={scores.shape[1]}], got k={k!r}.")
    if scores.shape[0] != y.shape[0]:
        raise ValueError(f"{scores.shape[0]} rows of logits but {y.shape[0]} labels.")
    if y.size == 0:
        return math.nan
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # (N, k)
    return float(100.0 * np.mean((top == y[:, None]).any(axis=1)))


def clean_detection(
    clean_prob: ArrayLike, labeled_mask: ArrayLike, is_clean: ArrayLike
) -> dict[str, float]:
    """How well a division finds the truly clean samples.

    Args:
        clean_prob: (N,) clean probabilities from the GMM.
        labeled_mask: (N,) bool, True = put in the labelled set.
        is_clean: (N,) bool, True = the noisy label equals the true label.

    Returns:
        {"auc": ROC AUC of clean_prob vs is_clean (NaN if only one class is present),
         "precision": fraction of labelled samples that are clean (NaN if none labelled),
         "recall": fraction of clean samples that are labelled (NaN if none clean)}.
    """
    prob = as_numpy(clean_prob).astype(np.float64).reshape(-1)  # (N,)
    labeled = as_numpy(labeled_mask).astype(bool).reshape(-1)  # (N,)
    clean = as_numpy(is_clean).astype(bool).reshape(-1)  # (N,)
    if not prob.shape == labeled.shape == clean.shape:
        raise ValueError(
            f"shapes differ: clean_prob {prob.shape}, labeled_mask {labeled.shape}, "
            f"is_clean {clean.shape}."
        )
    n_clean = int(clean.sum())
    n_labeled = int(labeled.sum())
    both = int((labeled & clean).sum())
    single_class = n_clean in (0, clean.size)
    return {
        "auc": math.nan if single_class else float(roc_auc_score(clean, prob)),
        "precision": both / n_labeled if n_labeled else math.nan,
        "recall": both / n_clean if n_clean else math.nan,
    }


def summarize_accuracy(history: Sequence[float], *, last: int = 10) -> dict[str, float]:
    """Best accuracy and the mean of the last (up to) `last` epochs, as the paper reports.

    Args:
        history: per-epoch accuracies, oldest first.
        last: how many final epochs to average (>= 1).

    Returns:
        {"best": max, "last10": mean of the last min(last, len) values}; the key stays "last10"
        (the metric's name) whatever `last` is. Both NaN for an empty history.
    """
    if last < 1:
        raise ValueError(f"last must be >= 1, got {last!r}.")
    values = np.asarray(history, dtype=np.float64).reshape(-1)
    if values.size == 0:
        return {"best": math.nan, "last10": math.nan}
    return {"best": float(values.max()), "last10": float(values[-last:].mean())}
