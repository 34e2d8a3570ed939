"""Starting weights of a network: torchvision's pretrained ImageNet weights through its weights
API (torch hub cache, else download; offline, an error that names where the file goes), and a
user's state_dict file (`model.weights`), loaded weights-only with the classifier head left fresh
when its shape differs."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn


class PretrainedWeightsError(RuntimeError):
    """`pretrained=True` cannot be honoured; the message names the file, its place and the fix."""


class WeightsFileError(ValueError):
    """A `model.weights` file is not a state_dict of this network; the message says why, and the
    fix."""


def torchvision_weights(weights: Any, *, model: str) -> dict[str, torch.Tensor]:
    """The state_dict of a torchvision `WeightsEnum` member (e.g. ResNet50_Weights.IMAGENET1K_V1)
    through torchvision's weights API: from the torch hub cache
    (`torch.hub.get_dir()/checkpoints/<file name of weights.url>`), else torchvision downloads it.

    When neither works, PretrainedWeightsError names the exact path the file must be put at and
    the alternative `--set model.weights=PATH`; `model` names the network in the message.
    """
    cached = (
        Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    )
    was_cached = cached.is_file()
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # network down, proxy refusal, corrupt cache, ...
        reason = " ".join(f"{type(err).__name__}: {err}".split())[:200]
        if was_cached:
            raise PretrainedWeightsError(
                f"{model}: model.pretrained=true: the cached ImageNet weights {cached} could not "
                f"be read ({reason}). Delete that file (it is downloaded again) or replace it with "
                f"{weights.url}, or start from your own state_dict with --set model.weights=PATH."
            ) from err
        raise PretrainedWeightsError(
            f"{model}: model.pretrained=true needs torchvision's ImageNet weights {weights}, which "
            f"are not in the torch hub cache and could not be downloaded ({reason}). Put the file "
            f"{weights.url} at {cached} (download it where there is network), or start from your "
            "own state_dict with --set model.weights=PATH, or set model.pretrained=false."
        ) from err


def _head_keys(model: nn.Module) -> set[str]:
    """State keys of the classifier head: the last nn.Linear of `model` (all registered models
    end in one)."""
    last = ""
    found = False
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last, found = module_name, True
    if not found:
        return set()
    prefix = f"{last}." if last else ""
    return {f"{prefix}weight", f"{prefix}bias"}


def _listed(keys: list[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _as_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    """A loaded object as a state_dict: itself, or its "state_dict" entry (a common checkpoint
    wrapper); keys of nn.DataParallel ("module." prefix) are unwrapped. None if neither."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not (
        isinstance(obj, dict)
        and obj
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        return None
    if all(k.startswith("module.") for k in obj):
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    return obj


def load_weights(
    model: nn.Module,
    path: str | Path,
    *,
    name: str = "model",
    head: Iterable[str] | None = None,
) -> list[str]:
    """Load the state_dict file `path` into `model` in place; returns the keys not loaded.

    The file is read with `torch.load(path, weights_only=True, map_location="cpu")` (it can run no
    code). Every tensor of `model` must come from the file with its shape, except the classifier
    head (the state keys `head`; by default those of the last nn.Linear): when the file's head has
    another shape (another num_classes) or is absent, the head keeps its fresh initialisation and
    a warning names the keys not loaded. Anything else that does not fit raises WeightsFileError
    naming the keys; a missing file FileNotFoundError. `name` (the model's name) only goes into
    messages.
    """
    path = Path(path).expanduser()
    fix = "Save the weights with torch.save(model.state_dict(), PATH) from the same network"
    if not path.is_file():
        raise FileNotFoundError(
            f"model.weights {path} does not exist: give the path of a state_dict file, or leave "
            "model.weights empty."
        )
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as err:  # UnpicklingError, RuntimeError (not a zip), EOFError, ...
        # one line: the global the file tried to load, not torch's advice to retry unsafely
        lines = [x.strip() for x in str(err).splitlines() if x.strip()] or [""]
        named = [x for x in lines if x.startswith("Unsupported") or "GLOBAL" in x]
        reason = named[0].split(" was not an allowed global")[0] if named else lines[0]
        reason = f"{type(err).__name__}: {reason[:160].rstrip('.')}"
        raise WeightsFileError(
            f"model.weights {path}: not a weights-only torch state_dict ({reason}). {fix} "
            f"(model.name={name}); whole pickled models are not loaded."
        ) from err
    state = _as_state_dict(obj)
    if state is None:
        what = type(obj).__name__
        if isinstance(obj, dict):
            what += f" with keys {_listed([str(k) for k in obj])}"
        raise WeightsFileError(
            f"model.weights {path}: holds a {what}, not a state_dict (parameter name -> tensor). "
            f"{fix} (model.name={name})."
        )
    own = model.state_dict()
    head = _head_keys(model) if head is None else set(head)
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state]
    reshaped = [k for k in state if k in own and state[k].shape != own[k].shape]
    wrong = {
        "missing from the file": [k for k in missing if k not in head],
        "not in the model": unexpected,
        "of another shape": [
            f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
            for k in reshaped
            if k not in head
        ],
    }
    if any(wrong.values()):
        problems = "; ".join(
            f"{len(v)} keys {what} ({_listed(v)})" for what, v in wrong.items() if v
        )
        raise WeightsFileError(
            f"model.weights {path} does not fit model {name!r}: {problems}. {fix} "
            f"(model.name={name}, same in_channels), or leave model.weights empty."
        )
    skipped = sorted(set(missing) | set(reshaped))  # head keys only, by the check above
    model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    if skipped:
        detail = ", ".join(
            f"{k} (file {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
            if k in state
            else f"{k} (absent from the file)"
            for k in skipped
        )
        warnings.warn(
            f"model.weights {path}: not loaded: {detail}. The classifier head does not match and "
            "starts fresh; every other tensor was loaded.",
            stacklevel=2,
        )
    return skipped


__all__ = ["PretrainedWeightsError", "WeightsFileError", "load_weights", "torchvision_weights"]
