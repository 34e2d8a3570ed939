"""MixMatch pieces of DivideMix: co-guessing, co-refinement, mixup, losses, penalties, ramp-up.

Formulas follow the reference `Train_cifar.py` (DivideMix §3.2):

* `sharpen(p, T) = p^(1/T) / sum_c p^(1/T)`
* co-guess `q_u = sharpen(mean of softmax(net(u1)), softmax(net(u2)), softmax(peer(u1)),
  softmax(peer(u2)), T)`; co-refine `q_x = sharpen(w * onehot + (1 - w) * mean(softmax(net(x1)),
  softmax(net(x2))), T)` — both targets are returned detached.
* mixup with `l ~ Beta(a, a)`, `l = max(l, 1 - l)` and one permutation of the whole batch.
* `Lx = -mean_i sum_c t_ic log_softmax(z)_ic`, `Lu = mean_{i,c} (softmax(z)_ic - t_ic)^2`,
  weighted by `lambda_u * clip((epoch + i / num_iter - warmup) / 16, 0, 1)`.
* prior penalty `sum_c pi_c log(pi_c / mean_i softmax(z)_ic)` with uniform `pi`; warmup
  confidence penalty `mean_i sum_c p_ic log p_ic` (negative entropy).

All functions are pure: tensors in, tensors out, randomness only through the given generator.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def _check_T(T: float) -> None:
    try:
        ok = math.isfinite(float(T)) and float(T) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"sharpening temperature T must be a finite number > 0, got T={T!r}.")


def _check_logits(logits: torch.Tensor, what: str = "logits") -> None:
    if logits.ndim != 2:
        raise ValueError(f"{what} must be 2-D (B, C), got shape {tuple(logits.shape)}.")


def _check_pair(logits: torch.Tensor, targets: torch.Tensor) -> None:
    _check_logits(logits)
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets shape {tuple(targets.shape)} does not match logits {tuple(logits.shape)}."
        )


def sharpen(probs: torch.Tensor, T: float) -> torch.Tensor:
    """Temperature sharpening `p^(1/T) / sum_c p^(1/T)` of each row.

    Args:
        probs: (B, C) non-negative rows (probabilities).
        T: temperature > 0; T = 1 is the identity (up to renormalisation), T < 1 sharpens.

    Returns:
        (B, C) rows summing to 1. Each row is divided by its max before the power, which is the
        same value mathematically but keeps small T from underflowing every entry to 0.
    """
    _check_T(T)
    _check_logits(probs, "probs")
    scaled = probs / probs.amax(dim=1, keepdim=True)  # (B, C), max entry 1
    powered = scaled ** (1.0 / T)  # (B, C)
    return powered / powered.sum(dim=1, keepdim=True)  # (B, C)


def co_guess(
    net_u1: torch.Tensor,
    net_u2: torch.Tensor,
    peer_u1: torch.Tensor,
    peer_u2: torch.Tensor,
    *,
    T: float,
) -> torch.Tensor:
    """Label co-guessing for unlabelled samples: sharpen the mean of four softmaxes.

    Args:
        net_u1, net_u2: (B, C) logits of the net being trained on two augmented views.
        peer_u1, peer_u2: (B, C) logits of the peer net on the same two views.
        T: sharpening temperature > 0.

    Returns:
        (B, C) detached soft targets, rows summing to 1.
    """
    _check_T(T)
    with torch.no_grad():
        for z in (net_u1, net_u2, peer_u1, peer_u2):
            _check_pair(net_u1, z)
        mean_prob = (
            torch.softmax(net_u1, dim=1)
            + torch.softmax(net_u2, dim=1)
            + torch.softmax(peer_u1, dim=1)
            + torch.softmax(peer_u2, dim=1)
        ) / 4  # (B, C)
        return sharpen(mean_prob, T).detach()  # (B, C)


def co_refine(
    net_x1: torch.Tensor,
    net_x2: torch.Tensor,
    labels_onehot: torch.Tensor,
    w: torch.Tensor,
    *,
    T: float,
) -> torch.Tensor:
    """Label co-refinement for labelled samples.

    `sharpen(w * onehot + (1 - w) * mean(softmax(net_x1), softmax(net_x2)), T)`.

    Args:
        net_x1, net_x2: (B, C) logits of the net being trained on two augmented views.
        labels_onehot: (B, C) one-hot (noisy) labels.
        w: (B,) or (B, 1) clean probabilities from the peer's division, in [0, 1].
        T: sharpening temperature > 0.

    Returns:
        (B, C) detached soft targets, rows summing to 1.
    """
    _check_T(T)
    with torch.no_grad():
        _check_pair(net_x1, net_x2)
        _check_pair(net_x1, labels_onehot)
        if w.numel() != net_x1.shape[0]:
            raise ValueError(
                f"w must have B={net_x1.shape[0]} entries, got shape {tuple(w.shape)}."
            )
        w = w.reshape(-1, 1).to(net_x1.dtype)  # (B, 1)
        mean_prob = (torch.softmax(net_x1, dim=1) + torch.softmax(net_x2, dim=1)) / 2  # (B, C)
        refined = w * labels_onehot.to(net_x1.dtype) + (1 - w) * mean_prob  # (B, C)
        return sharpen(refined, T).detach()  # (B, C)


def mix_lambda(alpha: float, rng: np.random.Generator) -> float:
    """Mixup coefficient `l ~ Beta(alpha, alpha)`, returned as `max(l, 1 - l)` (>= 0.5).

    The max keeps each mixed sample closer to its first input, so the first 2|x| mixed inputs
    stay mostly labelled samples. `rng` is the caller's generator (the reference uses the
    unseeded global numpy state).
    """
    if not (math.isfinite(float(alpha)) and float(alpha) > 0):
        raise ValueError(f"mixup alpha must be a finite number > 0, got alpha={alpha!r}.")
    lam = float(rng.beta(alpha, alpha))
    return max(lam, 1.0 - lam)


def mixup(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    lam: float,
    perm: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each sample with its partner `perm[i]`: `lam * a + (1 - lam) * a[perm]`.

    Args:
        inputs: (B, ...) floating inputs (images or features).
        targets: (B, C) soft targets.
        lam: mixing coefficient in [0, 1] (see `mix_lambda`).
        perm: (B,) int64 permutation of range(B), on the inputs' device.

    Returns:
        (mixed_inputs (B, ...), mixed_targets (B, C)).
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"mixup lam must be in [0, 1], got {lam!r}.")
    if inputs.shape[0] != targets.shape[0] or perm.shape != (inputs.shape[0],):
        raise ValueError(
            f"inputs ({inputs.shape[0]}), targets ({targets.shape[0]}) and perm "
            f"{tuple(perm.shape)} must share the batch size B."
        )
    mixed_inputs = lam * inputs + (1 - lam) * inputs[perm]  # (B, ...)
    mixed_targets = lam * targets + (1 - lam) * targets[perm]  # (B, C)
    return mixed_inputs, mixed_targets


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Lx: cross-entropy with soft targets, `-mean_i sum_c t_ic log_softmax(z)_ic`.

    Args:
        logits: (B, C); targets: (B, C) rows summing to 1.

    Returns:
        scalar tensor (differentiable w.r.t. `logits`).
    """
    _check_pair(logits, targets)
    return -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()


def mse_consistency(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Lu: squared error between softmax and targets, averaged over batch AND classes.

    Args:
        logits: (B, C); targets: (B, C).

    Returns:
        scalar tensor `mean_{i,c} (softmax(z)_ic - t_ic)^2` (differentiable w.r.t. `logits`).
    """
    _check_pair(logits, targets)
    return ((torch.softmax(logits, dim=1) - targets) ** 2).mean()


def linear_rampup(progress: float, *, warmup_epochs: float, length: float = 16) -> float:
    """Weight ramp of the unsupervised loss: `clip((progress - warmup_epochs) / length, 0, 1)`.

    Args:
        progress: fractional epoch `epoch + batch_idx / num_iter`.
        warmup_epochs: epochs of warmup (the ramp starts there).
        length: epochs the ramp takes to reach 1 (16 in the reference).

    Returns:
        Python float in [0, 1]; the caller multiplies it by lambda_u.
    """
    if not length > 0:
        raise ValueError(f"rampup length must be > 0, got length={length!r}.")
    return float(np.clip((progress - warmup_epochs) / length, 0.0, 1.0))


def uniform_prior_penalty(logits: torch.Tensor) -> torch.Tensor:
    """Regulariser toward a uniform mean prediction: `sum_c pi_c log(pi_c / mean_i p_ic)`.

    `pi_c = 1 / C`; this is KL(pi || mean prediction), >= 0 and 0 iff the batch-mean softmax is
    uniform. It keeps the net from collapsing onto a few classes under heavy noise.

    Args:
        logits: (B, C) logits of all mixed inputs.

    Returns:
        scalar tensor (differentiable w.r.t. `logits`).
    """
    _check_logits(logits)
    num_classes = logits.shape[1]
    prior = torch.full((num_classes,), 1.0 / num_classes, dtype=logits.dtype, device=logits.device)
    pred_mean = torch.softmax(logits, dim=1).mean(dim=0)  # (C,)
    return (prior * torch.log(prior / pred_mean)).sum()


def confidence_penalty(logits: torch.Tensor) -> torch.Tensor:
    """Negative entropy `mean_i sum_c p_ic log p_ic`, added in warmup under asymmetric noise.

    Minimising it discourages over-confident predictions. Equals `-log C` for uniform
    predictions and tends to 0 for one-hot ones. `log p` is taken as `log_softmax` so a
    probability that underflows to 0 contributes 0, not NaN (the reference's `probs.log()`).

    Args:
        logits: (B, C).

    Returns:
        scalar tensor (differentiable w.r.t. `logits`).
    """
    _check_logits(logits)
    log_probs = F.log_softmax(logits, dim=1)  # (B, C)
    return (log_probs.exp() * log_probs).sum(dim=1).mean()
