"""Inception-ResNet-v2 (Szegedy et al. 2017), the network of the reference's WebVision runs,
trained from scratch."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["inception_resnet_v2"]


class _ConvBN(nn.Sequential):
    """conv (no bias) + BN (eps 1e-3, the TensorFlow value) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-3),
            nn.ReLU(inplace=True),
        )


class _Concat(nn.Module):
    """Run parallel branches on one input and concatenate them along channels."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class _ResidualInception(nn.Module):
    """x + scale * conv1x1(concat(branches(x))), then ReLU unless `relu=False`."""

    def __init__(
        self,
        channels: int,
        branches: _Concat,
        mixed_channels: int,
        *,
        scale: float,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.branches = branches
        self.project = nn.Conv2d(mixed_channels, channels, kernel_size=1)  # with bias
        self.scale = scale
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x + self.scale * self.project(self.branches(x))
        return torch.relu(out) if self.relu else out


def _block35(scale: float) -> nn.Module:  # 35x35 grid at 299 px ("Inception-ResNet-A")
    return _ResidualInception(
        320,
        _Concat(
            _ConvBN(320, 32, 1),
            nn.Sequential(_ConvBN(320, 32, 1), _ConvBN(32, 32, 3, padding=1)),
            nn.Sequential(
                _ConvBN(320, 32, 1), _ConvBN(32, 48, 3, padding=1), _ConvBN(48, 64, 3, padding=1)
            ),
        ),
        128,
        scale=scale,
    )


def _block17(scale: float) -> nn.Module:  # 17x17 grid ("Inception-ResNet-B")
    return _ResidualInception(
        1088,
        _Concat(
            _ConvBN(1088, 192, 1),
            nn.Sequential(
                _ConvBN(1088, 128, 1),
                _ConvBN(128, 160, (1, 7), padding=(0, 3)),
                _ConvBN(160, 192, (7, 1), padding=(3, 0)),
            ),
        ),
        384,
        scale=scale,
    )


def _block8(scale: float, relu: bool = True) -> nn.Module:  # 8x8 grid ("Inception-ResNet-C")
    return _ResidualInception(
        2080,
        _Concat(
            _ConvBN(2080, 192, 1),
            nn.Sequential(
                _ConvBN(2080, 192, 1),
                _ConvBN(192, 224, (1, 3), padding=(0, 1)),
                _ConvBN(224, 256, (3, 1), padding=(1, 0)),
            ),
        ),
        448,
        scale=scale,
        relu=relu,
    )


def inception_resnet_v2(*, num_classes: int, in_channels: int = 3) -> nn.Module:
    """Inception-ResNet-v2 (Szegedy et al. 2017), the WebVision network; ~54M parameters.

    Same layers as the widely used PyTorch port the reference trains (BN eps 1e-3, residual
    scales 0.17 / 0.10 / 0.20, a last 8x8 block without ReLU). Inputs of at least 75x75 px;
    the paper's runs use 299 px. Adaptive average pooling replaces the fixed 8x8 pool.
    """
    stem = nn.Sequential(
        _ConvBN(in_channels, 32, 3, stride=2),
        _ConvBN(32, 32, 3),
        _ConvBN(32, 64, 3, padding=1),
        nn.MaxPool2d(3, stride=2),
        _ConvBN(64, 80, 1),
        _ConvBN(80, 192, 3),
        nn.MaxPool2d(3, stride=2),
    )
    mixed_5b = _Concat(  # 192 -> 96 + 64 + 96 + 64 = 320
        _ConvBN(192, 96, 1),
        nn.Sequential(_ConvBN(192, 48, 1), _ConvBN(48, 64, 5, padding=2)),
        nn.Sequential(
            _ConvBN(192, 64, 1), _ConvBN(64, 96, 3, padding=1), _ConvBN(96, 96, 3, padding=1)
        ),
        nn.Sequential(
            nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False), _ConvBN(192, 64, 1)
        ),
    )
    mixed_6a = _Concat(  # 320 -> 384 + 384 + 320 = 1088, stride 2
        _ConvBN(320, 384, 3, stride=2),
        nn.Sequential(
            _ConvBN(320, 256, 1), _ConvBN(256, 256, 3, padding=1), _ConvBN(256, 384, 3, stride=2)
        ),
        nn.MaxPool2d(3, stride=2),
    )
    mixed_7a = _Concat(  # 1088 -> 384 + 288 + 320 + 1088 = 2080, stride 2
        nn.Sequential(_ConvBN(1088, 256, 1), _ConvBN(256, 384, 3, stride=2)),
        nn.Sequential(_ConvBN(1088, 256, 1), _ConvBN(256, 288, 3, stride=2)),
        nn.Sequential(
            _ConvBN(1088, 256, 1), _ConvBN(256, 288, 3, padding=1), _ConvBN(288, 320, 3, stride=2)
        ),
        nn.MaxPool2d(3, stride=2),
    )
    return nn.Sequential(
        stem,
        mixed_5b,
        nn.Sequential(*[_block35(0.17) for _ in range(10)]),
        mixed_6a,
        nn.Sequential(*[_block17(0.10) for _ in range(20)]),
        mixed_7a,
        nn.Sequential(*[_block8(0.20) for _ in range(9)]),
        _block8(1.0, relu=False),
        _ConvBN(2080, 1536, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(1536, num_classes),
    )
