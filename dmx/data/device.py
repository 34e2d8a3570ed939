"""The in-memory path: every split as one uint8 tensor resident on the device (airbench).

uint8 on the device is 4x smaller than float and never crosses the bus again; augmentation
(random crop with zero padding + flip, `dmx.data.augment`) and normalisation run per batch on the
device, the random draws from the loop's CPU generator.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from dmx.data import Transforms
from dmx.data.augment import normalize, random_crop_flip
from dmx.data.views import TRAIN, LoopSplits


class DeviceData:
    """`dmx.data.views.TrainData` over in-memory splits (see the module docstring)."""

    def __init__(
        self,
        splits: LoopSplits,
        *,
        num_classes: int,
        mean: Sequence[float],
        std: Sequence[float],
        transforms: Transforms,
        device: torch.device,
        channels_last: bool = False,
    ) -> None:
        self.device = device
        self.num_classes = num_classes
        self.mean, self.std = tuple(mean), tuple(std)
        self.padding, self.hflip = transforms.crop_padding, transforms.hflip
        self.channels_last = channels_last
        self.train_x = _images(splits.train, device)  # (N, C, H, W) uint8
        self.noisy_y = splits.train.labels.to(device)  # (N,)
        self.true_y = splits.true_y  # (N,) numpy, metrics only
        self._x = {name: _images(s, device) for name, s in splits.evals.items()}
        self._y = {name: s.labels.to(device) for name, s in splits.evals.items()}

    def __len__(self) -> int:
        return len(self.noisy_y)

    @property
    def eval_splits(self) -> tuple[str, ...]:
        return tuple(self._x)

    def _format(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def train_view(self, images_u8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        aug = random_crop_flip(images_u8, padding=self.padding, hflip=self.hflip, generator=gen)
        return self._format(normalize(aug, self.mean, self.std))

    def plain_view(self, images_u8: torch.Tensor) -> torch.Tensor:
        return self._format(normalize(images_u8, self.mean, self.std))

    def views(
        self,
        batches: Sequence[torch.Tensor],
        *,
        n_views: int,
        gen: torch.Generator,
        key: tuple[int, ...] = (),
    ) -> Iterator[list[torch.Tensor]]:
        """Lazily, batch by batch: the views' draws come from `gen` in loop order (`key` is the
        streaming path's; the loop's generator already makes these reproducible)."""
        for idx in batches:
            images = self.train_x[idx.to(self.device, non_blocking=True)]
            yield [self.train_view(images, gen) for _ in range(n_views)]

    def eval_batches(
        self, split: str, *, batch_size: int, idx: torch.Tensor | None = None
    ) -> Iterator[torch.Tensor]:
        images = self.train_x if split == TRAIN else self._x[split]
        if idx is not None:
            images = images[idx.to(self.device)]
        for chunk in torch.split(images, batch_size):
            yield self.plain_view(chunk)

    def eval_labels(self, split: str) -> torch.Tensor:
        return self.noisy_y if split == TRAIN else self._y[split]

    def probe(self) -> torch.Tensor:
        return self.plain_view(self.train_x[:1])


def _images(split, device: torch.device) -> torch.Tensor:
    if split.images is None:
        raise ValueError("DeviceData needs in-memory splits; this one streams files.")
    return split.images.to(device)


__all__ = ["DeviceData"]
