"""Everything the loop computes with a net in eval mode on un-augmented images: logits, the
division of one net (per-sample loss -> loss history -> GMM -> clean probability -> labelled
mask), the test / validation accuracies, and the final per-sample report.

The division is written once, here: the loop divides with it every DivideMix epoch, and the
per-sample report at the end runs the same sequence on the final nets.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from dmx import divide, metrics
from dmx.config import Config
from dmx.prepare import DeviceData, PreparedData
from dmx.state import TrainState


def autocast(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast when `run.precision=bf16`, else nothing (fp32, the reference)."""
    if cfg.run.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_logits(
    net: nn.Module, images_u8: torch.Tensor, data: DeviceData, cfg: Config
) -> torch.Tensor:
    """(N, C) float32 logits of `net` in eval mode on un-augmented images."""
    net.eval()
    out = []
    for chunk in torch.split(images_u8, cfg.optim.eval_batch_size):
        with autocast(cfg, data.device):
            out.append(net(data.plain_view(chunk)).float())
    if not out:
        return torch.empty(0, data.num_classes, device=data.device)
    return torch.cat(out)


def division_losses(net: nn.Module, data: DeviceData, cfg: Config) -> torch.Tensor:
    """(N,) per-sample CE of `net` (eval mode, un-augmented) against the noisy labels, min-max
    normalised to [0, 1] as the reference does before the GMM."""
    logits = predict_logits(net, data.train_x, data, cfg)
    losses = F.cross_entropy(logits, data.noisy_y, reduction="none")
    return divide.normalize_losses(losses.cpu())


def append_history(history: torch.Tensor | None, losses: torch.Tensor, window: int) -> torch.Tensor:
    """(k, N) loss history with `losses` appended, keeping the last `window` rows."""
    row = losses.reshape(1, -1).float()
    history = row if history is None else torch.cat([history, row])
    return history[-window:].clone()


@dataclass(frozen=True)
class Division:
    """One net's division of the training set: what its PEER trains on (co-divide)."""

    losses: torch.Tensor  # (N,) normalised per-sample losses of this epoch
    history: torch.Tensor  # (k, N) the net's loss history including this epoch
    clean_prob: np.ndarray  # (N,) float64 posterior of the clean component
    labeled_mask: np.ndarray  # (N,) bool, clean_prob > p_threshold


def divide_net(
    net: nn.Module, history: torch.Tensor | None, data: DeviceData, cfg: Config, *, seed: int
) -> Division:
    """Losses -> history -> GMM (seeded) -> clean probability -> labelled mask."""
    dm = cfg.dividemix
    losses = division_losses(net, data, cfg)
    history = append_history(history, losses, dm.loss_history_window)
    prob = divide.clean_probability(
        divide.history_input(history, window=dm.loss_history_window),
        seed=seed,
        max_iter=dm.gmm_max_iter,
        tol=dm.gmm_tol,
        reg_covar=dm.gmm_reg_covar,
    )
    mask = divide.co_divide(prob, p_threshold=dm.p_threshold)
    return Division(losses, history, prob, mask)


def eval_metrics(nets: list[nn.Module], data: DeviceData, cfg: Config) -> dict[str, float]:
    """Test accuracy of each net and of the ensemble (sum of logits), and the ensemble's accuracy
    on the noisy validation split when there is one (the sweep objective)."""
    logits = [predict_logits(n, data.test_x, data, cfg) for n in nets]
    out = {
        "test_acc_net1": metrics.accuracy(logits[0], data.test_y),
        "test_acc_net2": metrics.accuracy(logits[1], data.test_y),
        "test_acc": metrics.accuracy(logits[0] + logits[1], data.test_y),
    }
    if len(data.val_y):
        val = sum(predict_logits(n, data.val_x, data, cfg) for n in nets)
        out["val_acc"] = metrics.accuracy(val, data.val_y)
    return out


def sample_table(
    nets: list[nn.Module], state: TrainState, data: DeviceData, prepared: PreparedData, cfg: Config
) -> pa.Table:
    """Per-sample table of the final division and ensemble prediction (the label-issue input,
    written as clean_probs.parquet by the reporters).

    Clean probabilities come from a fresh division of the FINAL nets (each net's GMM on its own
    normalised losses appended to its history, window as in training, one seed for both, drawn
    from run.seed and the epoch, not from the loop's generators), so the table describes the
    model that was saved and computing it changes nothing of the run."""
    seed = int(np.random.default_rng(cfg.run.seed + state.epoch).integers(2**31 - 1))
    histories = [state.loss_history1, state.loss_history2]
    train_idx = prepared.train_idx
    cols: dict[str, np.ndarray] = {
        "index": train_idx.astype(np.int64),
        "given_label": prepared.noisy.noisy_labels[train_idx].astype(np.int64),
        "true_label": prepared.noisy.true_labels[train_idx].astype(np.int64),
    }
    for k, (net, history) in enumerate(zip(nets, histories)):
        div = divide_net(net, history, data, cfg, seed=seed)
        cols[f"clean_prob_net{k + 1}"] = np.asarray(div.clean_prob, dtype=np.float64)
        cols[f"loss_net{k + 1}"] = div.losses.numpy().astype(np.float32)
    probs = sum(torch.softmax(predict_logits(n, data.train_x, data, cfg), dim=1) for n in nets)
    probs = (probs / 2).cpu()  # (N, C)
    cols["pred_label"] = probs.argmax(1).numpy().astype(np.int64)
    given = torch.from_numpy(cols["given_label"])
    cols["pred_prob_given"] = probs.gather(1, given[:, None]).squeeze(1).numpy().astype(np.float64)
    return pa.table(cols)


__all__ = [
    "Division",
    "append_history",
    "autocast",
    "divide_net",
    "division_losses",
    "predict_logits",
    "sample_table",
    "eval_metrics",
]
