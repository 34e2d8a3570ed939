"""Where a sweep lives and what it was started with: `SweepSpec`, stored as JSON beside Tune's
experiment state (`STORAGE/NAME/dmx_sweep.json`) so that `resume_sweep(path)` rebuilds the
identical trainable, on any storage pyarrow reads (a local or shared folder, s3://, gs://)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

SPEC_FILE = "dmx_sweep.json"  # in the experiment folder: everything resume_sweep needs


@dataclass
class SweepSpec:
    """Everything a sweep was started with; stored as JSON in its experiment folder so that
    `resume_sweep(path)` rebuilds the identical trainable."""

    name: str
    storage_path: str
    base_config: dict[str, Any]
    search: list[str]
    num_samples: int
    max_concurrent: int
    cpus_per_trial: float
    gpus_per_trial: float
    max_failures: int
    seed: int
    grace_period: int
    tracking_uri: str = ""
    experiment: str = ""
    experiment_id: str = ""
    parent_run_id: str = ""
    label_sha256: str = ""
    git_commit: str = ""
    git_dirty: bool = False
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S"))

    @property
    def path(self) -> str:
        return _join(self.storage_path, self.name)


def normalize_storage(path: str | os.PathLike) -> str:
    """A sweep storage location as Tune and `dmx_sweep.json` hold it: a URI (s3://, gs://, ...)
    as given without its trailing slash, a local path absolute."""
    text = str(path)
    if "://" in text:
        return text.rstrip("/")
    return str(Path(text).expanduser().resolve())


def _join(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}"


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))


def read_spec(path: str) -> SweepSpec | None:
    """The spec stored in the sweep folder `path`, or None when there is none."""
    fs, base = _filesystem(path)
    target = f"{base.rstrip('/')}/{SPEC_FILE}"
    if fs.get_file_info(target).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(target) as fh:
        return SweepSpec(**json.loads(fh.read().decode()))


def write_spec(spec: SweepSpec) -> None:
    """Store `spec` in its sweep folder (created when missing), replacing an older copy."""
    fs, base = _filesystem(spec.path)
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base.rstrip('/')}/{SPEC_FILE}") as fh:
        fh.write((json.dumps(asdict(spec), indent=2, sort_keys=True) + "\n").encode())


__all__ = ["SPEC_FILE", "SweepSpec", "normalize_storage", "read_spec", "write_spec"]
