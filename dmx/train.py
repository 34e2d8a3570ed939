"""The two-network DivideMix loop: warmup, eval-for-division, co-divide, train, test.

Read top to bottom: `prepare_data` builds the in-memory tensors (uint8 images on the device, noisy
labels, train / noisy-validation / test index sets); `fit` runs epochs and calls
`report(epoch, metrics, state)` after each one. The math lives in `dmx.divide` and `dmx.mixmatch`;
this module only orders it exactly as the reference's Train_cifar.py does (see DESIGN.md §3).

All randomness of the loop (shuffles, augmentation, mixup permutation) comes from one CPU
`torch.Generator`, Beta draws and GMM seeds from one numpy Generator; both are in the TrainState,
so a resumed run is the run that was never interrupted (bit-identical on CPU).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dmx import divide, metrics, mixmatch
from dmx.config import Config
from dmx.data import ImageDataset, load_dataset
from dmx.data.augment import normalize, random_crop_flip
from dmx.files import atomic_write_bytes, write_parquet_atomic
from dmx.labels import NoisyLabels, load_noisy_labels, make_or_load_noisy_labels
from dmx.models import create_model
from dmx.state import TrainState, save_checkpoint

Report = Callable[[int, dict[str, float], TrainState], None]
Progress = Callable[[str, int, int, dict[str, float]], None]
"""progress(phase, batch_index, num_batches, info): called after every training batch."""


class NonFiniteLossError(FloatingPointError, RuntimeError):
    """A NaN/inf loss: training stops, the last good checkpoint stays untouched. A RuntimeError
    too, so the CLI reports it as one message (exit 2) like every other error with a fix."""


class ResumeMismatchError(ValueError):
    """A checkpoint that belongs to a different run than the config asks for."""


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PreparedData:
    dataset: ImageDataset
    noisy: NoisyLabels
    train_idx: np.ndarray  # (N,) indices into the dataset's training set used for training
    val_idx: np.ndarray  # (V,) held-out part of the NOISY training set (selection objective)
    test_idx: np.ndarray  # (M,) indices into the test set


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU. Asking for CUDA without it is an error, not a
    silent fallback: a sweep that believes it has GPUs must not crawl on CPUs."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"run.device={name!r} but this machine has no usable CUDA device "
            f"(torch {torch.__version__}, cuda build: {torch.version.cuda}). "
            "Use run.device=auto or cpu, or run on a GPU node."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"run.device={name!r} but MPS is not available. Use auto or cpu.")
    return device


_SPLIT_STREAM, _TEST_STREAM = 0x5B117, 0x7E57  # stream tags: never collide with noise.seed


def _stratified_subset(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """`size` indices with the class proportions of `labels`, sorted (seeded)."""
    if size >= len(labels):
        return np.arange(len(labels))
    order = rng.permutation(len(labels))
    # Round-robin over classes in a shuffled order keeps proportions within one sample per class.
    by_class = [order[labels[order] == c] for c in np.unique(labels)]
    take = np.floor(np.array([len(b) for b in by_class]) * size / len(labels)).astype(int)
    remaining = size - take.sum()
    for c in rng.permutation(len(by_class))[:remaining]:
        take[c] += 1
    return np.sort(np.concatenate([b[:t] for b, t in zip(by_class, take)]))


def _load_labels(cfg: Config, dataset: ImageDataset) -> NoisyLabels:
    num_train = len(dataset.train_labels)
    if cfg.noise.label_file:
        return load_noisy_labels(
            Path(cfg.noise.label_file),
            expected_num_samples=num_train,
            num_classes=dataset.num_classes,
        )
    cache = Path(cfg.noise.cache_dir or Path(cfg.data.root) / "noisy_labels").expanduser()
    return make_or_load_noisy_labels(
        dataset,
        mode=cfg.noise.mode,
        rate=cfg.noise.rate,
        seed=cfg.noise.seed,
        exclude_true_class=cfg.noise.exclude_true_class,
        human_file=cfg.noise.human_file or None,
        human_key=cfg.noise.human_key or None,
        cache_dir=cache.resolve(),
    )


def prepare_noisy_labels(cfg: Config) -> Config:
    """Create (or reuse) the persisted noisy labels of `cfg` and return cfg pointing at the file by
    absolute path. A sweep driver calls this once so that every trial trains on the same labels."""
    dataset = load_dataset(cfg.data.dataset, Path(cfg.data.root), download=cfg.data.download)
    noisy = _load_labels(cfg, dataset)
    root = str(Path(cfg.data.root).expanduser().resolve())
    return cfg.with_overrides(
        {"noise.label_file": str(Path(noisy.path).resolve()), "data.root": root}
    )


def prepare_data(cfg: Config) -> PreparedData:
    dataset = load_dataset(cfg.data.dataset, Path(cfg.data.root), download=cfg.data.download)
    noisy = _load_labels(cfg, dataset)
    # Own streams for the split (the noise generator may use the same integer seed, and the same
    # stream would pick the same samples: the validation set would be exactly the flipped labels).
    split_rng = np.random.default_rng([cfg.data.split_seed, _SPLIT_STREAM])
    pool = np.arange(len(dataset.train_labels))
    if cfg.data.subset:
        pool = _stratified_subset(noisy.noisy_labels, cfg.data.subset, split_rng)
    # The validation split is drawn from the NOISY labels only: a user never has the truth.
    num_val = int(round(cfg.data.val_fraction * len(pool)))
    shuffled = split_rng.permutation(pool)
    val_idx, train_idx = np.sort(shuffled[:num_val]), np.sort(shuffled[num_val:])
    test_idx = np.arange(len(dataset.test_labels))
    if cfg.data.test_subset:
        test_idx = _stratified_subset(
            dataset.test_labels.numpy(),
            cfg.data.test_subset,
            np.random.default_rng([cfg.data.split_seed, _TEST_STREAM]),
        )
    if len(train_idx) < 2:
        raise ValueError(
            f"Only {len(train_idx)} training samples remain after data.subset={cfg.data.subset} "
            f"and data.val_fraction={cfg.data.val_fraction}; use a larger subset or a smaller "
            "fraction."
        )
    absent = set(range(dataset.num_classes)) - set(
        np.unique(noisy.noisy_labels[train_idx]).tolist()
    )
    if absent:
        # Not fatal (e.g. a tiny subset of CIFAR-100): the nets keep all outputs, but say so.
        import warnings

        warnings.warn(
            f"Classes {sorted(absent)[:10]}{'...' if len(absent) > 10 else ''} never occur among "
            "the noisy training labels: the model cannot learn them from labels. Check the noise "
            "file or use a larger data.subset.",
            stacklevel=2,
        )
    return PreparedData(dataset, noisy, train_idx, val_idx, test_idx)


# --------------------------------------------------------------------------------------------
# Small pieces of the loop
# --------------------------------------------------------------------------------------------
class _Batches:
    """Device tensors plus the train-time transform (uint8 -> augmented, normalised float)."""

    def __init__(self, cfg: Config, data: PreparedData, device: torch.device) -> None:
        ds = data.dataset
        self.device = device
        self.mean, self.std = ds.mean, ds.std
        self.padding, self.hflip = ds.crop_padding, ds.hflip
        self.channels_last = cfg.run.channels_last
        # uint8 on the device: 4x smaller than float, augmentation and normalisation per batch.
        self.train_x = ds.train_images[data.train_idx].to(device)  # (N, C, H, W) uint8
        self.noisy_y = torch.from_numpy(data.noisy.noisy_labels[data.train_idx]).to(device)  # (N,)
        self.true_y = data.noisy.true_labels[data.train_idx]  # (N,) numpy, metrics only
        self.val_x = ds.train_images[data.val_idx].to(device)
        self.val_y = torch.from_numpy(data.noisy.noisy_labels[data.val_idx]).to(device)
        self.test_x = ds.test_images[data.test_idx].to(device)
        self.test_y = ds.test_labels[data.test_idx].to(device)
        self.num_classes = ds.num_classes

    def _format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_view(self, images_u8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        aug = random_crop_flip(images_u8, padding=self.padding, hflip=self.hflip, generator=gen)
        return self._format(normalize(aug, self.mean, self.std))

    def plain_view(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self._format(normalize(images_u8, self.mean, self.std))


def _autocast(cfg: Config, device: torch.device):
    if cfg.run.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _index_batches(perm: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    """Consecutive slices of `perm`; the last may be short (as a DataLoader without drop_last).
    A final batch of ONE sample is merged into the previous one: BatchNorm in train mode cannot
    normalise a single sample (the reference would crash there)."""
    batches = list(torch.split(perm, batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches


def _check_finite(epoch: int, net_name: str, terms: dict[str, torch.Tensor]) -> None:
    bad = {k: float(v.detach()) for k, v in terms.items() if not torch.isfinite(v).all()}
    if bad:
        raise NonFiniteLossError(
            f"Non-finite loss at epoch {epoch} while training {net_name}: "
            + ", ".join(f"{k}={v}" for k, v in bad.items())
            + ". The last good checkpoint is untouched. Lower optim.lr, use run.precision=fp32, "
            "or check the data for corrupt images."
        )


@torch.no_grad()
def predict_logits(
    net: nn.Module, images_u8: torch.Tensor, batches: _Batches, cfg: Config, device: torch.device
) -> torch.Tensor:
    """(N, C) float32 logits of `net` in eval mode on un-augmented images."""
    net.eval()
    out = []
    for chunk in torch.split(images_u8, cfg.optim.eval_batch_size):
        with _autocast(cfg, device):
            out.append(net(batches.plain_view(chunk)).float())
    if not out:
        return torch.empty(0, batches.num_classes, device=device)
    return torch.cat(out)


def warmup_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: _Batches,
    cfg: Config,
    *,
    epoch: int,
    net_name: str,
    gen: torch.Generator,
    device: torch.device,
    progress: Progress | None,
) -> dict[str, float]:
    """Cross-entropy on the noisy labels (+ confidence penalty when configured), one pass."""
    net.train()
    n = len(batches.noisy_y)
    loader = _index_batches(torch.randperm(n, generator=gen), cfg.optim.warmup_batch_size)
    total, seen = 0.0, 0
    for i, idx in enumerate(loader):
        idx = idx.to(device)
        inputs = batches.train_view(batches.train_x[idx], gen)
        with _autocast(cfg, device):
            logits = net(inputs).float()  # (B, C)
        loss = F.cross_entropy(logits, batches.noisy_y[idx])
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
        if progress:
            progress(f"warmup {net_name}", i, len(loader), {"loss": float(loss.detach())})
    return {f"warmup_loss_{net_name}": total / max(seen, 1), "_images": seen}


def division_losses(
    net: nn.Module, batches: _Batches, cfg: Config, device: torch.device
) -> torch.Tensor:
    """(N,) per-sample CE of `net` (eval mode, un-augmented) against the noisy labels, min-max
    normalised to [0, 1] as the reference does before the GMM."""
    logits = predict_logits(net, batches.train_x, batches, cfg, device)
    losses = F.cross_entropy(logits, batches.noisy_y, reduction="none")
    return divide.normalize_losses(losses.cpu())


def _append_history(
    history: torch.Tensor | None, losses: torch.Tensor, window: int
) -> torch.Tensor:
    row = losses.reshape(1, -1).float()
    history = row if history is None else torch.cat([history, row])
    return history[-window:].clone()


def dividemix_epoch(
    net: nn.Module,
    peer: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: _Batches,
    cfg: Config,
    *,
    labeled_mask: np.ndarray,
    clean_prob: np.ndarray,
    epoch: int,
    net_name: str,
    gen: torch.Generator,
    np_rng: np.random.Generator,
    device: torch.device,
    progress: Progress | None,
) -> dict[str, float]:
    """Train `net` for one pass over the labelled set of the PEER's division (co-divide).

    Per batch: co-guess the unlabelled targets with both nets, co-refine the labelled targets with
    `net`, MixMatch everything with one permutation, and step on Lx + λ·Lu + prior penalty."""
    dm, bs = cfg.dividemix, cfg.optim.batch_size
    labeled = torch.from_numpy(np.flatnonzero(labeled_mask))
    unlabeled = torch.from_numpy(np.flatnonzero(~labeled_mask))
    w_all = torch.from_numpy(clean_prob.astype(np.float32)).to(device)  # (N,)
    sums = {"lx": 0.0, "lu": 0.0, "penalty": 0.0}
    info = {f"{k}_{net_name}": float("nan") for k in sums}
    if len(labeled) == 0:
        # Nothing the division trusts: skipping the step is the only choice that does not train
        # on labels the GMM called noisy. Reported as labeled_<peer> = 0 and a 0-batch epoch.
        return {**info, "_images": 0, f"skipped_{net_name}": 1.0}
    net.train()
    peer.eval()
    num_iter = len(labeled) // bs + 1  # the reference's count, used only by the λu ramp-up
    loader = _index_batches(labeled[torch.randperm(len(labeled), generator=gen)], bs)
    u_order, u_pos = None, 0
    images, lam_u = 0, 0.0
    for i, bx in enumerate(loader):
        bx = bx.to(device)
        bu = None
        if len(unlabeled):
            if u_order is None or u_pos >= len(u_order):  # the unlabelled loader cycles
                u_order, u_pos = unlabeled[torch.randperm(len(unlabeled), generator=gen)], 0
            bu = u_order[u_pos : u_pos + bs].to(device)
            u_pos += bs
        x1 = batches.train_view(batches.train_x[bx], gen)
        x2 = batches.train_view(batches.train_x[bx], gen)
        onehot = F.one_hot(batches.noisy_y[bx], batches.num_classes).float()  # (B, C)
        w = w_all[bx]  # (B,)
        with torch.no_grad(), _autocast(cfg, device):
            if dm.co_guess_eval_mode:
                net.eval()
            # Same order of forward passes as the reference (BatchNorm running stats see them).
            if bu is not None:
                u1 = batches.train_view(batches.train_x[bu], gen)
                u2 = batches.train_view(batches.train_x[bu], gen)
                q_u = mixmatch.co_guess(
                    net(u1).float(), net(u2).float(), peer(u1).float(), peer(u2).float(), T=dm.T
                )  # (U, C)
            q_x = mixmatch.co_refine(net(x1).float(), net(x2).float(), onehot, w, T=dm.T)  # (B, C)
            net.train()
        lam = mixmatch.mix_lambda(dm.alpha, np_rng)
        if bu is not None:
            all_inputs = torch.cat([x1, x2, u1, u2])
            all_targets = torch.cat([q_x, q_x, q_u, q_u])
        else:
            all_inputs, all_targets = torch.cat([x1, x2]), torch.cat([q_x, q_x])
        perm = torch.randperm(len(all_inputs), generator=gen).to(device)
        mixed_inputs, mixed_targets = mixmatch.mixup(all_inputs, all_targets, lam=lam, perm=perm)
        with _autocast(cfg, device):
            logits = net(mixed_inputs).float()  # (2B + 2U, C)
        n_x = 2 * len(bx)
        lx = mixmatch.soft_cross_entropy(logits[:n_x], mixed_targets[:n_x])
        lu = (
            mixmatch.mse_consistency(logits[n_x:], mixed_targets[n_x:])
            if bu is not None
            else torch.zeros((), device=device)
        )
        ramp = mixmatch.linear_rampup(
            epoch + i / num_iter, warmup_epochs=dm.warmup_epochs, length=dm.rampup_length
        )
        lam_u = dm.lambda_u * ramp
        penalty = (
            mixmatch.uniform_prior_penalty(logits)
            if dm.prior_penalty
            else torch.zeros((), device=device)
        )
        _check_finite(epoch, net_name, {"Lx": lx, "Lu": lu, "penalty": penalty})
        loss = lx + lam_u * lu + penalty
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sums["lx"] += float(lx.detach())
        sums["lu"] += float(lu.detach())
        sums["penalty"] += float(penalty.detach())
        images += len(all_inputs)
        if progress:
            progress(
                f"train {net_name}",
                i,
                len(loader),
                {"Lx": float(lx.detach()), "Lu": float(lu.detach())},
            )
    out = {f"{k}_{net_name}": v / len(loader) for k, v in sums.items()}
    return {**out, "lambda_u_eff": lam_u, "_images": images}


def learning_rate(cfg: Config, epoch: int) -> float:
    drops = sum(epoch >= e for e in cfg.optim.lr_decay_epochs)
    return cfg.optim.lr * cfg.optim.lr_decay_factor**drops


# --------------------------------------------------------------------------------------------
# RNG state
# --------------------------------------------------------------------------------------------
def _rng_state(gen: torch.Generator, np_rng: np.random.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {
        "loop": gen.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np_rng.bit_generator.state,
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(
    state: dict[str, Any], gen: torch.Generator, np_rng: np.random.Generator
) -> None:
    gen.set_state(state["loop"])
    torch.set_rng_state(state["torch"])
    np_rng.bit_generator.state = state["numpy"]
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _configure_determinism(cfg: Config) -> None:
    if cfg.run.deterministic:
        # cuBLAS needs this set before its first use to be deterministic on CUDA.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True


# --------------------------------------------------------------------------------------------
# fit
# --------------------------------------------------------------------------------------------
_RESUME_MAY_CHANGE = {
    "run.epochs",
    "run.device",
    "run.keep_checkpoints",
    "data.root",
    "data.download",
}


def _check_resume(cfg: Config, state: TrainState, noisy: NoisyLabels) -> None:
    now, then = cfg.to_flat(), state.config
    changed = sorted(
        k for k in now if k not in _RESUME_MAY_CHANGE and k in then and now[k] != then[k]
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


def _summary(history: list[dict[str, float]], current: dict[str, float]) -> dict[str, float]:
    accs = [h["test_acc"] for h in history] + [current["test_acc"]]
    s = metrics.summarize_accuracy(accs, last=10)
    return {"best_test_acc": s["best"], "last10_test_acc": s["last10"]}


def _build_nets(cfg: Config, data: PreparedData, device: torch.device) -> list[nn.Module]:
    in_ch = data.dataset.train_images.shape[1]
    nets = [
        create_model(cfg.model.name, num_classes=data.dataset.num_classes, in_channels=in_ch)
        for _ in range(2)
    ]
    return [
        n.to(device, memory_format=torch.channels_last) if cfg.run.channels_last else n.to(device)
        for n in nets
    ]


def fit(
    cfg: Config,
    *,
    report: Report | None = None,
    state: TrainState | None = None,
    run_dir: Path | None = None,
    progress: Progress | None = None,
) -> TrainState:
    """Run DivideMix from `state` (or from scratch) to `cfg.run.epochs` epochs.

    With `run_dir`, writes config.json, noisy_labels.parquet, a checkpoint and a metrics line at
    every epoch end (checkpoint first), and clean_probs.parquet at the end. `report` is called
    after each epoch's checkpoint with (epoch, metrics, state); the state's tensors are live
    references, valid for the duration of the call."""
    _configure_determinism(cfg)
    device = resolve_device(cfg.run.device)
    data = prepare_data(cfg)
    if state is not None:
        _check_resume(cfg, state, data.noisy)
    batches = _Batches(cfg, data, device)
    if run_dir is not None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "config.json", (cfg.to_json() + "\n").encode())
        if Path(data.noisy.path).resolve() != (run_dir / "noisy_labels.parquet").resolve():
            shutil.copyfile(data.noisy.path, run_dir / "noisy_labels.parquet")

    torch.manual_seed(cfg.run.seed)  # model init; everything later draws from gen / np_rng
    random.seed(cfg.run.seed)
    nets = _build_nets(cfg, data, device)
    opts = [
        torch.optim.SGD(
            n.parameters(),
            lr=cfg.optim.lr,
            momentum=cfg.optim.momentum,
            weight_decay=cfg.optim.weight_decay,
        )
        for n in nets
    ]
    gen = torch.Generator().manual_seed(cfg.run.seed)
    np_rng = np.random.default_rng(cfg.run.seed)
    if state is None:
        state = TrainState(config=cfg.to_flat())
    else:
        nets[0].load_state_dict(state.net1)
        nets[1].load_state_dict(state.net2)
        opts[0].load_state_dict(state.opt1)
        opts[1].load_state_dict(state.opt2)
        _set_rng_state(state.rng, gen, np_rng)
        state.config = cfg.to_flat()
    state.noisy_labels_path = str(data.noisy.path)
    state.noisy_labels_sha256 = data.noisy.sha256
    is_clean = batches.true_y == data.noisy.noisy_labels[data.train_idx]  # (N,) bool
    noise_rate = float(1.0 - is_clean.mean())  # realised on the training split
    window = cfg.dividemix.loss_history_window
    names = ("net1", "net2")

    for epoch in range(state.epoch, cfg.run.epochs):
        start = time.perf_counter()
        lr = learning_rate(cfg, epoch)
        for opt in opts:
            for group in opt.param_groups:
                group["lr"] = lr
        m: dict[str, float] = {"epoch": epoch, "lr": lr, "noise_rate": noise_rate}
        images = 0
        if epoch < cfg.dividemix.warmup_epochs:
            m["phase"] = 0
            for net, opt, name in zip(nets, opts, names):
                out = warmup_epoch(
                    net,
                    opt,
                    batches,
                    cfg,
                    epoch=epoch,
                    net_name=name,
                    gen=gen,
                    device=device,
                    progress=progress,
                )
                images += out.pop("_images")
                m.update(out)
        else:
            m["phase"] = 1
            # Eval for division: both nets are evaluated BEFORE either trains this epoch.
            histories = [state.loss_history1, state.loss_history2]
            probs, masks = [], []
            for k, net in enumerate(nets):
                histories[k] = _append_history(
                    histories[k], division_losses(net, batches, cfg, device), window
                )
                gmm_input = divide.history_input(histories[k], window=window)
                prob = divide.clean_probability(
                    gmm_input,
                    seed=int(np_rng.integers(2**31 - 1)),
                    max_iter=cfg.dividemix.gmm_max_iter,
                    tol=cfg.dividemix.gmm_tol,
                    reg_covar=cfg.dividemix.gmm_reg_covar,
                )
                mask = divide.co_divide(prob, p_threshold=cfg.dividemix.p_threshold)
                probs.append(prob)
                masks.append(mask)
                name = names[k]
                m[f"labeled_{name}"] = int(mask.sum())
                det = metrics.clean_detection(prob, mask, is_clean)
                m.update({f"{key}_{name}": float(v) for key, v in det.items()})
            state.loss_history1, state.loss_history2 = histories
            state.clean_prob1 = torch.from_numpy(probs[0])
            state.clean_prob2 = torch.from_numpy(probs[1])
            # Co-divide: each net trains on the division of its peer.
            for k in (0, 1):
                peer = 1 - k
                out = dividemix_epoch(
                    nets[k],
                    nets[peer],
                    opts[k],
                    batches,
                    cfg,
                    labeled_mask=masks[peer],
                    clean_prob=probs[peer],
                    epoch=epoch,
                    net_name=names[k],
                    gen=gen,
                    np_rng=np_rng,
                    device=device,
                    progress=progress,
                )
                images += out.pop("_images")
                m.update(out)
            n_train = len(is_clean)
            for k in (0, 1):
                if m[f"labeled_{names[k]}"] in (0, n_train):
                    which = "labelled" if m[f"labeled_{names[k]}"] == 0 else "unlabelled"
                    m[f"empty_{which}_{names[k]}"] = 1.0
        train_seconds = time.perf_counter() - start

        logits = [predict_logits(n, batches.test_x, batches, cfg, device) for n in nets]
        m["test_acc_net1"] = metrics.accuracy(logits[0], batches.test_y)
        m["test_acc_net2"] = metrics.accuracy(logits[1], batches.test_y)
        m["test_acc"] = metrics.accuracy(logits[0] + logits[1], batches.test_y)
        if len(batches.val_y):
            val = sum(predict_logits(n, batches.val_x, batches, cfg, device) for n in nets)
            m["val_acc"] = metrics.accuracy(val, batches.val_y)
        m.update(_summary(state.metrics_history, m))
        m["epoch_seconds"] = time.perf_counter() - start
        m["images_per_second"] = images / max(train_seconds, 1e-9)
        m = {k: float(v) for k, v in m.items()}

        state.epoch = epoch + 1
        state.net1, state.net2 = nets[0].state_dict(), nets[1].state_dict()
        state.opt1, state.opt2 = opts[0].state_dict(), opts[1].state_dict()
        state.rng = _rng_state(gen, np_rng)
        state.metrics_history.append(m)
        if run_dir is not None:
            save_checkpoint(state, run_dir / "checkpoints", keep=cfg.run.keep_checkpoints)
            _write_metrics(run_dir / "metrics.jsonl", state.metrics_history)
        if report is not None:
            report(epoch, m, state)

    if run_dir is not None:
        write_sample_report(
            run_dir / "clean_probs.parquet", nets, batches, data, cfg, device, state
        )
    return state


def _write_metrics(path: Path, history: list[dict[str, float]]) -> None:
    """Rewrite the whole file from the state's history: a resumed run never duplicates epochs."""
    text = "".join(json.dumps(h, sort_keys=True) + "\n" for h in history)
    atomic_write_bytes(path, text.encode())


def write_sample_report(
    path: Path,
    nets: list[nn.Module],
    batches: _Batches,
    data: PreparedData,
    cfg: Config,
    device: torch.device,
    state: TrainState,
) -> None:
    """Per-sample parquet of the final division and ensemble prediction (the label-issue input).

    Clean probabilities come from a fresh evaluation of the FINAL nets (the GMM of each net on its
    own normalised losses, window as in training), so the file describes the model that was saved.
    """
    import pyarrow as pa

    seed = int(np.random.default_rng(cfg.run.seed + state.epoch).integers(2**31 - 1))
    cols: dict[str, Any] = {
        "index": data.train_idx.astype(np.int64),
        "given_label": data.noisy.noisy_labels[data.train_idx].astype(np.int64),
        "true_label": data.noisy.true_labels[data.train_idx].astype(np.int64),
    }
    histories = [state.loss_history1, state.loss_history2]
    window = cfg.dividemix.loss_history_window
    for k, net in enumerate(nets):
        losses = division_losses(net, batches, cfg, device)
        hist = _append_history(histories[k], losses, window)
        prob = divide.clean_probability(
            divide.history_input(hist, window=window),
            seed=seed,
            max_iter=cfg.dividemix.gmm_max_iter,
            tol=cfg.dividemix.gmm_tol,
            reg_covar=cfg.dividemix.gmm_reg_covar,
        )
        cols[f"clean_prob_net{k + 1}"] = np.asarray(prob, dtype=np.float64)
        cols[f"loss_net{k + 1}"] = losses.numpy().astype(np.float32)
    probs = (
        sum(
            torch.softmax(predict_logits(n, batches.train_x, batches, cfg, device), dim=1)
            for n in nets
        )
        / 2
    )  # (N, C)
    probs = probs.cpu()
    cols["pred_label"] = probs.argmax(1).numpy().astype(np.int64)
    given = torch.from_numpy(cols["given_label"])
    cols["pred_prob_given"] = probs.gather(1, given[:, None]).squeeze(1).numpy().astype(np.float64)
    write_parquet_atomic(pa.table(cols), path)


def sample_report_from_checkpoint(
    checkpoint_dir: Path, path: Path | None = None, *, device: str | None = None
) -> Path:
    """Write clean_probs.parquet (as `fit` does at the end) for the newest checkpoint in
    `checkpoint_dir`: for a run stopped before its last epoch, such as a sweep trial stopped
    early by ASHA (Tune's `checkpoint_*` folder) or an interrupted `dmx train`. The checkpoint's
    own config is used (its data folder must exist here); `device` overrides run.device.
    Returns the path written (default: CHECKPOINT_DIR/clean_probs.parquet)."""
    from dmx.state import load_latest_checkpoint

    checkpoint_dir = Path(checkpoint_dir)
    state = load_latest_checkpoint(checkpoint_dir)
    if state is None:
        raise FileNotFoundError(f"{checkpoint_dir} holds no dmx checkpoint (ckpt-*.pt).")
    cfg = Config.from_flat(state.config).with_overrides(
        {"data.download": False, **({"run.device": device} if device else {})}
    )
    dev = resolve_device(cfg.run.device)
    data = prepare_data(cfg)
    _check_resume(cfg, state, data.noisy)  # the same noisy labels as the checkpoint was trained on
    nets = _build_nets(cfg, data, dev)
    nets[0].load_state_dict(state.net1)
    nets[1].load_state_dict(state.net2)
    out = Path(path) if path is not None else checkpoint_dir / "clean_probs.parquet"
    write_sample_report(out, nets, _Batches(cfg, data, dev), data, cfg, dev, state)
    return out


__all__ = [
    "NonFiniteLossError",
    "PreparedData",
    "ResumeMismatchError",
    "division_losses",
    "dividemix_epoch",
    "fit",
    "learning_rate",
    "predict_logits",
    "prepare_data",
    "prepare_noisy_labels",
    "resolve_device",
    "sample_report_from_checkpoint",
    "warmup_epoch",
]
