"""Image files -> uint8 tensors, and the deterministic eval-time preprocessing of files.

Decoding goes through TorchCodec's image decoder (JPEG, PNG, WebP, GIF, AVIF, HEIC; the
successor of torchvision.io's, which torchvision 0.29 deprecates), falling back to torchvision.io
where TorchCodec is not installed. Every file becomes (C, H, W) uint8 with C = 3 (RGB: a
grayscale or palette image is expanded, an alpha channel dropped) or C = 1 (grayscale).
A file that cannot be read or decoded raises `BadImageError` naming it; the loaders either stop
with it or leave the file out (`data.skip_bad_images`).

`eval_image` (resize the shorter side, then a centre crop) is pure torch, so that the same code
runs when training evaluates, when `dmx predict` predicts, and inside a TorchScript export.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F


class BadImageError(ValueError):
    """An image file that cannot be read or decoded; the message names the file and the fix."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(
            f"{path}: cannot decode the image ({reason}). Replace or delete the file, or set "
            "data.skip_bad_images=true to leave such files out (they are listed)."
        )


def _decoder():
    try:
        from torchcodec.decoders import decode_image

        return lambda path, mode: decode_image(path, mode=mode)
    except Exception:  # noqa: BLE001 - not installed, or built for another torch: torchvision
        from torchvision.io import ImageReadMode
        from torchvision.io import decode_image as tv_decode

        modes = {"RGB": ImageReadMode.RGB, "GRAY": ImageReadMode.GRAY}

        def decode(path: str, mode: str) -> torch.Tensor:
            with warnings.catch_warnings():  # deprecated in 0.29, in favour of TorchCodec
                warnings.simplefilter("ignore", DeprecationWarning)
                return tv_decode(path, mode=modes[mode])

        return decode


_DECODE = None
PIL_SUFFIXES = (".bmp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
"""Formats of torchvision's ImageFolder list that TorchCodec and torchvision.io do not decode:
read with Pillow (torchvision's own dependency) instead."""


def _pil_decode(path: str | Path, channels: int) -> torch.Tensor:
    import numpy as np
    from PIL import Image

    with Image.open(path) as img:
        array = np.asarray(img.convert("RGB" if channels == 3 else "L"))
    array = array[:, :, None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def _reason(exc: BaseException) -> str:
    """The first line of a decoder's error without its C++ source location ("func, file:line,")."""
    text = (str(exc).splitlines() or [type(exc).__name__])[0]
    parts = text.split(", ")
    while len(parts) > 1 and (":" in parts[0] and "/" in parts[0] or parts[0].isidentifier()):
        parts = parts[1:]  # "DecodeJpeg, /path/DecodeJpeg.cpp:208, Not a JPEG file"
    return ", ".join(parts)[:200] or type(exc).__name__


def decode_image(path: str | Path, *, channels: int = 3) -> torch.Tensor:
    """(channels, H, W) uint8 of the image file at `path`; BadImageError when it cannot be."""
    global _DECODE
    if _DECODE is None:
        _DECODE = _decoder()
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}.")
    try:
        if Path(path).suffix.lower() in PIL_SUFFIXES:
            image = _pil_decode(path, channels)
        else:
            image = _DECODE(str(path), "RGB" if channels == 3 else "GRAY")
    except FileNotFoundError:
        raise BadImageError(path, "no such file") from None
    except (RuntimeError, ValueError, OSError, SyntaxError) as exc:
        raise BadImageError(path, _reason(exc)) from None
    if image.ndim != 3 or image.shape[0] != channels or image.dtype != torch.uint8:
        raise BadImageError(path, f"decoded to {tuple(image.shape)} {image.dtype}")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise BadImageError(path, "empty image")
    return image


def resize_shorter(image_u8: torch.Tensor, size: int) -> torch.Tensor:
    """(C, H, W) uint8 with the shorter side resized to `size` (aspect ratio kept; antialiased
    bilinear, as torchvision's Resize(size)); `size` 0 keeps the image as it is."""
    if size == 0:
        return image_u8
    h, w = int(image_u8.shape[-2]), int(image_u8.shape[-1])
    if min(h, w) == size:
        return image_u8
    if h <= w:
        new_h, new_w = size, max(1, int(size * w / h))
    else:
        new_h, new_w = max(1, int(size * h / w)), size
    if image_u8.device.type == "cpu":  # torch's uint8 antialiased kernel: ~15x the float path
        return F.interpolate(image_u8[None], size=[new_h, new_w], mode="bilinear", antialias=True)[
            0
        ]
    out = F.interpolate(
        image_u8[None].float(), size=[new_h, new_w], mode="bilinear", antialias=True
    )
    return out[0].round().clamp(0, 255).to(torch.uint8)


def center_crop(image_u8: torch.Tensor, size: int) -> torch.Tensor:
    """(C, size, size): the centre square of `image_u8` (zero-padded where it is smaller, as
    torchvision's CenterCrop)."""
    h, w = int(image_u8.shape[-2]), int(image_u8.shape[-1])
    if h < size or w < size:
        pad_h, pad_w = max(0, size - h), max(0, size - w)
        image_u8 = F.pad(image_u8, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        h, w = int(image_u8.shape[-2]), int(image_u8.shape[-1])
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return image_u8[..., top : top + size, left : left + size]


def eval_image(image_u8: torch.Tensor, *, resize: int, crop: int) -> torch.Tensor:
    """The eval-time input of a file: resize the shorter side to `resize` (0: keep), then the
    centre `crop` x `crop` square; (C, crop, crop) uint8."""
    return center_crop(resize_shorter(image_u8, resize), crop)


__all__ = ["BadImageError", "center_crop", "decode_image", "eval_image", "resize_shorter"]
