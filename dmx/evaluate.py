"""Everything the loop computes with a net in eval mode on un-augmented images: logits, the
division of one net (per-sample loss -> loss history -> GMM -> clean probability -> labelled
mask), the accuracies of every evaluation split, and the final per-sample report.

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
from dmx.data.views import CLEAN_VAL, NOISY_VAL, TEST, TRAIN, TrainData
from dmx.prepare import PreparedData
from dmx.state import TrainState

TOP5_MIN_CLASSES = 6  # top-5 accuracy is reported where it says something: more than 5 classes


def autocast(cfg: Config, device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast when `run.precision=bf16`, else nothing (fp32, the reference)."""
    if cfg.run.precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def eval_batch_size(cfg: Config, device: torch.device) -> int:
    """optim.eval_batch_size, or by device when it is 0 (auto): 64 on a CPU, 1024 on CUDA."""
    if cfg.optim.eval_batch_size:
        return cfg.optim.eval_batch_size
    return 1024 if device.type == "cuda" else 64


def predict_logits(
    net: nn.Module, data: TrainData, split: str, cfg: Config, idx: torch.Tensor | None = None
) -> torch.Tensor:
    """(M, C) float32 logits of `net` in eval mode on the un-augmented images of `split` (rows
    `idx` of it, default all), on the data's device."""
    net.eval()
    out = []
    with torch.inference_mode():
        for x in data.eval_batches(split, batch_size=eval_batch_size(cfg, data.device), idx=idx):
            with autocast(cfg, data.device):
                out.append(net(x).float())
    if not out:
        return torch.empty(0, data.num_classes, device=data.device)
    return torch.cat(out).clone()  # a normal tensor: usable outside inference mode


def division_losses(
    net: nn.Module, data: TrainData, cfg: Config, idx: torch.Tensor | None = None
) -> torch.Tensor:
    """(M,) per-sample CE of `net` (eval mode, un-augmented) against the noisy labels of the
    training samples `idx` (default all), min-max normalised to [0, 1] as the reference does
    before the GMM; on the CPU."""
    logits = predict_logits(net, data, TRAIN, cfg, idx)
    labels = data.noisy_y if idx is None else data.noisy_y[idx.to(data.device)]
    losses = F.cross_entropy(logits, labels, reduction="none")
    return divide.normalize_losses(losses.cpu())


def append_history(history: torch.Tensor | None, losses: torch.Tensor, window: int) -> torch.Tensor:
    """(k, N) loss history with `losses` appended, keeping the last `window` rows."""
    row = losses.reshape(1, -1).float()
    history = row if history is None else torch.cat([history, row])
    return history[-window:].clone()


@dataclass(frozen=True)
class Division:
    """One net's division of (a subset of) the training set: what its PEER trains on."""

    indices: np.ndarray  # (M,) positions in the training split that were divided
    losses: torch.Tensor  # (M,) normalised per-sample losses of this epoch
    history: torch.Tensor | None  # (k, N) the net's loss history (None: divided a subset)
    clean_prob: np.ndarray  # (M,) float64 posterior of the clean component
    labeled_mask: np.ndarray  # (M,) bool, clean_prob > p_threshold


def divide_net(
    net: nn.Module,
    history: torch.Tensor | None,
    data: TrainData,
    cfg: Config,
    *,
    seed: int,
    subset: np.ndarray | None = None,
) -> Division:
    """Losses -> history -> GMM (seeded) -> clean probability -> labelled mask, over the whole
    training split or, with `subset` (M,) (class-balanced resampling), over those samples only
    (then without a history: the samples differ from epoch to epoch)."""
    dm = cfg.dividemix
    idx = None if subset is None else torch.from_numpy(subset)
    losses = division_losses(net, data, cfg, idx)
    if subset is None:
        history = append_history(history, losses, dm.loss_history_window)
        gmm_input = divide.history_input(history, window=dm.loss_history_window)
        indices = np.arange(len(data))
    else:
        history, gmm_input, indices = None, losses, subset
    prob = divide.clean_probability(
        gmm_input,
        seed=seed,
        max_iter=dm.gmm_max_iter,
        tol=dm.gmm_tol,
        reg_covar=dm.gmm_reg_covar,
    )
    mask = divide.co_divide(prob, p_threshold=dm.p_threshold)
    return Division(indices, losses, history, prob, mask)


def split_metrics(
    logits: torch.Tensor, labels: torch.Tensor, name: str, num_classes: int
) -> dict[str, float]:
    """`{name}_acc` (top-1, %) and, with more than 5 classes, `{name}_top5`."""
    out = {f"{name}_acc": metrics.accuracy(logits, labels)}
    if num_classes >= TOP5_MIN_CLASSES:
        out[f"{name}_top5"] = metrics.topk_accuracy(logits, labels, 5)
    return out


def eval_metrics(nets: list[nn.Module], data: TrainData, cfg: Config) -> dict[str, float]:
    """Accuracies of the ensemble (sum of the two nets' logits) on every evaluation split:
    `test_acc` (+ each net's), `val_acc` on the noisy validation split (the sweep objective),
    `clean_val_acc` (+ each net's: best-checkpoint selection) and a dataset's extra test sets
    (`imagenet_acc`, ...); top-5 beside top-1 where there are more than 5 classes."""
    out: dict[str, float] = {}
    for split in data.eval_splits:
        logits = [predict_logits(n, data, split, cfg) for n in nets]
        labels = data.eval_labels(split)
        out.update(split_metrics(logits[0] + logits[1], labels, split, data.num_classes))
        if split in (TEST, CLEAN_VAL):
            for k, lg in enumerate(logits, start=1):
                out[f"{split}_acc_net{k}"] = metrics.accuracy(lg, labels)
    out.pop(f"{NOISY_VAL}_top5", None)  # the objective is top-1 on the noisy labels
    return out


def sample_table(
    nets: list[nn.Module], state: TrainState, data: TrainData, prepared: PreparedData, cfg: Config
) -> pa.Table:
    """Per-sample table of the final division and ensemble prediction (the label-issue input,
    written as clean_probs.parquet by the reporters). `true_label` is -1 where nobody knows it;
    `given_class`, `true_class` and `pred_class` are the class names of the three labels.

    Clean probabilities come from a fresh division of the FINAL nets over the whole training split
    (each net's GMM on its own normalised losses appended to its history, window as in training,
    one seed for both, drawn from run.seed and the epoch, not from the loop's generators), so the
    table describes the model that was saved and computing it changes nothing of the run."""
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
    # The ensemble as the test and `dmx predict` see it: softmax of the sum of the nets' logits.
    probs = torch.softmax(sum(predict_logits(n, data, TRAIN, cfg) for n in nets), dim=1).cpu()
    cols["pred_label"] = probs.argmax(1).numpy().astype(np.int64)
    given = torch.from_numpy(cols["given_label"])
    cols["pred_prob_given"] = probs.gather(1, given[:, None]).squeeze(1).numpy().astype(np.float64)
    names = pa.array(prepared.dataset.class_names, type=pa.string())
    for kind in ("given", "true", "pred"):  # class names beside the indices (dictionary-coded)
        codes = cols[f"{kind}_label"]
        cols[f"{kind}_class"] = pa.DictionaryArray.from_arrays(
            pa.array(codes, type=pa.int32(), mask=codes < 0), names
        )
    return pa.table(cols)


__all__ = [
    "Division",
    "TOP5_MIN_CLASSES",
    "append_history",
    "autocast",
    "divide_net",
    "division_losses",
    "eval_batch_size",
    "eval_metrics",
    "predict_logits",
    "sample_table",
    "split_metrics",
]
