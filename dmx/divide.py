"""Loss-based division: per-sample losses -> clean probability -> labelled / unlabelled mask.

The recipe (DivideMix §3.1 and the reference's `eval_train`): each net's per-sample
cross-entropy on the whole train set is min-max normalised to [0, 1] and appended to that net's
loss history; the mean of the last `window` rows (1 = the current epoch; the reference uses 5 at
90% noise) is fitted with a 2-component Gaussian mixture; a sample's clean probability is its
posterior under the lower-mean component; the labelled set is `clean_prob > p_threshold`.

Unlike the reference, the GMM is seeded (`random_state`) so a division can be reproduced.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

ArrayLike = np.ndarray | torch.Tensor


def as_numpy(x: ArrayLike) -> np.ndarray:
    """A numpy view/copy of a numpy array or torch tensor (detached, on the CPU; bf16/fp16 become
    float32 since numpy has no bfloat16). The one conversion the math modules share."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.bfloat16, torch.float16):  # numpy has no bfloat16
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def normalize_losses(losses: ArrayLike) -> ArrayLike:
    """Min-max normalise per-sample losses to [0, 1]: `(l - min) / (max - min)`.

    Args:
        losses: (N,) per-sample losses, numpy array or torch tensor.

    Returns:
        (N,) of the same kind (numpy -> float64 numpy, tensor -> floating tensor on the same
        device). A constant vector (max == min, including N == 1) has no spread to normalise and
        returns all zeros instead of the 0/0 NaNs of the bare formula; an empty input returns an
        empty output. Non-finite losses propagate (the GMM rejects them with a clear error).
    """
    if isinstance(losses, torch.Tensor):
        x = losses.detach()
        if not x.is_floating_point():
            x = x.double()
        if x.ndim != 1:
            raise ValueError(f"losses must be 1-D (N,), got shape {tuple(x.shape)}.")
        if x.numel() == 0:
            return x.clone()
        lo, hi = x.min(), x.max()
        span = hi - lo
        if span == 0:
            return torch.zeros_like(x)
        return (x - lo) / span  # (N,)
    x = np.asarray(losses, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"losses must be 1-D (N,), got shape {x.shape}.")
    if x.size == 0:
        return x.copy()
    lo, hi = x.min(), x.max()
    span = hi - lo
    if span == 0:
        return np.zeros_like(x)
    return (x - lo) / span  # (N,)


def history_input(history: ArrayLike, *, window: int) -> ArrayLike:
    """The GMM input: mean over the last `window` epochs of a loss history.

    Args:
        history: (k, N) normalised losses, one row per epoch, oldest first (numpy or torch).
        window: number of most recent rows to average (>= 1). 1 = the current epoch only; the
            reference averages 5 at 90% noise. With fewer than `window` rows, all rows are
            averaged (as `history[-5:]` does in the reference).

    Returns:
        (N,) of the same kind as `history`.
    """
    if int(window) != window or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}.")
    if not isinstance(history, torch.Tensor):
        history = np.asarray(history, dtype=np.float64)
    if history.ndim != 2:
        raise ValueError(f"history must be 2-D (k, N), got shape {tuple(history.shape)}.")
    if history.shape[0] == 0:
        raise ValueError("history is empty (k = 0 epochs): append the current losses first.")
    recent = history[-int(window) :]  # (min(k, window), N)
    if isinstance(recent, torch.Tensor):
        if not recent.is_floating_point():
            recent = recent.double()
        return recent.mean(dim=0)  # (N,)
    return recent.mean(axis=0)  # (N,)


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value to compare
class GMMFit:
    """A 2-component GMM fitted to (N,) losses, the clean (lower-mean) component FIRST.

    Degenerate input (N < 2 or all losses equal, see `fit_gmm`) is described as one point mass:
    both means equal the common loss value (NaN when N == 0), both stds are 0, the weights are
    (1, 0) and every sample is clean. Plotting code can then draw it without special cases.
    """

    means: np.ndarray  # (2,) float64, clean component first (means[0] <= means[1])
    stds: np.ndarray  # (2,) float64, sqrt of the fitted variances (reg_covar included)
    weights: np.ndarray  # (2,) float64, mixing weights, sum 1
    clean_prob: np.ndarray  # (N,) float64 in [0, 1]: posterior of the clean component


def fit_gmm(
    losses: ArrayLike,
    *,
    seed: int,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
) -> GMMFit:
    """Fit the division's 2-component GMM to the losses; `clean_probability` is its `clean_prob`.

    Fits `GaussianMixture(n_components=2, max_iter, tol, reg_covar, random_state=seed)` on
    `losses.reshape(-1, 1)` (as float64). The defaults are the reference's; `max_iter=10` often
    stops before convergence by design, so sklearn's ConvergenceWarning is silenced here (other
    warnings pass through). One function serves training and the analysis plots, so a plotted
    GMM is exactly the one that divided the samples.

    Args:
        losses: (N,) normalised losses (numpy array or torch tensor), all finite.
        seed: random_state of the GMM initialisation (the reference leaves it unseeded).

    Returns:
        GMMFit with the clean (lower-mean) component first. With N < 2 or all losses equal there
        is nothing to separate, so every sample is clean (clean_prob all ones; an empty input
        gives an empty array) and the parameters describe one point mass (see `GMMFit`): the
        training loop then treats the whole set as labelled with weight 1 rather than crashing.
    """
    x = as_numpy(losses).astype(np.float64, copy=False).reshape(-1)  # (N,)
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise ValueError(f"losses contain {bad} non-finite value(s); the GMM needs finite losses.")
    if x.size < 2 or np.all(x == x[0]):
        value = float(x[0]) if x.size else math.nan
        return GMMFit(
            means=np.array([value, value]),
            stds=np.zeros(2),
            weights=np.array([1.0, 0.0]),
            clean_prob=np.ones(x.size, dtype=np.float64),
        )
    gmm = GaussianMixture(
        n_components=2, max_iter=max_iter, tol=tol, reg_covar=reg_covar, random_state=seed
    )
    column = x.reshape(-1, 1)  # (N, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        gmm.fit(column)
    posterior = gmm.predict_proba(column)  # (N, 2)
    clean = int(gmm.means_.argmin())
    order = [clean, 1 - clean]  # clean component first
    return GMMFit(
        means=np.asarray(gmm.means_, dtype=np.float64).reshape(-1)[order],  # (2,)
        stds=np.sqrt(np.asarray(gmm.covariances_, dtype=np.float64).reshape(-1))[order],  # (2,)
        weights=np.asarray(gmm.weights_, dtype=np.float64)[order],  # (2,)
        clean_prob=np.ascontiguousarray(posterior[:, clean], dtype=np.float64),  # (N,)
    )


def clean_probability(
    losses: ArrayLike,
    *,
    seed: int,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
) -> np.ndarray:
    """Posterior probability of being clean under a 2-component GMM fitted to the losses.

    The `clean_prob` of `fit_gmm` (same arguments, same degenerate-input rule: N < 2 or all
    losses equal gives all ones).

    Args:
        losses: (N,) normalised losses (numpy array or torch tensor), all finite.
        seed: random_state of the GMM initialisation (the reference leaves it unseeded).

    Returns:
        (N,) float64 numpy array in [0, 1].
    """
    return fit_gmm(losses, seed=seed, max_iter=max_iter, tol=tol, reg_covar=reg_covar).clean_prob


def co_divide(clean_prob: ArrayLike, *, p_threshold: float) -> np.ndarray:
    """Labelled-set mask: `clean_prob > p_threshold` (strict, as the reference).

    Args:
        clean_prob: (N,) clean probabilities (numpy or torch).
        p_threshold: threshold in [0, 1] (0.5 by default in the recipe, 0.6 at 90% noise).

    Returns:
        (N,) bool numpy array; True = labelled (trusted label), False = unlabelled.
    """
    if not 0.0 <= p_threshold <= 1.0:
        raise ValueError(f"p_threshold must be in [0, 1], got {p_threshold!r}.")
    return as_numpy(clean_prob).reshape(-1) > p_threshold  # (N,) bool
