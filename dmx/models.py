"""Networks by name: a dict registry plus one factory, `create_model`.

Every factory takes keyword-only `num_classes` and `in_channels` and returns an `nn.Module`
mapping `(B, in_channels, H, W)` float images to `(B, num_classes)` logits. Nothing here is
device-specific: the caller moves the model (`.to(device)`) and picks the memory format.

`create_model` also accepts an import path `"pkg.module:factory"`, so an experiment can train a
network that lives outside this package without registering it.

Starting weights: `pretrained=True` asks the factory for its ImageNet weights (only factories with
a `pretrained` argument have any: `resnet50`; torchvision-based ones load them with
`torchvision_weights`, from the torch hub cache or torchvision's download); `weights=PATH` loads a
state_dict file into any network (`load_weights`: weights-only, a classifier head of another
shape is left fresh and named).

Architectures pinned to the DivideMix reference recipe:
- `preact_resnet18`: CIFAR-10/100 (the reference's `ResNet18` in PreResNet.py).
- `resnet50`: Clothing1M (torchvision ResNet-50, ImageNet-pretrained in the paper).
- `inception_resnet_v2`: WebVision (Inception-ResNet-v2, Szegedy et al. 2017, trained from scratch).
- `small_cnn`: not in the paper; a fast network for CPU-scale runs and tests.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dmx.weights import (
    PretrainedWeightsError,
    WeightsFileError,
    load_weights,
    torchvision_weights,
)

__all__ = [
    "MODELS",
    "PretrainedWeightsError",
    "WeightsFileError",
    "INPUT_SIZES",
    "create_model",
    "inception_resnet_v2",
    "input_size",
    "load_weights",
    "preact_resnet18",
    "pretrained_models",
    "resnet50",
    "small_cnn",
    "torchvision_weights",
]


# --------------------------------------------------------------------------- PreAct ResNet-18


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


# --------------------------------------------------------------------------- small CNN


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


# --------------------------------------------------------------------------- ResNet-50


def resnet50(*, num_classes: int, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
    """torchvision ResNet-50 with a fresh `num_classes` linear head (Clothing1M).

    `pretrained=True` loads torchvision's IMAGENET1K_V1 weights (what `pretrained=True` meant
    when the reference was written) for every layer but the head, through `torchvision_weights`
    (hub cache or download; a PretrainedWeightsError says where to put the file otherwise).
    """
    from torchvision.models import ResNet50_Weights
    from torchvision.models import resnet50 as tv_resnet50

    if pretrained and in_channels != 3:
        raise ValueError(
            f"resnet50: ImageNet weights expect 3 input channels, got in_channels={in_channels}"
        )
    if pretrained:
        weights = ResNet50_Weights.IMAGENET1K_V1
        state = torchvision_weights(weights, model="resnet50")  # first: fail before building
        model = tv_resnet50(weights=None, num_classes=len(weights.meta["categories"]))
        model.load_state_dict(state)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        model = tv_resnet50(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


# --------------------------------------------------------------------------- Inception-ResNet-v2


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


# --------------------------------------------------------------------------- registry

MODELS: dict[str, Callable[..., nn.Module]] = {
    "preact_resnet18": preact_resnet18,
    "small_cnn": small_cnn,
    "resnet50": resnet50,
    "inception_resnet_v2": inception_resnet_v2,
}


# (resize, crop) of each registered network's input for file-backed datasets: the shorter side is
# resized to `resize`, then a `crop` x `crop` square is cut. The CIFAR nets take 32 px images (as
# stored in memory); the ImageNet-style ones the sizes of their reference recipes.
INPUT_SIZES: dict[str, tuple[int, int]] = {
    "preact_resnet18": (32, 32),
    "small_cnn": (32, 32),
    "resnet50": (256, 224),  # Clothing1M: Resize(256) + RandomCrop / CenterCrop(224)
    "inception_resnet_v2": (320, 299),  # WebVision: Resize(320) + RandomResizedCrop(299)
}


def input_size(name: str) -> tuple[int, int]:
    """(resize, crop) of the input `name` expects; (0, 0) when the network does not say (an
    import path): the dataset's loader then chooses."""
    return INPUT_SIZES.get(name, (0, 0))


def pretrained_models() -> list[str]:
    """Registered models that have pretrained weights (their factory takes `pretrained`)."""
    return sorted(name for name, factory in MODELS.items() if _accepts(factory, "pretrained"))


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    pretrained: bool = False,
    weights: str | Path = "",
    **options,
) -> nn.Module:
    """Build the network `name` for `num_classes` classes and `in_channels`-channel images.

    `name` is a key of `MODELS` or an import path `"pkg.module:factory"`; the factory is called
    with `num_classes=` (plus `in_channels=` when its signature accepts it, and `pretrained=True`
    when asked). `options` are passed through to the factory unchanged.

    Starting weights, at most one of:
    - `pretrained=True`: the factory's own pretrained (ImageNet) weights; a model whose factory
      has no `pretrained` argument has none, which is an error naming the models that do.
    - `weights=PATH`: a state_dict file loaded with `load_weights` (weights-only; a classifier
      head of another shape starts fresh, with a warning naming the keys not loaded).

    Raises ValueError for an unknown name, ImportError / AttributeError for an import path that
    does not resolve, TypeError when the factory does not return an `nn.Module`, and
    PretrainedWeightsError / WeightsFileError / FileNotFoundError for weights that cannot be had.
    """
    if ":" in name:
        factory = _import_factory(name)
    elif name in MODELS:
        factory = MODELS[name]
    else:
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}. "
            "A model defined elsewhere can be named by import path 'pkg.module:factory' "
            "(the factory is called with num_classes=... and returns an nn.Module)."
        )
    if pretrained and weights:
        raise ValueError(
            f"model {name!r}: both model.pretrained=true and model.weights={str(weights)!r} are "
            "set; choose one (the weights file, or the pretrained weights)."
        )

    kwargs = {"num_classes": num_classes, **options}
    if _accepts(factory, "in_channels"):
        kwargs["in_channels"] = in_channels
    elif in_channels != 3:
        raise ValueError(
            f"model {name!r}: in_channels={in_channels} requested but its factory "
            "takes no in_channels argument"
        )
    if pretrained:
        if not _accepts(factory, "pretrained"):
            raise ValueError(
                f"model {name!r} has no pretrained weights (models that have them: "
                f"{', '.join(pretrained_models())}). Set model.pretrained=false, or start from "
                "your own state_dict with --set model.weights=PATH."
            )
        kwargs["pretrained"] = True
    if ":" in name:  # foreign code: say which factory failed; our own errors speak for themselves
        try:
            model = factory(**kwargs)
        except Exception as err:
            raise RuntimeError(
                f"model factory {name!r} raised {type(err).__name__}: {err}"
            ) from err
    else:
        model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model factory {name!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    if weights:
        load_weights(model, weights, name=name)
    return model


def _import_factory(path: str) -> Callable[..., nn.Module]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"model import path {path!r} must look like 'pkg.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(
            f"model {path!r}: cannot import module {module_name!r} ({type(err).__name__}: {err})"
        ) from err
    try:
        factory = getattr(module, attr)
    except AttributeError as err:
        raise AttributeError(
            f"model {path!r}: module {module_name!r} has no attribute {attr!r}"
        ) from err
    if not callable(factory):
        raise TypeError(f"model {path!r}: {attr!r} is not callable")
    return factory


def _accepts(factory: Callable, param: str) -> bool:
    """True when `factory` can be called with keyword `param` (named or via **kwargs)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return param in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
