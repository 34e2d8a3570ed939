"""The trained DivideMix ensemble as one module: uint8 images of any size in, class
probabilities out, with the evaluation preprocessing and the class names inside.

`Ensemble.forward(images_u8 (B, C, H, W) uint8)` -> (B, K) probabilities, in three steps that
are also methods (and survive a TorchScript export):
- `preprocess`: `dmx.data.decode.eval_image` (shorter side resized to `resize`, centre
  `crop` x `crop`) on every image: the function the training eval passes use;
- normalisation `(x / 255 - mean) / std` with the dataset's mean/std, as training;
- `classify`: softmax of the SUM of the two nets' logits. The training test ranks classes by that
  sum (`dmx.evaluate.eval_metrics`), and softmax is monotone, so the predicted class is the
  training test's. softmax(l1 + l2) is the normalised product of the two nets' softmaxes (a
  product of experts), not their mean; it is sharper than either net alone.

An in-memory dataset (CIFAR, digits) has no resize/crop of its own: its images are the network
input, so any other image is resized (shorter side) and centre-cropped to that size; an image of
the training size passes unchanged.

`ensemble_from_run(RUN_DIR)` and `ensemble_from_checkpoint(CHECKPOINT_DIR)` build it from a
`dmx train` run or a checkpoint folder (a sweep trial's); `export_torchscript` writes it as a file
that plain `torch.jit.load` runs without dmx.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dmx.data.decode import eval_image

EXPORT_METADATA = "dmx.json"  # extra file inside an exported model: the preprocessing record


def preprocess_images(images_u8: torch.Tensor, resize: int, crop: int) -> torch.Tensor:
    """(B, C, H, W) uint8 of one size -> (B, C, crop, crop) uint8: `eval_image` on each image
    (its channels go through as one stack: resizing and cropping treat channels alike); `crop` 0
    leaves the images as they are."""
    if crop == 0:
        return images_u8
    b, c, h, w = images_u8.shape
    out = eval_image(images_u8.reshape(b * c, h, w), resize=resize, crop=crop)
    return out.reshape(b, c, crop, crop)


class Ensemble(nn.Module):
    """The two nets of a run, its eval preprocessing and its class names (module docstring)."""

    __jit_ignored_attributes__ = ["metadata"]

    def __init__(
        self,
        net1: nn.Module,
        net2: nn.Module,
        *,
        class_names: Sequence[str],
        mean: Sequence[float],
        std: Sequence[float],
        resize: int,
        crop: int,
        channels: int,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} values, got {len(mean)}/{len(std)}.")
        self.net1, self.net2 = net1.eval(), net2.eval()
        self.class_names = [str(n) for n in class_names]
        self.num_classes = len(self.class_names)
        self.resize, self.crop, self.channels = int(resize), int(crop), int(channels)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.metadata = dict(metadata or {})  # provenance: in the export's dmx.json, not its code

    @torch.jit.export
    def preprocess(self, images_u8: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8, one size per batch -> (B, C, crop, crop) uint8 network input."""
        if images_u8.dim() != 4 or images_u8.dtype != torch.uint8:
            raise ValueError("images must be a (B, C, H, W) uint8 tensor")
        if images_u8.shape[1] != self.channels:
            raise ValueError(
                "images have " + str(images_u8.shape[1]) + " channels, the model takes "
                + str(self.channels)
            )  # fmt: skip
        return preprocess_images(images_u8, self.resize, self.crop)

    @torch.jit.export
    def logits(self, inputs_u8: torch.Tensor) -> torch.Tensor:
        """(B, K) sum of the two nets' logits on preprocessed inputs (B, C, crop, crop) uint8."""
        x = (inputs_u8.float() / 255.0 - self.mean) / self.std  # = dmx.data.augment.normalize
        return self.net1(x).float() + self.net2(x).float()

    @torch.jit.export
    def classify(self, inputs_u8: torch.Tensor) -> torch.Tensor:
        """(B, K) probabilities of preprocessed inputs (B, C, crop, crop) uint8."""
        return F.softmax(self.logits(inputs_u8), dim=1)

    def forward(self, images_u8: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) uint8 images of any one size -> (B, K) class probabilities."""
        return self.classify(self.preprocess(images_u8))

    def record(self) -> dict[str, Any]:
        """What a user of an exported file needs: classes, input, preprocessing, provenance."""
        return {
            "class_names": list(self.class_names),
            "num_classes": self.num_classes,
            "channels": self.channels,
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "resize": self.resize,
            "crop": self.crop,
            "input": "uint8 (B, C, H, W), RGB (C=3) or grayscale (C=1), any H and W (one size "
            "per batch)",
            "output": "(B, K) float32 probabilities: softmax of the sum of the two nets' logits",
            **self.metadata,
        }


# ---------------------------------------------------------------------------------------------
# From a run or a checkpoint
# ---------------------------------------------------------------------------------------------
def ensemble_from_run(run_dir: str | Path, *, device: str | torch.device = "cpu") -> Ensemble:
    """The ensemble of a `dmx train` run directory: `config.json` names the model, the newest
    checkpoint in `checkpoints/` holds the nets (their best clean-validation weights when the
    run kept them, `run.best_on_clean_val`, else the last epoch's), and `preprocessing.json`
    the classes and preprocessing (a run written before that file existed loads its dataset)."""
    from dmx.config import Config
    from dmx.reporting import CHECKPOINT_DIR, CONFIG_FILE
    from dmx.state import load_latest_checkpoint

    run_dir = Path(run_dir)
    config = run_dir / CONFIG_FILE
    if not config.is_file():
        raise FileNotFoundError(
            f"{run_dir} has no {CONFIG_FILE}: not a `dmx train` run directory (give the folder "
            "passed to `dmx train --out`, or a checkpoint folder)."
        )
    cfg = Config.from_json(config.read_text())
    state = load_latest_checkpoint(run_dir / CHECKPOINT_DIR)
    if state is None:
        raise FileNotFoundError(
            f"{run_dir / CHECKPOINT_DIR} holds no checkpoint yet: the run has not finished an "
            "epoch."
        )
    return _build(cfg, state, _record(cfg, [run_dir]), device, source=run_dir)


def ensemble_from_checkpoint(
    checkpoint_dir: str | Path, *, device: str | torch.device = "cpu"
) -> Ensemble:
    """The ensemble of the newest checkpoint in `checkpoint_dir` (a run's `checkpoints/` or a
    Ray Tune trial's `checkpoint_*` folder), with the checkpoint's own config. The classes and
    preprocessing come from a `preprocessing.json` in the folder or its parent, else from the
    dataset named by the config (its `data.root` must be readable here)."""
    from dmx.config import Config
    from dmx.state import load_latest_checkpoint

    checkpoint_dir = Path(checkpoint_dir)
    state = load_latest_checkpoint(checkpoint_dir)
    if state is None:
        raise FileNotFoundError(f"{checkpoint_dir} holds no dmx checkpoint (ckpt-*.pt).")
    cfg = Config.from_flat(state.config)
    record = _record(cfg, [checkpoint_dir, checkpoint_dir.parent])
    return _build(cfg, state, record, device, source=checkpoint_dir)


def example_inputs(ensemble: Ensemble, cfg: Any, *, count: int = 2) -> torch.Tensor:
    """(count, C, crop, crop) uint8: the first test images of the run's dataset as network
    inputs (decoded and preprocessed when the dataset streams files), for a logged model's input
    example; mid-grey images when the data are not reachable here."""
    size = ensemble.crop or 32
    try:
        from dmx.data.decode import decode_image
        from dmx.prepare import load_run_dataset

        test = load_run_dataset(cfg.with_overrides({"data.download": False})).test
        if test.images is not None:
            return ensemble.preprocess(test.images[:count])
        images = [decode_image(f, channels=ensemble.channels) for f in test.files[:count]]
        return torch.stack([eval_image(i, resize=ensemble.resize, crop=size) for i in images])
    except (OSError, ValueError, RuntimeError):
        return torch.full((count, ensemble.channels, size, size), 128, dtype=torch.uint8)


def load_ensemble(source: str | Path, *, device: str | torch.device = "cpu") -> Ensemble:
    """A run directory (`config.json` + `checkpoints/`) or a checkpoint folder."""
    from dmx.reporting import CONFIG_FILE
    from dmx.state import list_checkpoints

    path = Path(source).expanduser()
    if (path / CONFIG_FILE).is_file():
        return ensemble_from_run(path, device=device)
    if list_checkpoints(path):
        return ensemble_from_checkpoint(path, device=device)
    raise FileNotFoundError(
        f"{source} is neither a `dmx train` run directory (config.json, checkpoints/) nor a "
        "folder of checkpoints (ckpt-*.pt)."
    )


def _record(cfg: Any, folders: list[Path]) -> dict[str, Any]:
    """The run's preprocessing record: the file the run directory holds, else made from its
    dataset (loaded, no download)."""
    from dmx.reporting import PREPROCESSING_FILE, preprocessing_record

    for folder in folders:
        path = folder / PREPROCESSING_FILE
        if path.is_file():
            return json.loads(path.read_text())
    from dmx.prepare import load_run_dataset

    return preprocessing_record(load_run_dataset(cfg.with_overrides({"data.download": False})))


def _build(
    cfg: Any, state: Any, record: dict[str, Any], device: str | torch.device, *, source: Path
) -> Ensemble:
    from dmx.models import create_model

    weights, which = (state.net1, state.net2), "final"
    if cfg.run.best_on_clean_val:
        if state.best_net1 and state.best_net2:
            weights, which = (state.best_net1, state.best_net2), "best_on_clean_val"
        else:
            warnings.warn(
                f"{source}: run.best_on_clean_val is on but the checkpoint keeps no best nets "
                "yet; using the last epoch's.",
                stacklevel=3,
            )
    nets = []
    for w in weights:
        net = create_model(
            cfg.model.name, num_classes=record["num_classes"], in_channels=record["channels"]
        )
        net.load_state_dict(w)
        nets.append(net)
    metadata = {
        "dataset": record.get("dataset", cfg.data.dataset),
        "model": cfg.model.name,
        "epochs_trained": int(state.epoch),
        "weights": which,
        "source": str(source),
    }
    ensemble = Ensemble(
        *nets,
        class_names=record["class_names"],
        mean=record["mean"],
        std=record["std"],
        resize=record["resize"],
        crop=record["crop"],
        channels=record["channels"],
        metadata=metadata,
    )
    ensemble.requires_grad_(False)  # for inference: no autograd graph behind the outputs
    return ensemble.to(device).eval()


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------
def to_torchscript(ensemble: Ensemble) -> torch.jit.ScriptModule:
    """The ensemble compiled with `torch.jit.script` (on the CPU): forward, preprocess, logits
    and classify, the class names as `class_names`. A net that TorchScript cannot compile is
    traced at the input size instead (the preprocessing, which depends on the image size, is
    always scripted)."""
    import copy

    ensemble = copy.deepcopy(ensemble).cpu().eval()
    ensemble.requires_grad_(False)  # an inference artifact: outputs carry no autograd graph
    with warnings.catch_warnings():  # deprecated in torch 2.14 (FutureWarning), still working
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated")
        try:
            return torch.jit.script(ensemble)
        except Exception:  # noqa: BLE001 - a net TorchScript cannot compile: trace the nets
            example = torch.zeros(2, ensemble.channels, ensemble.crop, ensemble.crop)
            for name in ("net1", "net2"):
                traced = torch.jit.trace(getattr(ensemble, name), example, check_trace=False)
                setattr(ensemble, name, traced)
            return torch.jit.script(ensemble)


def export_torchscript(ensemble: Ensemble, path: str | Path) -> Path:
    """Write the ensemble as one TorchScript file (atomically) with its record as the extra
    file `dmx.json`; plain torch loads it (`torch.jit.load`), no dmx needed."""
    from dmx.files import atomic_write_bytes

    scripted = to_torchscript(ensemble)
    buffer = io.BytesIO()
    extra = {EXPORT_METADATA: json.dumps(ensemble.record(), indent=2)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated")
        torch.jit.save(scripted, buffer, _extra_files=extra)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


__all__ = [
    "EXPORT_METADATA",
    "Ensemble",
    "ensemble_from_checkpoint",
    "example_inputs",
    "ensemble_from_run",
    "export_torchscript",
    "load_ensemble",
    "preprocess_images",
    "to_torchscript",
]
