"""Networks by name: a dict registry plus one factory, `create_model`.

Every factory takes keyword-only `num_classes` and `in_channels` and returns an `nn.Module`
mapping `(B, in_channels, H, W)` float images to `(B, num_classes)` logits. Nothing here is
device-specific: the caller moves the model (`.to(device)`) and picks the memory format.

Names `create_model` takes (`available_models()` lists the first two kinds):
- a key of `MODELS`, the architectures pinned to the DivideMix reference recipe:
  `preact_resnet18` (CIFAR-10/100, preact.py), `resnet50` (Clothing1M, ImageNet-pretrained in the
  paper, backbones.py), `inception_resnet_v2` (WebVision, from scratch, inception.py), and
  `small_cnn` (not in the paper: CPU-scale runs and tests, small.py);
- `torchvision:NAME[.WEIGHTS]`: any torchvision classification model, its head replaced by one of
  `num_classes` outputs (backbones.py states the head rule and the weights used);
- an import path `"pkg.module:factory"`, so an experiment can train a network that lives outside
  this package without registering it.

Starting weights: `pretrained=True` asks the factory for its ImageNet weights (only factories with
a `pretrained` argument have any: `resnet50` and every `torchvision:NAME`; they load them with
`torchvision_weights`, from the torch hub cache or torchvision's download); `weights=PATH` loads a
state_dict file into any network (`load_weights`: weights-only, a classifier head of another
shape is left fresh and named).
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path

from torch import nn

from dmx.models.backbones import (
    TORCHVISION_PREFIX,
    classifier_head,
    resnet50,
    torchvision_input_size,
    torchvision_model,
    torchvision_models,
)
from dmx.models.inception import inception_resnet_v2
from dmx.models.preact import preact_resnet18
from dmx.models.small import small_cnn
from dmx.weights import (
    PretrainedWeightsError,
    WeightsFileError,
    load_weights,
    torchvision_weights,
)

__all__ = [
    "INPUT_SIZES",
    "MODELS",
    "TORCHVISION_PREFIX",
    "PretrainedWeightsError",
    "WeightsFileError",
    "available_models",
    "create_model",
    "inception_resnet_v2",
    "input_size",
    "load_weights",
    "preact_resnet18",
    "pretrained_models",
    "resnet50",
    "small_cnn",
    "torchvision_models",
    "torchvision_weights",
]


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
    """(resize, crop) of the input `name` expects: `INPUT_SIZES` for a registered network, the
    eval transforms of its weights for `torchvision:NAME[.WEIGHTS]`; (0, 0) when the network does
    not say (an import path): the dataset's loader then chooses."""
    if name.startswith(TORCHVISION_PREFIX):
        return torchvision_input_size(name.removeprefix(TORCHVISION_PREFIX))
    return INPUT_SIZES.get(name, (0, 0))


def pretrained_models() -> list[str]:
    """Registered models that have pretrained weights (their factory takes `pretrained`); every
    `torchvision:NAME` has them too."""
    return sorted(name for name, factory in MODELS.items() if _accepts(factory, "pretrained"))


def available_models() -> list[str]:
    """Every model name `create_model` takes except import paths: the registry (in its order),
    then `torchvision:NAME` for each of torchvision's classification models (sorted)."""
    return list(MODELS) + [TORCHVISION_PREFIX + name for name in torchvision_models()]


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

    `name` is a key of `MODELS`, `torchvision:NAME[.WEIGHTS]` (`backbones.torchvision_model`), or
    an import path `"pkg.module:factory"`; the factory is called with `num_classes=` (plus
    `in_channels=` when its signature accepts it, and `pretrained=True` when asked). `options`
    are passed through to the factory unchanged (for torchvision: to its builder).

    Starting weights, at most one of:
    - `pretrained=True`: the factory's own pretrained (ImageNet) weights; a model whose factory
      has no `pretrained` argument has none, which is an error naming the models that do.
    - `weights=PATH`: a state_dict file loaded with `load_weights` (weights-only; a classifier
      head of another shape starts fresh, with a warning naming the keys not loaded).

    Raises ValueError for an unknown name (with close matches for torchvision names),
    ImportError / AttributeError for an import path that does not resolve, TypeError when the
    factory does not return an `nn.Module`, and PretrainedWeightsError / WeightsFileError /
    FileNotFoundError for weights that cannot be had.
    """
    is_torchvision = name.startswith(TORCHVISION_PREFIX)
    foreign = ":" in name and not is_torchvision  # an import path: someone else's code
    if is_torchvision:
        torchvision_name = name.removeprefix(TORCHVISION_PREFIX)
        torchvision_input_size(torchvision_name)  # an unknown name or weights fails here, early
        factory = functools.partial(torchvision_model, torchvision_name)
    elif foreign:
        factory = _import_factory(name)
    elif name in MODELS:
        factory = MODELS[name]
    else:
        close = difflib.get_close_matches(name, [*MODELS, *torchvision_models()], n=4, cutoff=0.6)
        hint = ", ".join(c if c in MODELS else TORCHVISION_PREFIX + c for c in close)
        raise ValueError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}, or "
            f"torchvision:NAME for any of torchvision's {len(torchvision_models())} "
            f"classification models{f' (close matches: {hint})' if hint else ''}. "
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
                f"{', '.join(pretrained_models())} and every torchvision:NAME). Set "
                "model.pretrained=false, or start from your own state_dict with "
                "--set model.weights=PATH."
            )
        kwargs["pretrained"] = True
    if foreign:  # say which factory failed; our own errors speak for themselves
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
        # torchvision's heads follow the head rule (squeezenet's is a conv); others: last Linear
        head = None
        if is_torchvision:
            head_name, _ = classifier_head(model, num_classes)
            head = {k for k in model.state_dict() if k.rpartition(".")[0] == head_name}
        load_weights(model, weights, name=name, head=head)
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
