"""What the training loop sees of the data: index sets in, network inputs out.

The loop (`dmx.train`) and the eval passes (`dmx.evaluate`) ask a `TrainData` for
- `views(batches, n_views=..., gen=..., key=...)`: per batch of training indices, `n_views`
  independently augmented views (float, normalised, on the device);
- `eval_batches(split, ...)`: un-augmented inputs of a split ("train", "val", "test", ...), in
  order, for eval-mode passes.
Two implementations: `dmx.data.device.DeviceData` (uint8 tensors resident on the device, batched
augmentation from the loop's generator) and `dmx.data.stream.StreamData` (image files decoded and
augmented in DataLoader workers, the randomness derived from (seed, key, position, view) so that
the result does not depend on the number of workers).

`LoopSplits` is what `dmx.prepare` hands either of them: the training split with the labels the
loop trains on, what is known of its truth, and the evaluation splits by name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from dmx.data import Split

TRAIN = "train"
NOISY_VAL = "val"  # held-out part of the NOISY training set: the sweep objective
CLEAN_VAL = "clean_val"  # a clean validation split of the dataset (Clothing1M's)
TEST = "test"


@dataclass(frozen=True)
class LoopSplits:
    """The splits of one run. `train.labels` are the labels trained on (noisy); `true_y` what is
    known of their truth (`dmx.data.UNKNOWN` where unknown); `evals` the other splits by name
    (`val`, `clean_val`, `test` and a dataset's extra test sets), each with its own labels."""

    train: Split
    true_y: np.ndarray  # (N,) int64
    evals: Mapping[str, Split]


class TrainData(Protocol):
    """The loop's view of the data (see the module docstring)."""

    device: torch.device
    num_classes: int
    noisy_y: torch.Tensor  # (N,) int64 on the device: the labels trained on
    true_y: np.ndarray  # (N,) int64, UNKNOWN where unknown: metrics only

    def __len__(self) -> int: ...

    @property
    def eval_splits(self) -> tuple[str, ...]: ...

    def views(
        self,
        batches: Sequence[torch.Tensor],
        *,
        n_views: int,
        gen: torch.Generator,
        key: tuple[int, ...],
    ) -> Iterator[list[torch.Tensor]]:
        """For each batch of training indices (B,), `n_views` augmented views (B, C, H, W)."""
        ...

    def eval_batches(
        self, split: str, *, batch_size: int, idx: torch.Tensor | None = None
    ) -> Iterator[torch.Tensor]:
        """Un-augmented inputs of `split` (rows `idx`, default all), in order, `batch_size` at a
        time."""
        ...

    def eval_labels(self, split: str) -> torch.Tensor:
        """(M,) labels of an evaluation split, on the device."""
        ...

    def probe(self) -> torch.Tensor:
        """(1, C, H, W) un-augmented input of the first training sample."""
        ...


__all__ = ["CLEAN_VAL", "LoopSplits", "NOISY_VAL", "TEST", "TRAIN", "TrainData"]
