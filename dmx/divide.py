"""Loss-based division: per-sample losses -> clean probability -> labelled / unlabelled mask.

The recipe (DivideMix §3.1 and the reference's `eval_train`): each net's per-sample
cross-entropy on the whole train set is min-max normalised to [0, 1] and appended to that net's
loss history; the mean of the last `window` rows (1 = the current epoch; the reference uses 5 at
90% noise) is fitted with a 2-component Gaussian mixture; a sample's clean probability is its
posterior under the lower-mean component; the labelled set is `clean_prob > p_threshold`.

Unlike the reference, the GMM is seeded (`random_state`) so a division can be reproduced.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(x: ArrayLike) -> np.ndarray:
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


def clean_probability(
    losses: ArrayLike,
    *,
    seed: int,
    max_iter: int = 10,
    tol: float = 1e-2,
    reg_covar: float = 5e-4,
) -> np.ndarray:
    """Posterior probability of being clean under a 2-component GMM fitted to the losses.

    Fits `GaussianMixture(n_components=2, max_iter, tol, reg_covar, random_state=seed)` on
    `losses.reshape(-1, 1)` (as float64) and returns the posterior of the component with the
    lower mean. The defaults are the reference's; `max_iter=10` often stops before convergence
    by design, so sklearn's ConvergenceWarning is silenced here (other warnings pass through).

    Args:
        losses: (N,) normalised losses (numpy array or torch tensor), all finite.
        seed: random_state of the GMM initialisation (the reference leaves it unseeded).

    Returns:
        (N,) float64 numpy array in [0, 1].

    Degenerate inputs: with N < 2 or all losses equal there is nothing to separate, so every
    sample is returned as clean (all ones; an empty input gives an empty array). The training loop
    then treats the whole set as labelled with weight 1 rather than crashing.
    """
    x = _as_numpy(losses).astype(np.float64, copy=False).reshape(-1)  # (N,)
    if not np.all(np.isfinite(x)):
        bad = int(np.size(x) - np.isfinite(x).sum())
        raise ValueError(f"losses contain {bad} non-finite value(s); the GMM needs finite losses.")
    if x.size < 2 or np.all(x == x[0]):
        return np.ones(x.size, dtype=np.float64)
    gmm = GaussianMixture(
        n_components=2, max_iter=max_iter, tol=tol, reg_covar=reg_covar, random_state=seed
    )
    column = x.reshape(-1, 1)  # (N, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        gmm.fit(column)
    posterior = gmm.predict_proba(column)  # (N, 2)
    return np.ascontiguousarray(posterior[:, int(gmm.means_.argmin())], dtype=np.float64)


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
    return _as_numpy(clean_prob).reshape(-1) > p_threshold  # (N,) bool
