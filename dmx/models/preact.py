"""PreAct ResNet-18, the network of the DivideMix reference's CIFAR runs (its `ResNet18` in
PreResNet.py), laid out as the reference lays it out."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PreActBlock", "PreActResNet", "preact_resnet18"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016): BN-ReLU-conv-BN-ReLU-conv + shortcut.

    The shortcut taps the block's pre-activated input; when the shape changes it is a 1x1
    strided convolution without BatchNorm (as in the reference).
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    """PreAct ResNet for small images, laid out as the DivideMix reference lays it out.

    Stem: 3x3 conv (64) + BN + ReLU at full resolution (no stride, no max-pool). Four stages of
    PreActBlocks with widths 64/128/256/512 (stride 1/2/2/2). No BatchNorm after the last block.
    Global average pooling, then a linear classifier. The reference pools with avg_pool2d(4),
    which equals adaptive pooling at 32 px; adaptive pooling lets other image sizes through.
    """

    def __init__(
        self, num_blocks: tuple[int, int, int, int], *, num_classes: int, in_channels: int = 3
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_channels, 64)
        self.bn1 = nn.BatchNorm2d(64)
        widths = (64, 128, 256, 512)
        strides = (1, 2, 2, 2)
        in_planes = 64
        stages = []
        for width, stride, n in zip(widths, strides, num_blocks, strict=True):
            blocks = []
            for block_stride in [stride] + [1] * (n - 1):
                blocks.append(PreActBlock(in_planes, width, block_stride))
                in_planes = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(self.pool(out), 1))


def preact_resnet18(*, num_classes: int, in_channels: int = 3) -> nn.Module:
    """PreAct ResNet-18 of the reference's CIFAR runs (11,171,274 parameters at 10 classes)."""
    return PreActResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)
