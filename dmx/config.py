"""One configuration type for a DivideMix run.

Frozen dataclasses, one per concern; every field carries a comment with its meaning and, where it
is a recipe constant, its source. Defaults are the reference recipe (Train_cifar.py of the
DivideMix release); every deviation from it is a named, off-by-default field. Invalid values raise
`ConfigError` naming the dotted field, the value, and the allowed range.

At the Tune/MLflow edge a config travels as a flat dict with dotted keys
(`{"dividemix.lambda_u": 25.0, ...}`): `Config.to_flat()` / `Config.from_flat()`, and
`Config.with_overrides({"optim.lr": "0.01"})` parses strings by the field's declared type (this is
what `dmx train --set key=value` uses).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal


class ConfigError(ValueError):
    """An invalid configuration value; the message names the field and the fix."""


AUTO = "auto"
Auto = Literal["auto"]
"""A field set to "auto" is derived from the dataset and the noise exactly as the reference
derives it (`Config.resolved`); an explicit value always wins."""


def _check(cond: bool, key: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}.")


Pipeline = Literal["auto", "memory", "stream"]
Resample = Literal["none", "balanced"]


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cifar10"
    """Dataset name: cifar10, cifar100, digits (scikit-learn's bundled 8x8 digits), folder
    (ROOT/<class name>/<image>), manifest (data.manifest), cub200, clothing1m, webvision."""
    root: str = "./data"
    """Folder holding the dataset (e.g. ROOT/cifar-10-batches-py, or the image folder)."""
    download: bool = False
    """Download the dataset with torchvision when it is missing (needs internet)."""
    subset: int = 0
    """Use a seeded, class-stratified subset of this many training samples (0 = all)."""
    test_subset: int = 0
    """Evaluate on a seeded subset of this many test images (0 = the whole test set)."""
    val_fraction: float = 0.0
    """Fraction of the NOISY training set held out for validation (0 = none, as the reference,
    which trains on every sample). Sweeps set 0.05 as their objective; the test set is never used
    for selection."""
    split_seed: int = 0
    """Seed of the subset and validation split; kept apart from run.seed so that every trial of a
    sweep sees the same split while the trials' own randomness differs."""
    test_root: str = ""
    """dataset=folder: the test folder (same ROOT/<class name>/<image> layout); empty = no test
    set (then only the validation splits are reported)."""
    val_root: str = ""
    """dataset=folder: an optional CLEAN validation folder (per-net accuracy every epoch)."""
    manifest: str = ""
    """dataset=manifest: a CSV or parquet file with columns path,label and optionally true_label
    and split (train/val/test); paths relative to the manifest's folder."""
    classes_file: str = ""
    """Class names, one per line, for a manifest whose labels are integers (names are shown
    wherever a label is shown)."""
    image_size: int = 0
    """File datasets: network input size (square crop); 0 = the dataset's or the model's own
    (224 for ImageNet backbones, 32 for the small CIFAR nets)."""
    resize: int = 0
    """File datasets: shorter side resized to this before cropping; 0 = the dataset's or the
    model's own (256 for a 224 crop)."""
    pipeline: Pipeline = "auto"
    """File datasets: memory (decode once into uint8 tensors, cached on disk), stream (decode
    per batch in DataLoader workers) or auto (memory when images are at most 64 px and fit
    data.memory_budget_mb)."""
    memory_budget_mb: int = 4096
    """Largest decoded training + test set the memory pipeline may hold (auto pipeline)."""
    num_workers: int = 4
    """DataLoader worker processes of the streaming pipeline (0 = decode in the main process);
    results do not depend on it."""
    skip_bad_images: bool = False
    """Leave out images that cannot be decoded (listed in a warning and in bad_images.txt)
    instead of stopping with an error naming them."""

    def __post_init__(self) -> None:
        _check(bool(self.dataset), "data.dataset", self.dataset, "name a dataset")
        _check(self.image_size >= 0, "data.image_size", self.image_size, "must be >= 0 (0 = auto)")
        _check(self.resize >= 0, "data.resize", self.resize, "must be >= 0 (0 = auto)")
        _check(
            self.pipeline in typing.get_args(Pipeline),
            "data.pipeline",
            self.pipeline,
            f"must be one of {typing.get_args(Pipeline)}",
        )
        _check(self.memory_budget_mb >= 0, "data.memory_budget_mb", self.memory_budget_mb, ">= 0")
        _check(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")
        _check(self.subset >= 0, "data.subset", self.subset, "must be >= 0 (0 = all)")
        _check(self.test_subset >= 0, "data.test_subset", self.test_subset, "must be >= 0")
        _check(
            0.0 <= self.val_fraction < 1.0,
            "data.val_fraction",
            self.val_fraction,
            "must be in [0, 1) (0 = no validation split)",
        )


# The one list of noise modes: `dmx.labels` takes a NoiseConfig, so it needs no list of its own.
NoiseMode = Literal["none", "sym", "asym", "human"]


@dataclass(frozen=True)
class NoiseConfig:
    mode: NoiseMode = "sym"
    """none, sym (uniform over ALL classes, as the reference), asym (class transition) or human
    (CIFAR-N label file)."""
    rate: float = 0.5
    """Fraction of training samples whose label is re-drawn (sym) or flipped (asym)."""
    seed: int = 0
    """Seed of the noise generator (separate from run.seed: the labels are data, not training)."""
    exclude_true_class: bool = False
    """Deviation: symmetric noise draws from the C-1 other classes (the reference: from all C)."""
    human_file: str = ""
    """CIFAR-N file (e.g. CIFAR-10_human.pt) when mode=human."""
    human_key: str = ""
    """Key in the CIFAR-N file: aggre_label, worse_label, random_label1..3, noisy_label."""
    label_file: str = ""
    """Use this noisy-label file instead of generating one: a dmx parquet (sweeps hand one to every
    trial), a JSON list of ints (as the reference writes), a 1-D .npy, or an index,label CSV."""
    cache_dir: str = ""
    """Where generated noisy-label files live (default: DATA_ROOT/noisy_labels)."""

    def __post_init__(self) -> None:
        _check(
            self.mode in typing.get_args(NoiseMode),
            "noise.mode",
            self.mode,
            f"must be one of {typing.get_args(NoiseMode)}",
        )
        _check(0.0 <= self.rate <= 1.0, "noise.rate", self.rate, "must be in [0, 1]")
        if self.mode == "human" and not self.label_file:
            _check(
                bool(self.human_file and self.human_key),
                "noise.human_file",
                self.human_file,
                "mode=human needs noise.human_file and noise.human_key",
            )


@dataclass(frozen=True)
class ModelConfig:
    name: str = "preact_resnet18"
    """Registry name (`dmx models`) or an import path `pkg.module:factory` taking num_classes=."""
    pretrained: bool = False
    """Start from the model's ImageNet weights (resnet50 for Clothing1M): torchvision's file in
    the torch hub cache, else downloaded. Models without pretrained weights refuse it."""
    weights: str = ""
    """Start from this state_dict file (torch.save(model.state_dict(), PATH), loaded
    weights-only); a classifier head of another num_classes starts fresh. Excludes pretrained."""

    def __post_init__(self) -> None:
        _check(bool(self.name), "model.name", self.name, "name a model (see `dmx models`)")
        _check(
            not (self.pretrained and self.weights),
            "model.weights",
            self.weights,
            "set either model.weights or model.pretrained=true, not both",
        )


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.02
    """SGD learning rate (reference: 0.02 on CIFAR)."""
    momentum: float = 0.9
    """SGD momentum (reference: 0.9)."""
    weight_decay: float = 5e-4
    """SGD weight decay (reference: 5e-4 on CIFAR, 1e-3 on Clothing1M)."""
    lr_decay_epochs: tuple[int, ...] = (150,)
    """Epochs at which the lr is multiplied by lr_decay_factor (reference: /10 from epoch 150)."""
    lr_decay_factor: float = 0.1
    """Multiplier applied at each lr_decay_epochs entry (reference: 0.1)."""
    batch_size: int = 64
    """Labelled and unlabelled batch size of the DivideMix epochs (reference: 64)."""
    warmup_batch_size: int = 128
    """Warmup batch size (reference: 2 x batch_size)."""
    eval_batch_size: int = 0
    """Batch size of the eval-mode passes (division losses, tests); they see no batch statistics.
    0 = by device: 64 on a CPU (small batches stay in cache: small_cnn evaluates 1.7x faster at
    64 than at 512 on the development machine), 1024 on CUDA."""

    def __post_init__(self) -> None:
        _check(self.lr > 0 and math.isfinite(self.lr), "optim.lr", self.lr, "must be > 0")
        _check(0.0 <= self.momentum < 1.0, "optim.momentum", self.momentum, "must be in [0, 1)")
        _check(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        _check(
            all(e >= 0 for e in self.lr_decay_epochs),
            "optim.lr_decay_epochs",
            self.lr_decay_epochs,
            "epochs must be >= 0",
        )
        _check(
            0.0 < self.lr_decay_factor <= 1.0,
            "optim.lr_decay_factor",
            self.lr_decay_factor,
            "must be in (0, 1]",
        )
        for name in ("batch_size", "warmup_batch_size"):
            value = getattr(self, name)
            _check(value >= 1, f"optim.{name}", value, "must be >= 1")
        _check(
            self.eval_batch_size >= 0,
            "optim.eval_batch_size",
            self.eval_batch_size,
            "must be >= 0 (0 = by device)",
        )


@dataclass(frozen=True)
class DivideMixConfig:
    warmup_epochs: int | Auto = AUTO
    """Cross-entropy warmup epochs; auto = the reference's: 30 on CIFAR-100, else 10 (CIFAR-10)."""
    lambda_u: float = 25.0
    """Weight of the unlabelled loss (paper appendix: per noise setting, see presets)."""
    T: float = 0.5
    """Sharpening temperature (paper: 0.5)."""
    alpha: float = 4.0
    """Beta(alpha, alpha) of MixMatch (paper: 4 on CIFAR, 0.5 on Clothing1M/WebVision)."""
    p_threshold: float = 0.5
    """Clean-probability threshold of the co-divide (paper: 0.5; 0.6 at 90% noise)."""
    rampup_length: float = 16.0
    """Epochs over which lambda_u ramps linearly from 0 after warmup (reference: 16)."""
    loss_history_window: int | Auto = AUTO
    """Average the normalised loss over the last k epochs before the GMM; auto = the reference's:
    5 when noise.rate == 0.9 (its `args.r == 0.9`), else 1."""
    warmup_confidence_penalty: bool | Auto = AUTO
    """Add mean sum p log p to the warmup loss; auto = the reference's: on iff noise.mode=asym."""
    prior_penalty: bool = True
    """Uniform-prior penalty on the mixed batch (reference: always on)."""
    co_guess_eval_mode: bool = False
    """Deviation: run the training net's no-grad guessing passes in eval mode. The reference runs
    them in TRAIN mode (batch statistics, running stats updated)."""
    gmm_max_iter: int = 10
    """GaussianMixture max_iter (reference: 10)."""
    gmm_tol: float = 1e-2
    """GaussianMixture tol (reference: 1e-2)."""
    gmm_reg_covar: float = 5e-4
    """GaussianMixture reg_covar (reference: 5e-4)."""
    resample: Resample = "none"
    """none (every epoch sees the whole training set, as on CIFAR) or balanced (the reference's
    Clothing1M): every epoch each net warms up on its own fresh class-balanced subset of
    num_batches x warmup_batch_size images, divides a fresh class-balanced subset of
    num_batches x batch_size images, and its PEER trains on that subset's division."""
    num_batches: int = 1000
    """resample=balanced: batches per epoch that size the subsets (reference: 1000)."""
    mix_labeled_only: bool = False
    """Train only on the first 2B rows of the mixed batch (their mixing partners may be
    unlabelled): loss = Lx + prior penalty, no Lu, no ramp-up (the reference's Clothing1M and
    WebVision scripts). Off: the CIFAR recipe, Lx + lambda_u * Lu + penalty on all rows."""
    peer_snapshot: bool = False
    """Deviation: net2 co-guesses with net1 as it was at the START of the epoch (the reference's
    Train_webvision_parallel.py, where both nets train at once on two GPUs); off: net2's peer is
    the net1 of this epoch's update, as Train_cifar.py."""

    def __post_init__(self) -> None:
        _check(
            self.warmup_epochs == AUTO or self.warmup_epochs >= 0,
            "dividemix.warmup_epochs",
            self.warmup_epochs,
            "must be auto or >= 0",
        )
        _check(
            self.lambda_u >= 0 and math.isfinite(self.lambda_u),
            "dividemix.lambda_u",
            self.lambda_u,
            "must be >= 0 (paper: 0 to 150)",
        )
        _check(
            self.T > 0 and math.isfinite(self.T),
            "dividemix.T",
            self.T,
            "must be > 0 (paper: 0.5; 1 = no sharpening)",
        )
        _check(self.alpha > 0, "dividemix.alpha", self.alpha, "must be > 0 (Beta parameter)")
        _check(
            0.0 <= self.p_threshold <= 1.0,
            "dividemix.p_threshold",
            self.p_threshold,
            "must be in [0, 1] (paper: 0.5)",
        )
        _check(self.rampup_length > 0, "dividemix.rampup_length", self.rampup_length, "must be > 0")
        _check(
            self.loss_history_window == AUTO or self.loss_history_window >= 1,
            "dividemix.loss_history_window",
            self.loss_history_window,
            "must be auto or >= 1",
        )
        _check(self.gmm_max_iter >= 1, "dividemix.gmm_max_iter", self.gmm_max_iter, "must be >= 1")
        _check(self.gmm_tol > 0, "dividemix.gmm_tol", self.gmm_tol, "must be > 0")
        _check(
            self.gmm_reg_covar >= 0, "dividemix.gmm_reg_covar", self.gmm_reg_covar, "must be >= 0"
        )
        _check(
            self.resample in typing.get_args(Resample),
            "dividemix.resample",
            self.resample,
            f"must be one of {typing.get_args(Resample)}",
        )
        _check(self.num_batches >= 1, "dividemix.num_batches", self.num_batches, "must be >= 1")
        _check(
            self.resample == "none" or self.loss_history_window in (AUTO, 1),
            "dividemix.loss_history_window",
            self.loss_history_window,
            "must be 1 (or auto) with dividemix.resample=balanced (each epoch divides new samples)",
        )


Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class RunConfig:
    epochs: int = 301
    """Total epochs. The reference loops `range(num_epochs + 1)` with num_epochs=300: 301 epochs."""
    seed: int = 123
    """Seed of model init, augmentation, mixup and GMM (reference: 123)."""
    device: str = "auto"
    """auto (CUDA when present, else CPU), cpu, cuda, cuda:N."""
    precision: Precision = "fp32"
    """fp32 (exact, the default) or bf16 (autocast on CPU and CUDA; faster, not bit-exact)."""
    channels_last: bool = False
    """channels_last memory format for model and inputs (faster convolutions on many devices)."""
    deterministic: bool = True
    """Deterministic algorithms and cudnn.benchmark off: resume is bit-identical on CPU."""
    fast: bool = False
    """Deviation (changes the numerics): what the hardware supports to go faster: channels_last
    (images of more than one channel), torch.compile of both nets on CUDA (not on a CPU, where
    compiled kernels would break bit-exact resume), bf16 autocast only where it is native (CUDA,
    or a CPU with avx512_bf16 / amx_bf16; elsewhere it is 5-10x slower), cudnn.benchmark on
    CUDA. Resume stays bit-exact within the mode on the same CPU (`dmx.fast`)."""
    keep_checkpoints: int = 2
    """How many epoch checkpoints to keep in RUN_DIR/checkpoints (>= 2 lets a corrupt latest
    checkpoint fall back to the previous one)."""
    best_on_clean_val: bool = False
    """Keep each net's weights of its best epoch on the dataset's clean validation split and
    report the test accuracy of those two as an ensemble at the end (final_test_acc; the
    reference's Clothing1M). Needs a dataset with a clean validation split."""

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "run.epochs", self.epochs, "must be >= 1")
        _check(
            self.precision in typing.get_args(Precision),
            "run.precision",
            self.precision,
            f"must be one of {typing.get_args(Precision)}",
        )
        _check(
            self.device == "auto"
            or self.device == "cpu"
            or self.device.startswith("cuda")
            or self.device == "mps",
            "run.device",
            self.device,
            "must be auto, cpu, cuda, cuda:N or mps",
        )
        _check(
            self.keep_checkpoints >= 1,
            "run.keep_checkpoints",
            self.keep_checkpoints,
            "must be >= 1",
        )


_SECTIONS = ("data", "noise", "model", "optim", "dividemix", "run")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    dividemix: DivideMixConfig = field(default_factory=DivideMixConfig)
    run: RunConfig = field(default_factory=RunConfig)
    preset: str = ""
    """Name of the preset this config started from (provenance only)."""

    # ---- flat dotted-key dicts: the Tune / MLflow / CLI edge -------------------------------
    def to_flat(self) -> dict[str, Any]:
        """`{"section.field": value}` with JSON-friendly values (tuples become lists)."""
        flat: dict[str, Any] = {"preset": self.preset}
        for section in _SECTIONS:
            sub = getattr(self, section)
            for f in dataclasses.fields(sub):
                value = getattr(sub, f.name)
                flat[f"{section}.{f.name}"] = list(value) if isinstance(value, tuple) else value
        return flat

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> Config:
        """Inverse of `to_flat`; missing keys take defaults, unknown keys raise ConfigError."""
        return cls().with_overrides(flat)

    def with_overrides(self, overrides: dict[str, Any]) -> Config:
        """A copy with dotted-key overrides; string values are parsed by the field's type."""
        per_section: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
        preset = self.preset
        for key, raw in overrides.items():
            if key == "preset":
                preset = str(raw)
                continue
            section, _, name = key.partition(".")
            types = _field_types().get(section)
            if types is None or name not in types:
                close = difflib.get_close_matches(key, list(_all_keys()), n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(
                    f"Unknown config key {key!r}.{hint} `dmx config --docs` lists every key."
                )
            per_section[section][name] = _coerce(key, types[name], raw)
        kwargs: dict[str, Any] = {"preset": preset}
        for section in _SECTIONS:
            sub = getattr(self, section)
            kwargs[section] = (
                dataclasses.replace(sub, **per_section[section]) if per_section[section] else sub
            )
        return Config(**kwargs)

    # ---- "auto" fields: derived from the dataset and the noise as the reference derives them ----
    def resolved(self) -> Config:
        """A copy with every "auto" field replaced by its derived value (idempotent)."""
        derived = {key: value for key, (value, _) in self._derived().items()}
        return self.with_overrides(derived) if derived else self

    def auto_sources(self) -> dict[str, str]:
        """For each field that is "auto" here: the value it resolves to and why."""
        return {key: f"auto -> {value!r}: {why}" for key, (value, why) in self._derived().items()}

    def _derived(self) -> dict[str, tuple[Any, str]]:
        dm, out = self.dividemix, {}
        if dm.warmup_epochs == AUTO:
            cifar100 = self.data.dataset == "cifar100"
            out["dividemix.warmup_epochs"] = (
                30 if cifar100 else 10,
                "Train_cifar.py warm_up = 30 for cifar100"
                if cifar100
                else "Train_cifar.py warm_up = 10 for cifar10 (and any other dataset)",
            )
        if dm.warmup_confidence_penalty == AUTO:
            asym = self.noise.mode == "asym"
            out["dividemix.warmup_confidence_penalty"] = (
                asym,
                "Train_cifar.py adds NegEntropy in warmup iff noise_mode == 'asym'",
            )
        if dm.loss_history_window == AUTO:
            # The reference's own test is float equality on the noise rate (`args.r == 0.9`).
            high = self.noise.rate == 0.9 and self.noise.mode in ("sym", "asym")
            out["dividemix.loss_history_window"] = (
                5 if high else 1,
                "Train_cifar.py averages the last 5 epochs' losses iff r == 0.9",
            )
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_flat(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_flat(json.loads(text))


def _field_types() -> dict[str, dict[str, Any]]:
    hints = {}
    for section in _SECTIONS:
        klass = typing.get_type_hints(Config)[section]
        hints[section] = typing.get_type_hints(klass)
    return hints


def _all_keys() -> list[str]:
    return [f"{s}.{n}" for s, names in _field_types().items() for n in names]


def field_docs() -> dict[str, str]:
    """Dotted key -> the field's docstring (parsed from the source), for `--help-config`."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    for section in _SECTIONS:
        klass = typing.get_type_hints(Config)[section]
        tree = ast.parse(inspect.getsource(klass))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[f"{section}.{node.target.id}"] = " ".join(nxt.value.value.split())
    return docs


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(key: str, typ: Any, raw: Any) -> Any:
    """Parse `raw` (string from the CLI, or a JSON value) into the field's declared type."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):  # `int | Auto`: "auto", else the other type
        if raw == AUTO:
            return AUTO
        (other,) = [t for t in typing.get_args(typ) if typing.get_origin(t) is not Literal]
        try:
            return _coerce(key, other, raw)
        except ConfigError:
            raise ConfigError(
                f"{key}={raw!r} is invalid: expected auto or {other.__name__}."
            ) from None
    try:
        if typ is bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError("expected true/false")
        if typ is int:
            if isinstance(raw, bool):
                raise ValueError("expected an integer")
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError("expected an integer")
            return int(str(raw).strip()) if isinstance(raw, str) else int(raw)
        if typ is float:
            if isinstance(raw, bool):
                raise ValueError("expected a number")
            return float(raw)
        if typ is str:
            return str(raw)
        if origin is Literal:
            allowed = typing.get_args(typ)
            if raw not in allowed:
                raise ValueError(f"expected one of {allowed}")
            return raw
        if origin is tuple:
            if isinstance(raw, str):
                items = [p for p in raw.replace("[", "").replace("]", "").split(",") if p.strip()]
            else:
                items = list(raw)
            return tuple(int(str(x).strip()) for x in items)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{key}={raw!r} is invalid: {exc}.") from None
    raise ConfigError(f"{key}: unsupported field type {typ!r}")  # pragma: no cover
