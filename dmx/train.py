"""The two-network DivideMix loop: warmup, divide, co-divide, train each net, evaluate, report.

`fit` reads top to bottom as the reference's Train_cifar.py orders one epoch (DESIGN.md §3). The
epochs of one net are in `dmx.steps`, the math in `dmx.divide` and `dmx.mixmatch`, the eval-mode
passes in `dmx.evaluate`, the data in `dmx.prepare` / `dmx.data`; results go to a
`dmx.reporting.Reporter` (this module writes no files). The recipe differences of the real-world
benchmarks are config fields, not other loops: class-balanced resampling per epoch
(`dividemix.resample`), the labelled-only MixMatch (`dividemix.mix_labeled_only`), best
clean-validation checkpoints (`run.best_on_clean_val`), the peer's start-of-epoch copy
(`dividemix.peer_snapshot`).

All randomness of the loop (shuffles, subsets, in-memory augmentation, mixup permutation) comes
from one CPU `torch.Generator`, Beta draws and GMM seeds from one numpy Generator; both are in
the TrainState, so a resumed run is the run that was never interrupted (bit-identical on CPU).
"""

from __future__ import annotations

import copy
import os
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dmx import fast, metrics
from dmx.batches import balanced_subset, trains_on_one_sample
from dmx.config import Config
from dmx.data.views import CLEAN_VAL, TEST, TrainData
from dmx.evaluate import (
    Division,
    divide_net,
    eval_metrics,
    predict_logits,
    sample_table,
    split_metrics,
)
from dmx.labels import NoisyLabels
from dmx.models import create_model
from dmx.prepare import PreparedData, load_train_data, prepare_data, resolve_device
from dmx.reporting import Reporter
from dmx.state import TrainState, rng_state, set_rng_state
from dmx.steps import NET_NAMES, Loop, NonFiniteLossError, Progress, dividemix_epoch, warmup_epoch


class ResumeMismatchError(ValueError):
    """A checkpoint that belongs to a different run than the config asks for."""


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------
@dataclass
class Session:
    """One run, set up: the config as asked (`cfg`, what checkpoints record) and as run
    (`loop.cfg`: fast mode may turn on channels_last / bf16), the data, nets, optimisers and the
    state to continue from."""

    cfg: Config
    prepared: PreparedData
    data: TrainData
    nets: list[nn.Module]
    opts: list[torch.optim.Optimizer]
    loop: Loop
    state: TrainState
    noise: dict[str, float]  # the realised noise rate of the training split (where known)


def setup(
    cfg: Config, *, state: TrainState | None = None, progress: Progress | None = None
) -> Session:
    """Everything a run needs before its first epoch: "auto" fields resolved, determinism set,
    data prepared (and a resumed `state` checked against it), nets built (fast mode: compiled)."""
    cfg = cfg.resolved()
    configure_determinism(cfg)
    device = resolve_device(cfg.run.device)
    plan = fast.plan_for(device) if cfg.run.fast else None
    prepared = prepare_data(cfg)
    if state is not None:
        check_resume(cfg, state, prepared.noisy)
    run_cfg = fast.run_config(cfg, plan, channels=prepared.dataset.channels)  # fast: + options
    data = load_train_data(run_cfg, prepared, device)
    nets, opts, loop, state = _start(run_cfg, prepared, data, state, progress)
    state.config = cfg.to_flat()  # the config as asked: a resume derives the same plan
    fast.compile_nets(nets, plan)
    return Session(cfg, prepared, data, nets, opts, loop, state, noise_metrics(data))


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
    s = setup(cfg, state=state, progress=progress)
    report = reporter or Reporter()
    report.start(s.cfg, s.prepared, s.state)
    for epoch in range(s.state.epoch, s.cfg.run.epochs):
        run_epoch(s, epoch)
        report.epoch_end(epoch, s.state.metrics_history[-1], s.state)
    if reporter is not None:  # the per-sample table costs two eval passes: only when wanted
        reporter.run_end(s.state, sample_table(s.nets, s.state, s.data, s.prepared, s.loop.cfg))
    return s.state


def run_epoch(s: Session, epoch: int) -> dict[str, float]:
    """One epoch of the run: warmup, or divide -> co-divide -> train each net; then evaluate.
    The state then holds the finished epoch (`state.epoch == epoch + 1`) and its metrics."""
    cfg, nets, opts, state = s.loop.cfg, s.nets, s.opts, s.state
    start = time.perf_counter()
    m: dict[str, float] = {"epoch": epoch, "lr": set_learning_rate(opts, cfg, epoch)}
    m.update(s.noise)
    if epoch < cfg.dividemix.warmup_epochs:
        m["phase"] = 0
        images = sum(
            _add(m, warmup_epoch(net, opt, s.loop, epoch=epoch, net_id=k))
            for k, (net, opt) in enumerate(zip(nets, opts))
        )
    else:
        m["phase"] = 1
        # Eval for division: both nets divide BEFORE either trains this epoch.
        divisions = divide_nets(s, m)
        # Co-divide: each net trains on the division of its peer; net1 first, so net2's peer is
        # the net1 of this epoch's update (or its start-of-epoch copy: peer_snapshot).
        peer_of_net2 = copy.deepcopy(nets[0]) if cfg.dividemix.peer_snapshot else nets[0]
        images = sum(
            _add(
                m,
                dividemix_epoch(
                    net, peer, opts[k], s.loop, division=divisions[1 - k], epoch=epoch, net_id=k
                ),
            )  # fmt: skip
            for k, (net, peer) in enumerate([(nets[0], nets[1]), (nets[1], peer_of_net2)])
        )
    train_seconds = time.perf_counter() - start

    m.update(eval_metrics(nets, s.data, cfg))
    if cfg.run.best_on_clean_val:
        _keep_best(state, nets, m)
        if epoch == cfg.run.epochs - 1:
            m.update(final_test(state, nets, s.loop))
    m.update(_summary(state.metrics_history, m))
    m["epoch_seconds"] = time.perf_counter() - start
    m["images_per_second"] = images / max(train_seconds, 1e-9)
    m = {k: float(v) for k, v in m.items()}
    _snapshot(state, epoch + 1, nets, opts, s.loop, m)
    return m


def _add(m: dict[str, float], result: tuple[dict[str, float], int]) -> int:
    """Merge an epoch function's metrics into `m`; return its image count."""
    m.update(result[0])
    return result[1]


def divide_nets(s: Session, m: dict[str, float]) -> list[Division]:
    """Each net's division (both before either trains), kept in the state, with their metrics
    in `m` (labelled counts, clean detection, empty-split flags)."""
    divisions = [_divide(net, k, s.state, s.loop) for k, net in enumerate(s.nets)]
    _record_divisions(s.state, m, divisions, s.data)
    m.update(_empty_split_flags(m, divisions))
    return divisions


def _start(
    cfg: Config,
    prepared: PreparedData,
    data: TrainData,
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
    if not loop.single_sample_ok and cfg.optim.warmup_batch_size == 1:
        # Every warmup batch would be one sample: nothing to merge it with.
        raise ValueError(
            f"optim.warmup_batch_size=1: {cfg.model.name} cannot take a train-mode step on one "
            "sample (its BatchNorm would see one value per channel); use 2 or more."
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


def noise_metrics(data: TrainData) -> dict[str, float]:
    """The realised noise rate of the training split (%), where the truth is known at all."""
    known = data.true_y >= 0
    if not known.any():
        return {}
    noisy = data.noisy_y.cpu().numpy()
    return {"noise_rate": 100.0 * float(np.mean(noisy[known] != data.true_y[known]))}


def _divide(net: nn.Module, k: int, state: TrainState, loop: Loop) -> Division:
    """Net k's division: of the whole training split with its loss history, or, with
    dividemix.resample=balanced, of a fresh class-balanced subset (the reference's Clothing1M)."""
    cfg, data = loop.cfg, loop.data
    subset = None
    if cfg.dividemix.resample == "balanced":
        size = cfg.dividemix.num_batches * cfg.optim.batch_size
        subset = balanced_subset(data.noisy_y, size, data.num_classes, loop.gen)
        subset = np.sort(subset.numpy())  # in file order: a streaming eval pass reads ahead
    history = (state.loss_history1, state.loss_history2)[k]
    seed = int(loop.np_rng.integers(2**31 - 1))
    return divide_net(net, history, data, cfg, seed=seed, subset=subset)


def _record_divisions(
    state: TrainState, m: dict[str, float], divisions: list[Division], data: TrainData
) -> None:
    """Keep the divisions in the state (histories, clean probabilities over the training split,
    NaN for samples not divided) and their metrics (clean detection where the truth is known)."""
    n = len(data)
    state.loss_history1, state.loss_history2 = (d.history for d in divisions)
    probs = []
    noisy = data.noisy_y.cpu().numpy()
    for name, div in zip(NET_NAMES, divisions):
        full = np.full(n, np.nan)
        full[div.indices] = div.clean_prob
        probs.append(torch.from_numpy(full))
        m[f"labeled_{name}"] = int(div.labeled_mask.sum())
        true = data.true_y[div.indices]
        known = true >= 0
        if known.any():
            is_clean = true[known] == noisy[div.indices][known]
            det = metrics.clean_detection(div.clean_prob[known], div.labeled_mask[known], is_clean)
            m[f"auc_{name}"] = det["auc"]
            m[f"precision_{name}"] = 100.0 * det["precision"]
            m[f"recall_{name}"] = 100.0 * det["recall"]
    state.clean_prob1, state.clean_prob2 = probs


def _empty_split_flags(m: dict[str, float], divisions: list[Division]) -> dict[str, float]:
    """`empty_labelled_netK` / `empty_unlabelled_netK` = 1 when net K's division put every
    sample on one side (the reference would crash; dmx reports it and goes on)."""
    flags = {}
    for name, div in zip(NET_NAMES, divisions):
        if m[f"labeled_{name}"] in (0, len(div.indices)):
            which = "labelled" if m[f"labeled_{name}"] == 0 else "unlabelled"
            flags[f"empty_{which}_{name}"] = 1.0
    return flags


def _keep_best(state: TrainState, nets: list[nn.Module], m: dict[str, float]) -> None:
    """run.best_on_clean_val: each net's weights of its best clean-validation epoch (a tie keeps
    the earlier, as the reference's `acc > best_acc`)."""
    for k, net in enumerate(nets):
        acc = m.get(f"{CLEAN_VAL}_acc_net{k + 1}")
        if acc is None:
            raise ValueError(
                "run.best_on_clean_val=true needs a dataset with a clean validation split "
                "(e.g. Clothing1M's, or data.val_root of a folder dataset)."
            )
        if acc > state.best_clean_val[k]:
            state.best_clean_val[k] = acc
            best = {key: v.detach().clone() for key, v in net.state_dict().items()}
            if k == 0:
                state.best_net1 = best
            else:
                state.best_net2 = best
        m[f"best_clean_val_acc_net{k + 1}"] = state.best_clean_val[k]


def final_test(state: TrainState, nets: list[nn.Module], loop: Loop) -> dict[str, float]:
    """Test accuracy of the two best clean-validation nets as an ensemble (`final_test_acc`,
    `final_test_top5`), on copies: the nets trained on stay as they are."""
    best = []
    for net, weights in zip(nets, (state.best_net1, state.best_net2)):
        copy_ = copy.deepcopy(net)
        copy_.load_state_dict(weights)
        best.append(copy_)
    data, cfg = loop.data, loop.cfg
    if TEST not in data.eval_splits:
        return {}
    logits = sum(predict_logits(n, data, TEST, cfg) for n in best)
    return split_metrics(logits, data.eval_labels(TEST), "final_test", data.num_classes)


def _summary(history: list[dict[str, float]], current: dict[str, float]) -> dict[str, float]:
    if "test_acc" not in current:
        return {}
    accs = [h["test_acc"] for h in history if "test_acc" in h] + [current["test_acc"]]
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
# Setup: schedule, nets, determinism, resume checks
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
    nets = [
        create_model(
            cfg.model.name,
            num_classes=prepared.dataset.num_classes,
            in_channels=prepared.dataset.in_channels,
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
    if cfg.run.fast and resolve_device(cfg.run.device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # fast mode: the fastest kernels per shape
        return
    if cfg.run.deterministic:
        # cuBLAS needs this set before its first use to be deterministic on CUDA.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True


RESUME_MAY_CHANGE = frozenset(
    {
        "run.epochs",
        "run.device",
        "run.keep_checkpoints",
        "data.root",
        "data.download",
        "data.num_workers",  # the streaming path's results do not depend on it
    }
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
    "Session",
    "build_nets",
    "check_resume",
    "divide_nets",
    "dividemix_epoch",
    "final_test",
    "fit",
    "learning_rate",
    "noise_metrics",
    "run_epoch",
    "setup",
    "warmup_epoch",
]
