"""Batched train-time augmentation on uint8 image tensors.

`random_crop_flip` is torchvision's RandomCrop(size, padding, fill=0) + RandomHorizontalFlip(0.5)
applied independently to every image, but for a whole batch at once: the random offsets and flips
are drawn on a CPU generator (reproducible regardless of device) and applied with one gather on
the images' device — no per-image Python loop, no PIL.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def random_crop_flip(
    images_u8: torch.Tensor,
    *,
    padding: int,
    hflip: bool,
    generator: torch.Generator,
) -> torch.Tensor:
    """Zero-pad by `padding`, crop a random HxW window, flip horizontally with p=0.5.

    images_u8 (B, C, H, W) uint8 on any device -> (B, C, H, W) uint8 on the same device. Every
    offset in [0, 2*padding] per axis is equally likely, as in torchvision's RandomCrop.
    `generator` must be a CPU generator; the same seed gives the same output on any device.
    """
    if images_u8.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images_u8.shape)}.")
    if padding < 0:
        raise ValueError(f"padding={padding} must be >= 0.")
    b, _, h, w = images_u8.shape
    device = images_u8.device
    # draws happen on the CPU generator in a fixed order: dy, dx, flip
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5 if hflip else torch.zeros(b, dtype=torch.bool)
    if padding == 0 and not hflip:
        return images_u8.clone()
    padded = torch.nn.functional.pad(images_u8, (padding, padding, padding, padding))  # zeros
    rows = dy.to(device)[:, None] + torch.arange(h, device=device)  # (B, H) padded row index
    cols = torch.arange(w, device=device).expand(b, w)  # (B, W) output column
    # a flipped crop reads its columns right-to-left
    cols = torch.where(flip.to(device)[:, None], w - 1 - cols, cols) + dx.to(device)[:, None]
    bi = torch.arange(b, device=device)[:, None, None]  # (B, 1, 1)
    # advanced indexing over (batch, row, col) with channels kept as a slice: (B, H, W, C)
    out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def normalize(images_u8: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, C, H, W) uint8 -> (B, C, H, W) float32 `(x / 255 - mean) / std`, per channel."""
    c = images_u8.shape[1]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std need {c} values (one per channel), got {len(mean)}/{len(std)}.")
    m = torch.tensor(mean, dtype=torch.float32, device=images_u8.device).view(1, c, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images_u8.device).view(1, c, 1, 1)
    return (images_u8.float() / 255.0 - m) / s
