"""The trained DivideMix ensemble as one model: uint8 images in, class logits out.

The interface the MLflow side (`dmx.tracking.models.log_ensemble_model`) and the sweep driver use:

    ensemble_from_checkpoint(checkpoint_dir, *, device="cpu") -> (model, input_example)
        model: an `nn.Module` in eval mode, forward((B, C, H, W) uint8) -> (B, K) float32 logits
               (the sum of the two nets' logits, as the reference tests), with the evaluation
               preprocessing inside (`x / 255`, per-channel mean / std, as
               `dmx.data.augment.normalize`) and attributes `class_names` (K,) and
               `image_shape` (C, H, W);
        input_example: (2, C, H, W) uint8, two test images of the checkpoint's dataset.

A fuller `dmx.ensemble.Ensemble` (for `dmx export`) is being written elsewhere; it can replace the
class below as long as it keeps this function's contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn


class EnsembleClassifier(nn.Module):
    """Two DivideMix nets and their evaluation preprocessing: uint8 (B, C, H, W) -> (B, K)."""

    def __init__(
        self,
        net1: nn.Module,
        net2: nn.Module,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        class_names: Sequence[str],
        image_shape: Sequence[int],
    ) -> None:
        super().__init__()
        self.net1, self.net2 = net1, net2
        c = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))
        self.class_names = tuple(class_names)
        self.image_shape = tuple(int(d) for d in image_shape)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() / 255.0 - self.mean) / self.std  # = dmx.data.augment.normalize
        return self.net1(x).float() + self.net2(x).float()  # (B, K): the reference's ensemble


def ensemble_from_checkpoint(
    checkpoint_dir: str | Path, *, device: str = "cpu"
) -> tuple[EnsembleClassifier, np.ndarray]:
    """The ensemble of the newest checkpoint in `checkpoint_dir` (a run's `checkpoints/` or a
    sweep trial's `checkpoint_*` folder) and an input example. The checkpoint's own config names
    the dataset (read from its `data.root` for the preprocessing, class names and example) and
    the model."""
    from dmx.config import Config
    from dmx.data import load_dataset
    from dmx.models import create_model
    from dmx.state import load_latest_checkpoint

    state = load_latest_checkpoint(Path(checkpoint_dir))
    if state is None:
        raise FileNotFoundError(f"{checkpoint_dir} holds no dmx checkpoint (ckpt-*.pt).")
    cfg = Config.from_flat(state.config)
    data = load_dataset(cfg.data.dataset, cfg.data.root, download=False)
    shape = tuple(data.train_images.shape[1:])
    nets = []
    for weights in (state.net1, state.net2):
        net = create_model(cfg.model.name, num_classes=data.num_classes, in_channels=shape[0])
        net.load_state_dict(weights)
        nets.append(net)
    model = EnsembleClassifier(
        *nets, mean=data.mean, std=data.std, class_names=data.class_names, image_shape=shape
    )
    example = data.test_images[:2].numpy()  # (2, C, H, W) uint8
    return model.to(device).eval(), example


__all__ = ["EnsembleClassifier", "ensemble_from_checkpoint"]
