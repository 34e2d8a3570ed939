"""`small_cnn`: not in the paper; a fast network for CPU-scale runs and tests."""

from __future__ import annotations

from torch import nn

__all__ = ["small_cnn"]


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def small_cnn(*, num_classes: int, in_channels: int = 3) -> nn.Module:
    """A fast CNN for CPU-scale runs: ~0.39M parameters, any input from 8x8 to 32x32 and beyond.

    Three conv-BN-ReLU stages (32/64/128 channels) each followed by 2x2 max-pooling, one wider
    conv (256) on the pooled map, global average pooling, linear. One conv per full-resolution
    stage keeps a CIFAR-10 training step of batch 128 cheap on a CPU; the extra capacity sits at
    the lowest resolution, where it costs least.
    """
    return nn.Sequential(
        _conv_bn_relu(in_channels, 32),
        nn.MaxPool2d(2),
        _conv_bn_relu(32, 64),
        nn.MaxPool2d(2),
        _conv_bn_relu(64, 128),
        nn.MaxPool2d(2, ceil_mode=True),  # ceil: an odd map (e.g. 1x1 at 4 px) still pools
        _conv_bn_relu(128, 256),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, num_classes),
    )
