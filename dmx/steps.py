"""One epoch of one net: the warmup epoch (cross-entropy) and the DivideMix epoch (co-guess,
co-refine, MixMatch), and the context they share (`Loop`).

The hot loop does not wait for the device: losses are summed and checked for NaN on the device
and read once per epoch (`FiniteCheck`). Views come from the data (`dmx.data.views`): in memory,
augmented on the device from the loop's generator; from files, in DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dmx import mixmatch
from dmx.batches import balanced_subset, cycle_batches, index_batches, two_views
from dmx.config import Config
from dmx.data.views import TrainData
from dmx.evaluate import Division, autocast

Progress = Callable[[str, int, int, dict[str, torch.Tensor]], None]
"""progress(phase, batch_index, num_batches, info): called after every training batch; the
info values are device tensors (convert them only when you show them: that waits for the device)."""

NET_NAMES = ("net1", "net2")
WARMUP, LABELLED, UNLABELLED = 0, 1, 2  # stream keys of the views of one epoch of one net


class NonFiniteLossError(FloatingPointError, RuntimeError):
    """A NaN/inf loss: training stops, the last good checkpoint stays untouched. A RuntimeError
    too, so the CLI reports it as one message (exit 2) like every other error with a fix."""


@dataclass(frozen=True)
class Loop:
    """What every epoch function needs besides its nets: the config, the data and the loop's two
    random generators (both saved in every checkpoint)."""

    cfg: Config
    data: TrainData
    gen: torch.Generator  # CPU: shuffles, subsets, augmentation, mixup permutations
    np_rng: np.random.Generator  # Beta draws of mixup, GMM seeds
    progress: Progress | None = None
    single_sample_ok: bool = True  # the nets can take a train-mode pass on ONE sample

    def __post_init__(self) -> None:
        if self.cfg.auto_sources():  # "auto" is truthy: an unresolved flag would read as on
            raise ValueError(
                f"Loop needs a resolved config ({sorted(self.cfg.auto_sources())} are 'auto'): "
                "pass cfg.resolved()."
            )

    @property
    def device(self) -> torch.device:
        return self.data.device


# --------------------------------------------------------------------------------------------
# One epoch of one net
# --------------------------------------------------------------------------------------------
def warmup_epoch(
    net: nn.Module, optimizer: torch.optim.Optimizer, loop: Loop, *, epoch: int, net_id: int
) -> tuple[dict[str, float], int]:
    """Cross-entropy on the noisy labels (+ confidence penalty when configured), one pass over
    the training split, or over a fresh class-balanced subset (dividemix.resample=balanced).
    Returns the epoch's metrics and the number of images trained on."""
    cfg, data, name = loop.cfg, loop.data, NET_NAMES[net_id]
    bs = cfg.optim.warmup_batch_size
    net.train()
    if cfg.dividemix.resample == "balanced":
        size = cfg.dividemix.num_batches * bs
        order = balanced_subset(data.noisy_y, size, data.num_classes, loop.gen)
    else:
        order = torch.randperm(len(data), generator=loop.gen)
    batches = index_batches(order, bs, merge_single=not loop.single_sample_ok)
    views = data.views(batches, n_views=1, gen=loop.gen, key=(epoch, WARMUP, net_id))
    checks = FiniteCheck(epoch, name)
    total = torch.zeros((), device=loop.device)
    for i, (idx, (inputs,)) in enumerate(zip(batches, views)):
        labels = data.noisy_y[idx.to(loop.device, non_blocking=True)]
        with autocast(cfg, loop.device):
            logits = net(inputs).float()  # (B, C)
        ce = F.cross_entropy(logits, labels)
        terms = {"ce": ce}
        if cfg.dividemix.warmup_confidence_penalty:
            terms["confidence_penalty"] = mixmatch.confidence_penalty(logits)
        checks.add(i, terms)
        optimizer.zero_grad(set_to_none=True)
        sum(terms.values()).backward()
        optimizer.step()
        total += ce.detach() * len(idx)
        if loop.progress:
            loop.progress(f"warmup {name}", i, len(batches), {"loss": ce.detach()})
    checks.raise_if_bad()
    seen = len(order)
    return {f"warmup_loss_{name}": float(total) / max(seen, 1)}, seen


def dividemix_epoch(
    net: nn.Module,
    peer: nn.Module,
    optimizer: torch.optim.Optimizer,
    loop: Loop,
    *,
    division: Division,
    epoch: int,
    net_id: int,
) -> tuple[dict[str, float], int]:
    """Train `net` for one pass over the labelled set of the PEER's `division` (co-divide).

    Per batch: co-guess the unlabelled targets with both nets, co-refine the labelled targets with
    `net`, MixMatch everything with one permutation, and step on Lx + λ·Lu + prior penalty (or on
    Lx + penalty of the labelled rows only: dividemix.mix_labeled_only).
    Returns the epoch's metrics and the number of (mixed) images trained on."""
    cfg, data, gen, name = loop.cfg, loop.data, loop.gen, NET_NAMES[net_id]
    bs = cfg.optim.batch_size
    labeled = torch.from_numpy(division.indices[division.labeled_mask])
    unlabeled = torch.from_numpy(division.indices[~division.labeled_mask])
    if len(labeled) == 0:
        # Nothing the division trusts: skipping the step is the only choice that does not train
        # on labels the GMM called noisy. Reported as labeled_<peer> = 0 and a 0-batch epoch.
        info = {f"{k}_{name}": float("nan") for k in ("lx", "lu", "penalty")}
        return {**info, f"skipped_{name}": 1.0}, 0
    weights = torch.zeros(len(data), dtype=torch.float32)  # (N,) clean prob of each labelled one
    weights[torch.from_numpy(division.indices)] = torch.from_numpy(division.clean_prob).float()
    weights = weights.to(loop.device)
    net.train()
    peer.eval()
    num_iter = len(labeled) // bs + 1  # the reference's count, used only by the λu ramp-up
    merge = not loop.single_sample_ok
    x_batches = index_batches(labeled[torch.randperm(len(labeled), generator=gen)], bs, merge)
    # The unlabelled set cycles, reshuffled when exhausted; its batches for the whole epoch are
    # drawn up front, so that a streaming loader can fetch them ahead.
    u_batches = list(islice(cycle_batches(unlabeled, bs, gen, merge), len(x_batches)))
    x_views = data.views(x_batches, n_views=2, gen=gen, key=(epoch, LABELLED, net_id))
    u_views = data.views(
        [b for b in u_batches if b is not None], n_views=2, gen=gen, key=(epoch, UNLABELLED, net_id)
    )
    step = MixMatchStep(net, peer, optimizer, loop, FiniteCheck(epoch, name))
    sums, images, lam_u = torch.zeros(3, device=loop.device), 0, 0.0
    for i, (bx, x) in enumerate(zip(x_batches, x_views)):
        u = next(u_views) if u_batches[i] is not None else None
        ramp = mixmatch.linear_rampup(
            epoch + i / num_iter,
            warmup_epochs=cfg.dividemix.warmup_epochs,
            length=cfg.dividemix.rampup_length,
        )
        lam_u = cfg.dividemix.lambda_u * ramp
        terms, n = step(bx.to(loop.device, non_blocking=True), x, u, weights, lam_u=lam_u, index=i)
        sums += terms.detach()
        images += n
        if loop.progress:
            loop.progress(f"train {name}", i, len(x_batches), {"Lx": terms[0], "Lu": terms[1]})
    step.checks.raise_if_bad()
    out = {f"{k}_{name}": float(v) / len(x_batches) for k, v in zip(("lx", "lu", "penalty"), sums)}
    if cfg.dividemix.mix_labeled_only:
        out.pop(f"lu_{name}")
    return {**out, "lambda_u_eff": 0.0 if cfg.dividemix.mix_labeled_only else lam_u}, images


class MixMatchStep:
    """One DivideMix training step of `net` (its peer guesses with it): co-guess, co-refine,
    MixMatch, loss, optimiser step. Returns the loss terms (Lx, Lu, penalty) as one device tensor
    and the number of mixed images trained on."""

    def __init__(
        self,
        net: nn.Module,
        peer: nn.Module,
        optimizer: torch.optim.Optimizer,
        loop: Loop,
        checks: FiniteCheck,
    ) -> None:
        self.net, self.peer, self.optimizer = net, peer, optimizer
        self.loop, self.checks = loop, checks

    def __call__(
        self,
        bx: torch.Tensor,
        x: list[torch.Tensor],
        u: list[torch.Tensor] | None,
        weights: torch.Tensor,
        *,
        lam_u: float,
        index: int,
    ) -> tuple[torch.Tensor, int]:
        net, peer, loop = self.net, self.peer, self.loop
        cfg, data, dm = loop.cfg, loop.data, loop.cfg.dividemix
        x1, x2 = x
        onehot = F.one_hot(data.noisy_y[bx], data.num_classes).float()  # (B, C)
        single_ok = loop.single_sample_ok
        inputs, guessed = [x1, x2], []  # the unlabelled views and their co-guessed targets
        with torch.no_grad(), autocast(cfg, loop.device):
            if dm.co_guess_eval_mode:
                net.eval()
            # Same order of forward passes as the reference (BatchNorm running stats see them).
            if u is not None:
                net_u1, net_u2 = two_views(net, u[0], u[1], single_ok=single_ok)
                q_u = mixmatch.co_guess(
                    net_u1, net_u2, peer(u[0]).float(), peer(u[1]).float(), T=dm.T
                )  # (U, C)
                inputs, guessed = [x1, x2, *u], [q_u, q_u]
            net_x1, net_x2 = two_views(net, x1, x2, single_ok=single_ok)
            q_x = mixmatch.co_refine(net_x1, net_x2, onehot, weights[bx], T=dm.T)  # (B, C)
            net.train()
        lam = mixmatch.mix_lambda(dm.alpha, loop.np_rng)
        all_inputs, all_targets = torch.cat(inputs), torch.cat([q_x, q_x, *guessed])
        perm = torch.randperm(len(all_inputs), generator=loop.gen).to(
            loop.device, non_blocking=True
        )
        mixed_inputs, mixed_targets = mixmatch.mixup(all_inputs, all_targets, lam=lam, perm=perm)
        n_x = 2 * len(bx)
        if dm.mix_labeled_only:  # the reference's Clothing1M / WebVision: the first 2B rows only
            mixed_inputs, mixed_targets = mixed_inputs[:n_x], mixed_targets[:n_x]
        with autocast(cfg, loop.device):
            logits = net(mixed_inputs).float()  # (2B + 2U, C), or (2B, C)
        zero = torch.zeros((), device=loop.device)
        lx = mixmatch.soft_cross_entropy(logits[:n_x], mixed_targets[:n_x])
        has_lu = u is not None and not dm.mix_labeled_only
        lu = mixmatch.mse_consistency(logits[n_x:], mixed_targets[n_x:]) if has_lu else zero
        penalty = mixmatch.uniform_prior_penalty(logits) if dm.prior_penalty else zero
        self.checks.add(index, {"Lx": lx, "Lu": lu, "penalty": penalty})
        loss = lx + lam_u * lu + penalty if has_lu else lx + penalty
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return torch.stack([lx, lu, penalty]), len(mixed_inputs)


class FiniteCheck:
    """Non-finite loss terms of one epoch, collected on the device (no wait per step) and raised
    once at the epoch's end, naming the epoch, the net, the first bad batch and the terms."""

    def __init__(self, epoch: int, net_name: str) -> None:
        self.epoch, self.net_name = epoch, net_name
        self.first_bad: dict[str, torch.Tensor] = {}  # term -> first bad batch index (-1 none)

    def add(self, index: int, terms: dict[str, torch.Tensor]) -> None:
        for key, value in terms.items():
            bad = ~torch.isfinite(value.detach()).all()
            first = self.first_bad.get(key)
            if first is None:
                first = torch.full((), -1, dtype=torch.long, device=value.device)
            self.first_bad[key] = torch.where(bad & (first < 0), index, first)

    def raise_if_bad(self) -> None:
        bad = {k: int(v) for k, v in self.first_bad.items() if int(v) >= 0}
        if bad:
            raise NonFiniteLossError(
                f"Non-finite loss at epoch {self.epoch} while training {self.net_name}: "
                + ", ".join(f"{k} (first at batch {i})" for k, i in bad.items())
                + ". The last good checkpoint is untouched. Lower optim.lr, use "
                "run.precision=fp32, or check the data for corrupt images."
            )


__all__ = [
    "FiniteCheck",
    "LABELLED",
    "Loop",
    "MixMatchStep",
    "NET_NAMES",
    "NonFiniteLossError",
    "Progress",
    "UNLABELLED",
    "WARMUP",
    "dividemix_epoch",
    "warmup_epoch",
]
