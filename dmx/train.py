"""The two-network DivideMix loop: warmup, divide, co-divide, train each net, evaluate, report.

`fit` reads top to bottom as the reference's Train_cifar.py orders one epoch (DESIGN.md §3). The
math lives in `dmx.divide` and `dmx.mixmatch`, the eval-mode passes in `dmx.evaluate`, the data in
`dmx.prepare`; results go to a `dmx.reporting.Reporter` (this module writes no files).

All randomness of the loop (shuffles, augmentation, mixup permutation) comes from one CPU
`torch.Generator`, Beta draws and GMM seeds from one numpy Generator; both are in the TrainState,
so a resumed run is the run that was never interrupted (bit-identical on CPU).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dmx import metrics, mixmatch
from dmx.batches import cycle_batches, index_batches, trains_on_one_sample, two_views
from dmx.config import Config
from dmx.evaluate import Division, autocast, divide_net, eval_metrics, sample_table
from dmx.labels import NoisyLabels
from dmx.models import create_model
from dmx.prepare import DeviceData, PreparedData, prepare_data, resolve_device
from dmx.reporting import Reporter
from dmx.state import TrainState, rng_state, set_rng_state

Progress = Callable[[str, int, int, dict[str, float]], None]
"""progress(phase, batch_index, num_batches, info): called after every training batch."""

NET_NAMES = ("net1", "net2")


class NonFiniteLossError(FloatingPointError, RuntimeError):
    """A NaN/inf loss: training stops, the last good checkpoint stays untouched. A RuntimeError
    too, so the CLI reports it as one message (exit 2) like every other error with a fix."""


class ResumeMismatchError(ValueError):
    """A checkpoint that belongs to a different run than the config asks for."""


@dataclass(frozen=True)
class Loop:
    """What every epoch function needs besides its nets: the config, the device data and the
    loop's two random generators (both saved in every checkpoint)."""

    cfg: Config
    data: DeviceData
    gen: torch.Generator  # CPU: shuffles, augmentation, mixup permutations
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
# fit
# --------------------------------------------------------------------------------------------
def fit(
    cfg: Config,
    *,
    reporter: Reporter | None = None,
    state: TrainState | None = None,
    progress: Progress | None = None,
) -> TrainState:
    """Run DivideMix from `state` (or from scratch) to `cfg.run.epochs` epochs, handing every
    epoch to `reporter` (checkpoints, metrics files, MLflow, Tune: see dmx.reporting). "auto"
    fields are resolved first, so the state and every reporter see the values that were used."""
    cfg = cfg.resolved()
    configure_determinism(cfg)
    device = resolve_device(cfg.run.device)
    prepared = prepare_data(cfg)
    if state is not None:
        check_resume(cfg, state, prepared.noisy)
    data = DeviceData(cfg, prepared, device)
    nets, opts, loop, state = _start(cfg, prepared, data, state, progress)
    report = reporter or Reporter()
    report.start(cfg, prepared, state)
    is_clean = data.true_y == prepared.noisy.noisy_labels[prepared.train_idx]  # (N,) bool
    noise_rate = float(100.0 * (1.0 - is_clean.mean()))  # % wrong labels in the training split

    for epoch in range(state.epoch, cfg.run.epochs):
        start = time.perf_counter()
        lr = set_learning_rate(opts, cfg, epoch)
        m: dict[str, float] = {"epoch": epoch, "lr": lr, "noise_rate": noise_rate}
        images = 0
        if epoch < cfg.dividemix.warmup_epochs:
            m["phase"] = 0
            for net, opt, name in zip(nets, opts, NET_NAMES):
                out, n = warmup_epoch(net, opt, loop, epoch=epoch, net_name=name)
                m.update(out)
                images += n
        else:
            m["phase"] = 1
            # Eval for division: both nets divide BEFORE either trains this epoch.
            histories = [state.loss_history1, state.loss_history2]
            divisions = [
                divide_net(net, hist, data, cfg, seed=int(loop.np_rng.integers(2**31 - 1)))
                for net, hist in zip(nets, histories)
            ]
            _record_divisions(state, m, divisions, is_clean)
            # Co-divide: each net trains on the division of its peer; net1 first, so net2's
            # peer is the net1 of this epoch's update.
            for k in (0, 1):
                out, n = dividemix_epoch(
                    nets[k],
                    nets[1 - k],
                    opts[k],
                    loop,
                    division=divisions[1 - k],
                    epoch=epoch,
                    net_name=NET_NAMES[k],
                )
                m.update(out)
                images += n
            m.update(_empty_split_flags(m, len(is_clean)))
        train_seconds = time.perf_counter() - start

        m.update(eval_metrics(nets, data, cfg))
        m.update(_summary(state.metrics_history, m))
        m["epoch_seconds"] = time.perf_counter() - start
        m["images_per_second"] = images / max(train_seconds, 1e-9)
        m = {k: float(v) for k, v in m.items()}
        _snapshot(state, epoch + 1, nets, opts, loop, m)
        report.epoch_end(epoch, m, state)

    if reporter is not None:  # the per-sample table costs two eval passes: only when wanted
        reporter.run_end(state, sample_table(nets, state, data, prepared, cfg))
    return state


def _start(
    cfg: Config,
    prepared: PreparedData,
    data: DeviceData,
    state: TrainState | None,
    progress: Progress | None,
) -> tuple[list[nn.Module], list[torch.optim.Optimizer], Loop, TrainState]:
    """Nets, optimisers and generators, fresh from the seed or restored from `state`."""
    torch.manual_seed(cfg.run.seed)  # model init; everything later draws from gen / np_rng
    random.seed(cfg.run.seed)
    nets = build_nets(cfg, prepared, data.device, starting_weights=state is None)
    opts = [
        torch.optim.SGD(
            n.parameters(),
            lr=cfg.optim.lr,
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
        )
        for n in nets
    ]
    loop = Loop(
        cfg,
        data,
        gen=torch.Generator().manual_seed(cfg.run.seed),
        np_rng=np.random.default_rng(cfg.run.seed),
        progress=progress,
        single_sample_ok=trains_on_one_sample(nets[0], data),
    )
    if state is None:
        state = TrainState(config=cfg.to_flat())
    else:
        for module, saved in zip([*nets, *opts], [state.net1, state.net2, state.opt1, state.opt2]):
            module.load_state_dict(saved)
        set_rng_state(state.rng, loop.gen, loop.np_rng)
        state.config = cfg.to_flat()
    state.noisy_labels_path = str(prepared.noisy.path)
    state.noisy_labels_sha256 = prepared.noisy.sha256
    return nets, opts, loop, state


def _record_divisions(
    state: TrainState, m: dict[str, float], divisions: list[Division], is_clean: np.ndarray
) -> None:
    """Keep the divisions in the state (histories, clean probabilities) and their metrics."""
    state.loss_history1, state.loss_history2 = (d.history for d in divisions)
    state.clean_prob1, state.clean_prob2 = (torch.from_numpy(d.clean_prob) for d in divisions)
    for name, div in zip(NET_NAMES, divisions):
        m[f"labeled_{name}"] = int(div.labeled_mask.sum())
        det = metrics.clean_detection(div.clean_prob, div.labeled_mask, is_clean)
        pct = {"precision": 100.0, "recall": 100.0}  # % like accuracy; AUC stays in [0, 1]
        m.update({f"{key}_{name}": float(v) * pct.get(key, 1.0) for key, v in det.items()})


def _empty_split_flags(m: dict[str, float], n_train: int) -> dict[str, float]:
    """`empty_labelled_netK` / `empty_unlabelled_netK` = 1 when net K's division put every
    sample on one side (the reference would crash; dmx reports it and goes on)."""
    flags = {}
    for name in NET_NAMES:
        if m[f"labeled_{name}"] in (0, n_train):
            which = "labelled" if m[f"labeled_{name}"] == 0 else "unlabelled"
            flags[f"empty_{which}_{name}"] = 1.0
    return flags


def _summary(history: list[dict[str, float]], current: dict[str, float]) -> dict[str, float]:
    accs = [h["test_acc"] for h in history] + [current["test_acc"]]
    s = metrics.summarize_accuracy(accs, last=10)
    return {"best_test_acc": s["best"], "last10_test_acc": s["last10"]}


def _snapshot(
    state: TrainState,
    epochs_done: int,
    nets: list[nn.Module],
    opts: list[torch.optim.Optimizer],
    loop: Loop,
    m: dict[str, float],
) -> None:
    """Everything a resume needs, as live references (the reporters save it)."""
    state.epoch = epochs_done
    state.net1, state.net2 = nets[0].state_dict(), nets[1].state_dict()
    state.opt1, state.opt2 = opts[0].state_dict(), opts[1].state_dict()
    state.rng = rng_state(loop.gen, loop.np_rng)
    state.metrics_history.append(m)


# --------------------------------------------------------------------------------------------
# One epoch of one net
# --------------------------------------------------------------------------------------------
def warmup_epoch(
    net: nn.Module, optimizer: torch.optim.Optimizer, loop: Loop, *, epoch: int, net_name: str
) -> tuple[dict[str, float], int]:
    """Cross-entropy on the noisy labels (+ confidence penalty when configured), one pass.
    Returns the epoch's metrics and the number of images trained on."""
    cfg, data = loop.cfg, loop.data
    net.train()
    n = len(data.noisy_y)
    loader = index_batches(
        torch.randperm(n, generator=loop.gen),
        cfg.optim.warmup_batch_size,
        merge_single=not loop.single_sample_ok,
    )
    total, seen = 0.0, 0
    for i, idx in enumerate(loader):
        idx = idx.to(loop.device)
        inputs = data.train_view(data.train_x[idx], loop.gen)
        with autocast(cfg, loop.device):
            logits = net(inputs).float()  # (B, C)
        loss = F.cross_entropy(logits, data.noisy_y[idx])
        terms = {"ce": loss}
        if cfg.dividemix.warmup_confidence_penalty:
            terms["confidence_penalty"] = mixmatch.confidence_penalty(logits)
        total_loss = sum(terms.values())
        _check_finite(epoch, net_name, terms)
        optimizer.zero_grad(set_to_none=True)
        total_loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(idx)
        seen += len(idx)
        if loop.progress:
            loop.progress(f"warmup {net_name}", i, len(loader), {"loss": float(loss.detach())})
    return {f"warmup_loss_{net_name}": total / max(seen, 1)}, seen


def dividemix_epoch(
    net: nn.Module,
    peer: nn.Module,
    optimizer: torch.optim.Optimizer,
    loop: Loop,
    *,
    division: Division,
    epoch: int,
    net_name: str,
) -> tuple[dict[str, float], int]:
    """Train `net` for one pass over the labelled set of the PEER's `division` (co-divide).

    Per batch: co-guess the unlabelled targets with both nets, co-refine the labelled targets with
    `net`, MixMatch everything with one permutation, and step on Lx + λ·Lu + prior penalty.
    Returns the epoch's metrics and the number of (mixed) images trained on."""
    cfg, data, gen = loop.cfg, loop.data, loop.gen
    dm, bs = cfg.dividemix, cfg.optim.batch_size
    labeled = torch.from_numpy(np.flatnonzero(division.labeled_mask))
    unlabeled = torch.from_numpy(np.flatnonzero(~division.labeled_mask))
    w_all = torch.from_numpy(division.clean_prob.astype(np.float32)).to(loop.device)  # (N,)
    sums = {"lx": 0.0, "lu": 0.0, "penalty": 0.0}
    if len(labeled) == 0:
        # Nothing the division trusts: skipping the step is the only choice that does not train
        # on labels the GMM called noisy. Reported as labeled_<peer> = 0 and a 0-batch epoch.
        info = {f"{k}_{net_name}": float("nan") for k in sums}
        return {**info, f"skipped_{net_name}": 1.0}, 0
    net.train()
    peer.eval()
    num_iter = len(labeled) // bs + 1  # the reference's count, used only by the λu ramp-up
    merge = not loop.single_sample_ok
    loader = index_batches(labeled[torch.randperm(len(labeled), generator=gen)], bs, merge)
    unlabeled_batches = cycle_batches(unlabeled, bs, gen, merge)
    images, lam_u = 0, 0.0
    for i, bx in enumerate(loader):
        bx = bx.to(loop.device)
        bu = next(unlabeled_batches)
        x1 = data.train_view(data.train_x[bx], gen)
        x2 = data.train_view(data.train_x[bx], gen)
        onehot = F.one_hot(data.noisy_y[bx], data.num_classes).float()  # (B, C)
        u1 = u2 = None
        with torch.no_grad(), autocast(cfg, loop.device):
            if dm.co_guess_eval_mode:
                net.eval()
            # Same order of forward passes as the reference (BatchNorm running stats see them).
            if bu is not None:
                bu = bu.to(loop.device)
                u1 = data.train_view(data.train_x[bu], gen)
                u2 = data.train_view(data.train_x[bu], gen)
                net_u1, net_u2 = two_views(net, u1, u2, single_ok=loop.single_sample_ok)
                q_u = mixmatch.co_guess(
                    net_u1, net_u2, peer(u1).float(), peer(u2).float(), T=dm.T
                )  # (U, C)
            net_x1, net_x2 = two_views(net, x1, x2, single_ok=loop.single_sample_ok)
            q_x = mixmatch.co_refine(net_x1, net_x2, onehot, w_all[bx], T=dm.T)  # (B, C)
            net.train()
        lam = mixmatch.mix_lambda(dm.alpha, loop.np_rng)
        inputs, targets = [x1, x2], [q_x, q_x]
        if bu is not None:
            inputs, targets = [x1, x2, u1, u2], [q_x, q_x, q_u, q_u]
        all_inputs, all_targets = torch.cat(inputs), torch.cat(targets)
        perm = torch.randperm(len(all_inputs), generator=gen).to(loop.device)
        mixed_inputs, mixed_targets = mixmatch.mixup(all_inputs, all_targets, lam=lam, perm=perm)
        with autocast(cfg, loop.device):
            logits = net(mixed_inputs).float()  # (2B + 2U, C)
        n_x = 2 * len(bx)
        zero = torch.zeros((), device=loop.device)
        lx = mixmatch.soft_cross_entropy(logits[:n_x], mixed_targets[:n_x])
        lu = mixmatch.mse_consistency(logits[n_x:], mixed_targets[n_x:]) if bu is not None else zero
        ramp = mixmatch.linear_rampup(
            epoch + i / num_iter, warmup_epochs=dm.warmup_epochs, length=dm.rampup_length
        )
        lam_u = dm.lambda_u * ramp
        penalty = mixmatch.uniform_prior_penalty(logits) if dm.prior_penalty else zero
        _check_finite(epoch, net_name, {"Lx": lx, "Lu": lu, "penalty": penalty})
        loss = lx + lam_u * lu + penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for key, value in (("lx", lx), ("lu", lu), ("penalty", penalty)):
            sums[key] += float(value.detach())
        images += len(all_inputs)
        if loop.progress:
            info = {"Lx": float(lx.detach()), "Lu": float(lu.detach())}
            loop.progress(f"train {net_name}", i, len(loader), info)
    out = {f"{k}_{net_name}": v / len(loader) for k, v in sums.items()}
    return {**out, "lambda_u_eff": lam_u}, images


def _check_finite(epoch: int, net_name: str, terms: dict[str, torch.Tensor]) -> None:
    bad = {k: float(v.detach()) for k, v in terms.items() if not torch.isfinite(v).all()}
    if bad:
        raise NonFiniteLossError(
            f"Non-finite loss at epoch {epoch} while training {net_name}: "
            + ", ".join(f"{k}={v}" for k, v in bad.items())
            + ". The last good checkpoint is untouched. Lower optim.lr, use run.precision=fp32, "
            "or check the data for corrupt images."
        )


# --------------------------------------------------------------------------------------------
# Setup: schedule, nets, RNG state, determinism, resume checks
# --------------------------------------------------------------------------------------------
def learning_rate(cfg: Config, epoch: int) -> float:
    drops = sum(epoch >= e for e in cfg.optim.lr_decay_epochs)
    return cfg.optim.lr * cfg.optim.lr_decay_factor**drops


def set_learning_rate(opts: list[torch.optim.Optimizer], cfg: Config, epoch: int) -> float:
    lr = learning_rate(cfg, epoch)
    for opt in opts:
        for group in opt.param_groups:
            group["lr"] = lr
    return lr


def build_nets(
    cfg: Config, prepared: PreparedData, device: torch.device, *, starting_weights: bool = True
) -> list[nn.Module]:
    """The two networks of `cfg.model` on `device` (channels_last when asked). With
    `starting_weights` they load model.pretrained / model.weights; a resumed run passes False
    (its checkpoint holds the weights, and the weights file may be gone by then)."""
    in_ch = prepared.dataset.train_images.shape[1]
    nets = [
        create_model(
            cfg.model.name,
            num_classes=prepared.dataset.num_classes,
            in_channels=in_ch,
            pretrained=cfg.model.pretrained and starting_weights,
            weights=cfg.model.weights if starting_weights else "",
        )
        for _ in range(2)
    ]
    return [
        n.to(device, memory_format=torch.channels_last) if cfg.run.channels_last else n.to(device)
        for n in nets
    ]


def configure_determinism(cfg: Config) -> None:
    if cfg.run.deterministic:
        # cuBLAS needs this set before its first use to be deterministic on CUDA.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True


RESUME_MAY_CHANGE = frozenset(
    {"run.epochs", "run.device", "run.keep_checkpoints", "data.root", "data.download"}
)


def check_resume(cfg: Config, state: TrainState, noisy: NoisyLabels) -> None:
    """Refuse to continue `state` under a different config or different noisy labels."""
    now, then = cfg.to_flat(), state.config
    changed = sorted(
        k for k in now if k not in RESUME_MAY_CHANGE and k in then and now[k] != then[k]
    )
    if changed:
        raise ResumeMismatchError(
            "The checkpoint belongs to a run with a different config: "
            + ", ".join(f"{k}: {then[k]!r} -> {now[k]!r}" for k in changed[:8])
            + ". Resume with the run's own config, or start a new run directory."
        )
    if state.noisy_labels_sha256 and state.noisy_labels_sha256 != noisy.sha256:
        raise ResumeMismatchError(
            f"The noisy labels changed since the checkpoint was written (file {noisy.path}). "
            "Resuming would train on different labels; restore the original label file or "
            "start anew."
        )


__all__ = [
    "Loop",
    "NET_NAMES",
    "NonFiniteLossError",
    "Progress",
    "ResumeMismatchError",
    "build_nets",
    "check_resume",
    "dividemix_epoch",
    "fit",
    "learning_rate",
    "warmup_epoch",
]
