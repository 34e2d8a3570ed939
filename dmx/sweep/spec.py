"""What a sweep is started with and where it lives.

- `SweepOptions`: how a sweep runs (name, storage, trials, search, resources, retries, seed, ASHA
  grace period), validated when it is made: the one argument of `run_sweep` besides the config.
- `SweepSpec`: the options plus what the driver derived (the prepared base config, MLflow ids,
  label hash, provenance), stored as JSON beside Tune's experiment state
  (`STORAGE/NAME/dmx_sweep.json`) so that `resume_sweep(path)` rebuilds the identical trainable,
  on any storage pyarrow reads (a local or shared folder, s3://, gs://).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

SPEC_FILE = "dmx_sweep.json"  # in the experiment folder: everything resume_sweep needs
OPTUNA_FILE = "optuna.db"  # in the experiment folder: the sweep's Optuna study (sqlite)
DEFAULT_GRACE_PERIOD = 16  # DivideMix epochs before ASHA may stop a trial: lambda_u's ramp-up


class SweepError(RuntimeError):
    """A sweep that cannot start or resume; the message says what to do."""


def normalize_storage(path: str | os.PathLike) -> str:
    """A sweep storage location as Tune and `dmx_sweep.json` hold it: a URI (s3://, gs://, ...)
    as given without its trailing slash, a local path absolute."""
    text = str(path)
    if "://" in text:
        return text.rstrip("/")
    return str(Path(text).expanduser().resolve())


@dataclass(frozen=True)
class SweepOptions:
    """How a sweep runs. Checked when made (SweepError naming the field and the fix)."""

    name: str
    """Sweep name: the folder under `storage_path` and the MLflow experiment."""
    storage_path: str = "ray_results"
    """Local folder, shared file system path or pyarrow URI (s3://, gs://); stored absolute."""
    num_samples: int = 20
    """Trials to run."""
    search: tuple[str, ...] = ()
    """`KEY=LOW:HIGH[:log]` / `KEY=A,B,C` dimensions (`dmx.sweep.space`)."""
    default_search: bool = True
    """Search the default dimensions (lambda_u, T, p_threshold) besides `search`."""
    max_concurrent: int = 1
    """Trials running at once."""
    cpus_per_trial: float = 1
    gpus_per_trial: float = 0
    """Fractions such as 0.5 share a GPU between trials."""
    max_failures: int = 3
    """Retries of a failed trial from its last checkpoint (-1: without limit)."""
    seed: int = 0
    """Seeds the TPE sampler."""
    grace_period: int = DEFAULT_GRACE_PERIOD
    """ASHA: DivideMix epochs (after warmup) before a trial may be stopped."""
    register_model: str = ""
    """Register the best trial's ensemble (always logged as an MLflow model) under this name in
    the Model Registry; empty: log it, register nothing."""
    optuna_storage: str = ""
    """Optuna RDB storage URL of the study (e.g. postgresql://...); empty: an sqlite file
    `optuna.db` in the sweep folder (none when the sweep's storage is a URI such as s3://)."""
    seeds: int = 1
    """Seeds per configuration: each configuration the searcher proposes trains with run.seed,
    run.seed + 1, ... (Ray Tune's Repeater) and the searcher sees their mean objective, so the
    search does not chase one lucky seed. `num_samples` counts configurations; with more than one
    seed ASHA is off (it would compare single seeds). In a grid: the seeds of every cell."""
    cells: tuple[str, ...] = ()
    """A grid instead of a search: these presets (cells), each with every seed, once (no search,
    no early stopping): `sweeps/paper.py`."""
    share_warmup: bool = True
    """Trials whose warmup would be identical train it once (`dmx.sweep.warmup`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "storage_path", normalize_storage(self.storage_path))
        object.__setattr__(self, "search", tuple(self.search))
        name = self.name
        if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
            raise SweepError(
                f"name={name!r}: a sweep name is one folder name (e.g. cifar10-asym-0.4-run1)."
            )
        if self.num_samples < 1:
            raise SweepError(f"num_samples={self.num_samples}: run at least one trial.")
        if self.max_concurrent < 1:
            raise SweepError(f"max_concurrent={self.max_concurrent}: must be >= 1.")
        cpus, gpus = self.cpus_per_trial, self.gpus_per_trial
        if not (math.isfinite(cpus) and math.isfinite(gpus)) or cpus <= 0 or gpus < 0:
            raise SweepError(
                f"cpus_per_trial={cpus}, gpus_per_trial={gpus}: need cpus > 0 and "
                "gpus >= 0 (fractions such as 0.5 share a GPU between trials)."
            )
        if self.max_failures < -1:
            raise SweepError(
                f"max_failures={self.max_failures}: must be >= 0 (or -1: retry without limit)."
            )
        if self.grace_period < 1:
            raise SweepError(f"grace_period={self.grace_period}: must be >= 1 DivideMix epoch.")
        if self.seeds < 1:
            raise SweepError(f"seeds={self.seeds}: run every configuration with at least 1 seed.")
        object.__setattr__(self, "cells", tuple(self.cells))
        if len(set(self.cells)) != len(self.cells):
            raise SweepError(f"cells={list(self.cells)}: a cell appears twice.")

    @property
    def is_grid(self) -> bool:
        return bool(self.cells)

    @property
    def path(self) -> str:
        """The sweep's experiment folder (or URI): `storage_path/name`."""
        return f"{self.storage_path.rstrip('/')}/{self.name}"


_OPTION_FIELDS = tuple(f.name for f in fields(SweepOptions))


@dataclass
class SweepSpec:
    """Everything a sweep was started with; stored as JSON in its experiment folder so that
    `resume_sweep(path)` rebuilds the identical trainable. `options.search` holds every searched
    dimension (`options.default_search` is False): the space does not depend on later defaults."""

    options: SweepOptions
    base_config: dict[str, Any]
    """The prepared, resolved flat config every trial starts from (labels made, no "auto")."""
    tracking_uri: str = ""
    experiment: str = ""
    experiment_id: str = ""
    parent_run_id: str = ""
    label_sha256: str = ""
    cell_configs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """A grid's prepared, resolved flat config per cell (labels made); empty for a search."""
    cell_label_sha256: dict[str, str] = field(default_factory=dict)
    git_commit: str = ""
    git_dirty: bool = False
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))

    @property
    def name(self) -> str:
        return self.options.name

    @property
    def path(self) -> str:
        return self.options.path

    def to_json(self) -> str:
        """One flat JSON object: the options' fields beside the driver's (the file format of
        `dmx_sweep.json` since the first sweeps)."""
        data = {**asdict(self.options), **asdict(self)}
        data.pop("options")
        data["search"] = list(self.options.search)
        data["cells"] = list(self.options.cells)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SweepSpec:
        data = json.loads(text)
        options = {k: data.pop(k) for k in _OPTION_FIELDS if k in data}
        # A stored search lists every dimension; files written before `default_search` was
        # stored hold the full list too.
        options.setdefault("default_search", False)
        return cls(options=SweepOptions(**options), **data)


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))


def read_spec(path: str) -> SweepSpec | None:
    """The spec stored in the sweep folder `path`, or None when there is none."""
    fs, base = _filesystem(path)
    target = f"{base.rstrip('/')}/{SPEC_FILE}"
    if fs.get_file_info(target).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(target) as fh:
        text = fh.read().decode(errors="replace")
    try:
        return SweepSpec.from_json(text)
    except (ValueError, TypeError) as exc:  # JSONDecodeError, a missing or unknown field
        raise SweepError(
            f"{target} is not a readable dmx sweep spec ({exc}). Restore it from a backup, or "
            "move the folder away and start the sweep again."
        ) from None


def write_spec(spec: SweepSpec) -> None:
    """Store `spec` in its sweep folder (created when missing), replacing an older copy: written
    to a temporary name first, so a reader sees the old spec or the new one, never a part."""
    fs, base = _filesystem(spec.path)
    fs.create_dir(base, recursive=True)
    target = f"{base.rstrip('/')}/{SPEC_FILE}"
    with fs.open_output_stream(target + ".tmp") as fh:
        fh.write(spec.to_json().encode())
    fs.move(target + ".tmp", target)


# --------------------------------------------------------------------------------------------
# Tune's files in the sweep folder
# --------------------------------------------------------------------------------------------
TUNE_STATE_PREFIX = "experiment_state-"  # Tune's experiment state: which trials, which checkpoint
TUNER_FILE = "tuner.pkl"  # written when a Tuner is made, before Tune saves any state


def _listing(path: str) -> tuple[pafs.FileSystem, list[pafs.FileInfo]]:
    fs, base = _filesystem(path)
    try:
        return fs, fs.get_file_info(pafs.FileSelector(base.rstrip("/")))
    except (FileNotFoundError, NotADirectoryError):
        return fs, []


def has_tune_state(path: str) -> bool:
    """Whether Tune saved its experiment state in the sweep folder `path` (Tune saves it at its
    first step, before any trial reports; `Tuner.restore` needs it)."""
    _, infos = _listing(path)
    return any(
        i.base_name.startswith(TUNE_STATE_PREFIX) and i.base_name.endswith(".json") for i in infos
    )


def clear_unstarted(path: str) -> None:
    """Remove Tune's leftovers from a sweep folder whose driver stopped after writing the spec but
    before Tune saved any state (no trial can have reported then): `tuner.pkl` and trial folders
    without checkpoints. A trial folder WITH a checkpoint here is not a case Tune produces: it is
    refused rather than deleted."""
    fs, infos = _listing(path)
    trials = [
        i for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith("trial_")
    ]
    for trial in trials:
        _, inside = _listing(trial.path)
        if any(i.base_name.startswith("checkpoint_") for i in inside):
            raise SweepError(
                f"{trial.path} holds checkpoints, but {path} has no Tune experiment state to "
                "resume them from. Move the sweep folder away (or choose another --name) and "
                "start the sweep again."
            )
    for trial in trials:
        fs.delete_dir(trial.path)
    for info in infos:
        if info.base_name == TUNER_FILE:
            fs.delete_file(info.path)


__all__ = [
    "DEFAULT_GRACE_PERIOD",
    "OPTUNA_FILE",
    "SPEC_FILE",
    "SweepError",
    "SweepOptions",
    "SweepSpec",
    "TUNER_FILE",
    "TUNE_STATE_PREFIX",
    "clear_unstarted",
    "has_tune_state",
    "normalize_storage",
    "read_spec",
    "write_spec",
]
