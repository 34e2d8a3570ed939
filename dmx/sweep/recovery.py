"""A restarted trial's TrainState: from the newest INTACT checkpoint in its storage folder.

Ray Tune restores a trial from the checkpoint its experiment state names; dmx looks further
(docs/fault_tolerance.md):
- Tune saves its experiment state every ~10 s, so a driver killed right after a trial's report
  restores that trial from an older checkpoint, or from none; the trial's storage folder has the
  newer one (`newest_checkpoint`);
- a driver killed while Tune copied a checkpoint to storage leaves a truncated file that Tune never
  recorded: passed over (`intact`);
- a damaged checkpoint falls back to the newest older one that verifies (`restore_state`), whose
  stored epoch must be the one its name states;
- checkpoints are ordered by the EPOCH in their file names (`dmx.state.checkpoint_epoch`), never
  by Tune's folder numbers, which restart too low after a driver resume.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
from ray import tune

from dmx.files import sha256_stream
from dmx.state import (
    CheckpointError,
    checkpoint_epoch,
    checkpoint_path,
    load_checkpoint,
    load_latest_checkpoint,
)


def _epochs_in(fs: pafs.FileSystem, folder: str) -> list[int]:
    """Epochs of the dmx checkpoint files in `folder`, newest first ([] when none or unlistable).
    A folder may hold two: after a driver resume, Tune's folder counter can restart below the
    existing folders and write a new checkpoint into an old folder."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(folder))
    except OSError:
        return []
    epochs = (e for i in infos if (e := checkpoint_epoch(i.base_name)) is not None)
    return sorted(epochs, reverse=True)


def newest_epoch(fs: pafs.FileSystem, folder: str) -> int | None:
    """The newest epoch among the dmx checkpoint files in `folder`, None when it holds none."""
    epochs = _epochs_in(fs, folder)
    return epochs[0] if epochs else None


def trial_checkpoints(fs: pafs.FileSystem, trial_path: str) -> list[tuple[int, str]]:
    """(epoch, folder) of every dmx checkpoint file in the trial's `checkpoint_*` folders, newest
    EPOCH first. Folder names are no age order: after a driver resume Tune may number new
    checkpoints below older ones (issue 11, item 5)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(trial_path))
    except OSError:
        return []
    found = [
        (epoch, info.path)
        for info in infos
        if info.type == pafs.FileType.Directory and info.base_name.startswith("checkpoint_")
        for epoch in _epochs_in(fs, info.path)
    ]
    return sorted(found, reverse=True)


def _split(checkpoint: tune.Checkpoint) -> tuple[pafs.FileSystem, str, str]:
    """(file system, trial folder, checkpoint folder) of a Tune checkpoint."""
    path = checkpoint.path.rstrip("/")
    return checkpoint.filesystem, path.rpartition("/")[0], path


def _candidates(checkpoint: tune.Checkpoint) -> list[tuple[int | None, str]]:
    """(epoch, folder) of the checkpoint files to try for a restore from `checkpoint`, in order:
    its newest file, then every older file of the trial (in any folder), newest epoch first.
    Epoch None: `checkpoint` holds no readable checkpoint file (tried first, then all others)."""
    fs, trial_path, path = _split(checkpoint)
    own = _epochs_in(fs, path)
    if not own:
        return [(None, path), *trial_checkpoints(fs, trial_path)]
    others = [(e, p) for e, p in trial_checkpoints(fs, trial_path) if p != path and e < own[0]]
    mine = [(e, path) for e in own]
    # Newest epoch first; on a tie Tune's own folder first.
    return sorted(mine + others, key=lambda c: (c[0], c[1] == path), reverse=True)


def trial_storage() -> tuple[pafs.FileSystem, str] | None:
    """(file system, path) of this trial's folder on the sweep's storage (shared by every node),
    or None outside a Tune session.

    The one use of a non-stable Ray API (checked on Ray 2.60): `ray.tune.get_context()` is public,
    but its `get_storage()` is a DeveloperAPI ("the StorageContext interface may change without
    notice between minor versions"). No public call gives this folder: `get_trial_dir()` is the
    node-local working folder, and `tune.get_checkpoint()` is None before the first report."""
    try:
        storage = tune.get_context().get_storage()  # None (with a warning) outside a session
        return storage.storage_filesystem, storage.trial_fs_path
    except Exception:  # noqa: BLE001 - no session, or the interface changed: nothing to share
        return None


def intact(fs: pafs.FileSystem, folder: str, epoch: int) -> bool:
    """Whether `folder`'s ckpt-EPOCH.pt matches its sha256 sidecar (read through `fs`, so remote
    storage works too). A driver killed while Tune copied a trial's checkpoint to storage leaves
    a truncated file that Tune never recorded."""
    name = f"{folder}/{checkpoint_path(Path(), epoch).name}"
    try:
        with fs.open_input_stream(name + ".sha256") as fh:
            expected = fh.read().decode().strip()
        with fs.open_input_stream(name) as fh:
            return sha256_stream(fh) == expected
    except (OSError, UnicodeDecodeError):
        return False


def newest_checkpoint(checkpoint: tune.Checkpoint | None) -> tune.Checkpoint | None:
    """The trial's checkpoint folder with the newest INTACT epoch, when that epoch is newer than
    the one of the checkpoint Tune restores from. Tune saves its experiment state every ~10 s, so
    a driver killed right after a trial's report restores that trial from the previous
    checkpoint, or from none (epoch 0); the trial's storage folder has the newer one. A newer one
    that does not verify is a copy the killed driver left half-written (Tune never recorded it):
    it is passed over with a warning. A checkpoint whose epoch cannot be read (its file is
    missing) is left to `restore_state`'s fallback."""
    try:
        if checkpoint is not None:
            fs, trial_path, path = _split(checkpoint)
            current = newest_epoch(fs, path)
            if current is None:
                return checkpoint
        else:
            where = trial_storage()
            if where is None:
                return checkpoint
            (fs, trial_path), path, current = where, "", -1
        found = trial_checkpoints(fs, trial_path)
    except Exception:  # noqa: BLE001 - keep Tune's choice when the folder cannot be listed
        return checkpoint
    for epoch, newest in found:
        if epoch <= current or newest == path:
            return checkpoint
        if not intact(fs, newest, epoch):
            warnings.warn(
                f"Checkpoint {newest} (epoch {epoch}) is incomplete (its file does not match its "
                "checksum: the driver stopped while it was being copied); passing it over.",
                stacklevel=2,
            )
            continue
        warnings.warn(
            "Tune restores this trial from "
            + (f"{checkpoint.path} (epoch {current})" if checkpoint else "scratch")
            + f", but its newer checkpoint {newest} (epoch {epoch}) exists (the driver stopped "
            "before recording it): resuming from that one.",
            stacklevel=2,
        )
        return tune.Checkpoint(newest, filesystem=fs)
    return checkpoint


def restore_state(checkpoint: tune.Checkpoint) -> Any:
    """The TrainState in Tune's latest checkpoint of this trial, or, when that one is damaged
    (checksum mismatch, truncated, missing file), in the newest older checkpoint file of the trial
    that verifies (ordered by the epoch in its name, never by folder name). A trial that has a
    checkpoint never silently starts again from epoch 0: with no usable checkpoint left this
    raises CheckpointError."""
    errors = []
    for epoch, folder in _candidates(checkpoint):
        candidate = tune.Checkpoint(folder, filesystem=checkpoint.filesystem)
        try:
            with candidate.as_directory() as ckpt_dir:
                if epoch is None:
                    state = load_latest_checkpoint(Path(ckpt_dir))
                else:
                    state = load_checkpoint(checkpoint_path(Path(ckpt_dir), epoch))
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        if state is None:
            errors.append(f"{folder} holds no dmx checkpoint file.")
            continue
        if epoch is not None and state.epoch != epoch:
            errors.append(f"{folder}: ckpt-{epoch:04d}.pt holds epoch {state.epoch}.")
            continue
        if errors:
            warnings.warn(
                f"Tune's latest checkpoint {checkpoint.path} is unusable ({errors[0]}); resuming "
                f"from {folder} (epoch {state.epoch}) instead.",
                stacklevel=2,
            )
        return state
    raise CheckpointError(
        f"No usable checkpoint for this trial (latest: {checkpoint.path}): "
        + " | ".join(errors)
        + " Restart the trial from scratch (resume_sweep(..., restart_errored=True)) or restore "
        "the files from a backup."
    )


__all__ = [
    "intact",
    "newest_checkpoint",
    "newest_epoch",
    "restore_state",
    "trial_checkpoints",
    "trial_storage",
]
