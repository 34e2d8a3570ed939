"""Everything a run needs to continue bit-for-bit, and its atomic, checksummed files.

A `TrainState` holds only tensors and plain Python types so that it loads with
`torch.load(weights_only=True)`: loading a checkpoint can never run code. Files are written
atomically (temp file, fsync, rename, fsync of the folder) with a sha256 sidecar; loading verifies
the checksum and, when the newest checkpoint is damaged, falls back to the previous good one.
"""

from __future__ import annotations

import io
import random
import re
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dmx.files import atomic_write_bytes, sha256_bytes

_CKPT_RE = re.compile(r"^ckpt-(\d{4,})\.pt$")
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


@dataclass
class TrainState:
    config: dict[str, Any]
    """The resolved flat config of the run (provenance, and checked on resume)."""
    epoch: int = 0
    """Completed epochs: a resumed run starts at this epoch."""
    net1: dict[str, torch.Tensor] = field(default_factory=dict)
    net2: dict[str, torch.Tensor] = field(default_factory=dict)
    opt1: dict[str, Any] = field(default_factory=dict)
    opt2: dict[str, Any] = field(default_factory=dict)
    loss_history1: torch.Tensor | None = None
    """(k, N) normalised per-sample losses of net1's last k evaluations (k <= history window)."""
    loss_history2: torch.Tensor | None = None
    clean_prob1: torch.Tensor | None = None
    """(N,) float64 clean probabilities of net1's latest division."""
    clean_prob2: torch.Tensor | None = None
    rng: dict[str, Any] = field(default_factory=dict)
    """torch (CPU generator and global), CUDA and numpy generator states."""
    metrics_history: list[dict[str, float]] = field(default_factory=list)
    noisy_labels_path: str = ""
    noisy_labels_sha256: str = ""
    mlflow_run_id: str = ""
    """The MLflow run this state logs to, so a resumed run continues it."""
    best_net1: dict[str, torch.Tensor] = field(default_factory=dict)
    """run.best_on_clean_val: net1's weights of its best epoch on the clean validation split."""
    best_net2: dict[str, torch.Tensor] = field(default_factory=dict)
    best_clean_val: list[float] = field(default_factory=lambda: [-1.0, -1.0])
    """Clean-validation accuracy (%) of best_net1 / best_net2 (-1: none kept yet)."""
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def checkpoint_path(directory: Path, epoch: int) -> Path:
    """`directory/ckpt-EPOCH.pt`: EPOCH = completed epochs of the TrainState inside."""
    return Path(directory) / f"ckpt-{epoch:04d}.pt"


def checkpoint_epoch(name: str) -> int | None:
    """The epoch a checkpoint file name (`ckpt-0012.pt`) states, None for any other name: lets a
    folder listing order checkpoints without loading them (local or remote storage)."""
    m = _CKPT_RE.match(name)
    return int(m.group(1)) if m else None


def save_checkpoint(state: TrainState, directory: Path, *, keep: int = 2) -> Path:
    """Write `state` as `directory/ckpt-EPOCH.pt` (+ `.sha256`), keep the newest `keep` files."""
    directory = Path(directory)
    buffer = io.BytesIO()
    torch.save(state.to_dict(), buffer)
    data = buffer.getvalue()
    path = checkpoint_path(directory, state.epoch)
    # The checksum goes first: a checkpoint without its sidecar is treated as incomplete.
    atomic_write_bytes(path.with_name(path.name + ".sha256"), (sha256_bytes(data) + "\n").encode())
    atomic_write_bytes(path, data)
    for old in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(e, p) for p in directory.iterdir() if (e := checkpoint_epoch(p.name)) is not None]
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> TrainState:
    """Load one checkpoint, verifying its checksum; never executes code from the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"Cannot read checkpoint {path}: {exc}.") from exc
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.exists():
        raise CheckpointError(
            f"Checkpoint {path} has no checksum file {sidecar.name}: it was not written "
            "completely. Delete it to resume from the previous checkpoint."
        )
    expected = sidecar.read_text().strip()
    if sha256_bytes(data) != expected:
        raise CheckpointError(
            f"Checkpoint {path} is corrupt (sha256 mismatch: the file was truncated or altered). "
            "Delete it to resume from the previous checkpoint."
        )
    try:
        raw = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError and others for foreign content
        # One line (it becomes an MLflow failure_reason tag): the global the file tried to load,
        # not torch's advice to retry with weights_only=False.
        lines = [x.strip() for x in str(exc).splitlines() if x.strip()] or [type(exc).__name__]
        named = [x for x in lines if x.startswith("Unsupported") or "GLOBAL" in x]
        reason = (
            named[0].split(" was not an allowed global")[0]
            if named
            else ("not a weights-only torch file" if "weights_only" in lines[0] else lines[0])
        )
        raise CheckpointError(
            f"Checkpoint {path} holds content that is not a dmx TrainState and was refused "
            f"(nothing from it was run): {reason.rstrip('.')}. Delete it; never load it with "
            "weights_only=False."
        ) from exc
    if not isinstance(raw, dict) or "config" not in raw:
        raise CheckpointError(f"Checkpoint {path} is not a dmx TrainState.")
    return TrainState.from_dict(raw)


def load_latest_checkpoint(
    directory: Path, *, map_location: str | torch.device = "cpu"
) -> TrainState | None:
    """The newest checkpoint in `directory` that verifies; older ones are tried when the newest is
    damaged (with a warning naming the damaged file). None when the folder holds no checkpoint;
    CheckpointError when it holds checkpoints but none of them is usable."""
    candidates = list_checkpoints(directory)
    errors = []
    for path in reversed(candidates):
        try:
            state = load_checkpoint(path, map_location=map_location)
        except CheckpointError as exc:
            errors.append(str(exc))
            warnings.warn(f"{exc} Trying an older checkpoint.", stacklevel=2)
            continue
        return state
    if errors:
        raise CheckpointError(
            f"No usable checkpoint in {directory}: "
            + " | ".join(errors)
            + " Start a new run (without --resume) or restore the files from a backup."
        )
    return None


def rng_state(gen: torch.Generator, np_rng: np.random.Generator) -> dict[str, Any]:
    """Every random stream of the loop (its CPU generator, the global torch, CUDA, numpy and Python
    states), as plain tensors and tuples that load weights-only."""
    state: dict[str, Any] = {
        "loop": gen.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": np_rng.bit_generator.state,
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], gen: torch.Generator, np_rng: np.random.Generator) -> None:
    """Restore what `rng_state` captured into `gen`, `np_rng` and the global generators."""
    gen.set_state(state["loop"])
    torch.set_rng_state(state["torch"])
    np_rng.bit_generator.state = state["numpy"]
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = [
    "CheckpointError",
    "TrainState",
    "checkpoint_epoch",
    "checkpoint_path",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "rng_state",
    "set_rng_state",
    "save_checkpoint",
]
