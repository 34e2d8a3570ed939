"""torchvision's classification networks: any of them by name (`torchvision:NAME`), and the
registered `resnet50` of the reference's Clothing1M recipe.

`torchvision:NAME` is any model of `torchvision.models.list_models(module=torchvision.models)`
(the classification models; not detection, segmentation or video); `torchvision:NAME.WEIGHTS`
pins one of its weights (e.g. `torchvision:resnet50.IMAGENET1K_V1`), else torchvision's DEFAULT
(the best ImageNet-1K weights torchvision ships for that architecture; every model has them).
The weights decide the input size (`torchvision_input_size`: their eval transforms' resize and
crop) and, with `pretrained=True`, the starting parameters.

The head rule: the classifier head is the model's last module with parameters of its own, in
registration order (fc, classifier[-1], heads.head, head, squeezenet's 1x1 classifier conv; it is
checked to output the weights' number of categories). With `pretrained=True` the model is built
with the weights' categories, loaded strictly from the file, and that module is then replaced by
a fresh one with `num_classes` outputs and PyTorch's default init (as the reference's Clothing1M
script does: `net.fc = nn.Linear(2048, 14)`). Without, torchvision builds the model for
`num_classes` directly. Auxiliary classifiers (googlenet, inception_v3) are dropped: the
DivideMix loop trains on one logits tensor, and torchvision drops them itself when asked to.
"""

from __future__ import annotations

import difflib
from functools import lru_cache
from typing import Any

from torch import nn

from dmx.weights import torchvision_weights

__all__ = [
    "TORCHVISION_PREFIX",
    "classifier_head",
    "resnet50",
    "torchvision_input_size",
    "torchvision_model",
    "torchvision_models",
    "torchvision_weights_of",
]

TORCHVISION_PREFIX = "torchvision:"

# Auxiliary classifiers and the builders' switch for them (train mode would return a namedtuple).
_AUX_HEADS = {"googlenet": ("aux1", "aux2"), "inception_v3": ("AuxLogits",)}


@lru_cache(maxsize=1)
def _model_names() -> tuple[str, ...]:
    import torchvision
    from torchvision.models import list_models

    return tuple(sorted(list_models(module=torchvision.models)))


def torchvision_models() -> list[str]:
    """Names of torchvision's classification models, sorted: what `torchvision:NAME` takes."""
    return list(_model_names())


def _close(name: str, names: list[str] | tuple[str, ...]) -> list[str]:
    return difflib.get_close_matches(name, names, n=5, cutoff=0.6)


def _split(name: str) -> tuple[str, str]:
    """'resnet50' -> ('resnet50', 'DEFAULT'); 'resnet50.IMAGENET1K_V1' -> both parts. A name
    torchvision has no classification model of is a one-line ValueError with close matches."""
    arch, _, weights_name = name.partition(".")
    if arch not in _model_names():
        close = _close(arch, _model_names())
        hint = f"close matches: {', '.join(TORCHVISION_PREFIX + c for c in close)}" if close else ""
        raise ValueError(
            f"unknown torchvision model {TORCHVISION_PREFIX + arch!r}; "
            f"{hint or 'no close match'} (torchvision has {len(_model_names())} classification "
            "models: torchvision.models.list_models(module=torchvision.models))"
        )
    return arch, weights_name or "DEFAULT"


def torchvision_weights_of(name: str) -> Any:
    """The `WeightsEnum` member `name` ('resnet50' or 'resnet50.IMAGENET1K_V1') stands for."""
    from torchvision.models import get_model_weights

    arch, weights_name = _split(name)
    enum = get_model_weights(arch)
    try:
        return enum[weights_name]
    except KeyError:
        raise ValueError(
            f"{TORCHVISION_PREFIX}{arch} has no weights {weights_name!r}; {enum.__name__} has "
            f"{', '.join(member.name for member in enum)} (DEFAULT = {enum.DEFAULT.name})"
        ) from None


def torchvision_input_size(name: str) -> tuple[int, int]:
    """(resize, crop) of the eval transforms of `name`'s weights (`weights.transforms()`): the
    input size the architecture was trained at (resnet50's DEFAULT: 232 -> 224)."""
    transforms = torchvision_weights_of(name).transforms()
    return int(transforms.resize_size[0]), int(transforms.crop_size[0])


def _weights_build_args(arch: str, weights: Any) -> dict[str, Any]:
    """The builder arguments torchvision derives from the weights besides num_classes (its
    builders set them when given weights; dmx loads the file itself, so it sets them). The input
    size of ViT and MaxViT is part of the architecture (position embeddings, partitions): they
    are built for their weights' size with or without pretraining, so that `input_size` fits."""
    if arch.startswith("vit_"):
        return {"image_size": weights.meta["min_size"][0]}
    if arch.startswith("maxvit_"):
        return {"input_size": weights.meta["min_size"]}
    return {}


def classifier_head(model: nn.Module, out_features: int | None = None) -> tuple[str, nn.Module]:
    """(name, module) of the classifier head: the last module with parameters of its own, which
    must be an nn.Linear or an nn.Conv2d (with `out_features` outputs, when given)."""
    owners = [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(False))]
    name, head = owners[-1] if owners else ("", model)
    outputs = getattr(head, "out_features", getattr(head, "out_channels", None))
    if not isinstance(head, nn.Linear | nn.Conv2d) or out_features not in (None, outputs):
        raise RuntimeError(
            f"cannot find the classifier head of {type(model).__name__}: its last module with "
            f"parameters, {name or 'the model'} ({type(head).__name__}), is not a linear or conv "
            f"layer with {out_features} outputs"
        )
    return name, head


def _fresh_head(head: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(head, nn.Linear):
        return nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    return nn.Conv2d(  # squeezenet: a 1x1 conv, then ReLU and average pooling
        head.in_channels,
        num_classes,
        head.kernel_size,
        head.stride,
        head.padding,
        bias=head.bias is not None,
    )


def _adapt_stem(model: nn.Module, in_channels: int, display: str) -> None:
    """Replace the first conv (the stem of every torchvision classifier) with a fresh one taking
    `in_channels` channels, all else equal; refuse a model whose first conv is not a plain one."""
    name, conv = next(
        ((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), ("", None)
    )
    if conv is None or conv.in_channels != 3 or conv.groups != 1:
        raise ValueError(
            f"{display}: cannot adapt its input layer to in_channels={in_channels} (its first "
            "layer is not a plain 3-channel conv); convert the images to RGB instead"
        )
    stem = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    model.set_submodule(name, stem)


def torchvision_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    pretrained: bool = False,
    display: str = "",
    **options: Any,
) -> nn.Module:
    """torchvision's classifier `name` ('resnet50', or 'resnet50.IMAGENET1K_V1' to pin weights)
    for `num_classes` classes, its head chosen by the head rule of this module's docstring.

    `pretrained=True` starts every layer but the head from the weights' file, read through
    `dmx.weights.torchvision_weights` (torch hub cache, else download; offline, a
    PretrainedWeightsError naming the path to put the file at). `in_channels != 3` adapts the
    stem when training from scratch and is a ValueError with pretrained weights. `options` go
    to torchvision's builder (e.g. `dropout=0.3`); `display` names the model in messages.
    """
    from torchvision.models import get_model

    arch, _ = _split(name)
    display = display or TORCHVISION_PREFIX + name
    weights = torchvision_weights_of(name)
    if options.get("aux_logits"):
        raise ValueError(
            f"{display}: aux_logits=True is not supported (the DivideMix loop trains on one "
            "logits tensor); the auxiliary classifiers are dropped"
        )
    kwargs = {**_weights_build_args(arch, weights), **options}
    if not pretrained:
        if arch in _AUX_HEADS:  # init_weights=True: what None means, without its FutureWarning
            kwargs = {"aux_logits": False, "init_weights": True, **kwargs}
        model = get_model(arch, weights=None, num_classes=num_classes, **kwargs)
        if in_channels != 3:
            _adapt_stem(model, in_channels, display)
        return model

    if in_channels != 3:
        raise ValueError(
            f"{display}: ImageNet weights expect 3 input channels, got in_channels={in_channels}"
        )
    state = torchvision_weights(weights, model=display)  # first: fail before building
    categories = len(weights.meta["categories"])
    if arch in _AUX_HEADS:  # as torchvision's builder: aux heads to load into, Google's inputs
        kwargs = {"transform_input": True, **kwargs, "aux_logits": True, "init_weights": False}
    model = get_model(arch, weights=None, num_classes=categories, **kwargs)
    model.load_state_dict(state)
    if arch in _AUX_HEADS:
        model.aux_logits = False
        for aux in _AUX_HEADS[arch]:
            setattr(model, aux, None)
    head_name, head = classifier_head(model, categories)
    model.set_submodule(head_name, _fresh_head(head, num_classes))
    return model


def resnet50(*, num_classes: int, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
    """torchvision ResNet-50 with a fresh `num_classes` linear head (Clothing1M).

    `pretrained=True` loads torchvision's IMAGENET1K_V1 weights (what `pretrained=True` meant
    when the reference was written) for every layer but the head, through `torchvision_weights`
    (hub cache or download; a PretrainedWeightsError says where to put the file otherwise).
    `torchvision:resnet50` is the same network with torchvision's DEFAULT (V2) weights.
    """
    return torchvision_model(
        "resnet50.IMAGENET1K_V1",
        num_classes=num_classes,
        in_channels=in_channels,
        pretrained=pretrained,
        display="resnet50",
    )
