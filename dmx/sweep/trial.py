"""The Ray Tune trainable: one DivideMix run per trial of a sweep.

A trial runs `dmx.train.fit` with two reporters: MLflow (`dmx.tracking.MlflowReporter`, the
trial's own nested run: config and labels at the start, metrics per epoch, clean_probs.parquet at
the end) and Tune (`TuneReporter`: `tune.report` with a checkpoint of the full TrainState at every
epoch end). A retried trial (lost node, crash) or a restored sweep (killed driver, `resume_sweep`)
restarts from the newest usable checkpoint and keeps writing to the same MLflow run (its id is in
the TrainState; the `dmx.trial_id` tag finds it otherwise), skipping steps the run already holds.

Every trial uses the same `run.seed` (common random numbers: trials differ only by their
hyperparameters, and a restored trial continues bit-for-bit).
"""

from __future__ import annotations

import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray
import torch
from ray import tune

from dmx import tracking
from dmx.config import Config
from dmx.files import sha256_file, sha256_stream
from dmx.reporting import Reporter, Reporters
from dmx.state import (
    CheckpointError,
    TrainState,
    checkpoint_path,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)
from dmx.tracking import ui
from dmx.train import NonFiniteLossError, fit

TIME_ATTR = "dm_epoch"  # DivideMix epochs completed (0 during warmup): ASHA's clock
NONFINITE_FILE = "dmx_nonfinite.txt"  # in a trial's storage folder: its NaN, for its retries
LIVE_TABLE_METRICS = ("val_acc", "test_acc", "best_test_acc", "epoch")


@dataclass(frozen=True)
class TrialContext:
    """What the driver hands every trial of one driver session (through `tune.with_parameters`):
    the MLflow ids, the noisy-label hash and the provenance, computed once on the driver."""

    name: str
    """The sweep's name (tagged `dmx.sweep` on every trial run)."""
    tracking_uri: str = ""
    """The MLflow store; empty when the sweep is not tracked."""
    experiment_id: str = ""
    """The sweep's MLflow experiment."""
    parent_run_id: str = ""
    """The sweep's parent run: every trial run is nested under it."""
    label_sha256: str = ""
    """sha256 of the noisy-label file every trial must train on (empty: nothing to check)."""
    git_commit: str = ""
    """The driver's commit (provenance tag of every trial run)."""
    git_dirty: bool = False
    """Whether the driver's work tree had uncommitted changes."""
    cpus_per_trial: float = 1
    """Torch threads per trial: the same on every attempt, so float sums run in the same order."""
    fresh_trials: tuple[str, ...] = ()
    """Trial ids restarted from scratch on purpose (`resume_sweep(restart_errored=True)`): they
    must not pick up their old checkpoints."""
    session: str = ""
    """Id of this driver session: a NaN note left by an earlier session fails no retry (see
    `_fail_fast_if_nonfinite`)."""
    searched: tuple[str, ...] = ()
    """The searched config keys: a trial's MLflow run is named by its values of them."""


def dm_epoch(epoch: int, warmup_epochs: int) -> int:
    """DivideMix epochs completed at the end of 0-based `epoch` (0 during warmup)."""
    return max(0, epoch - warmup_epochs + 1)


class TuneReporter(Reporter):
    """Hands Tune every epoch's metrics (plus `dm_epoch`, ASHA's clock) and a checkpoint of the
    full TrainState. The checkpoint is written to a temporary folder that `tune.report` copies to
    the trial's `checkpoint_NNNNNN` folder on the sweep's storage; nothing else stays on disk."""

    def __init__(self, *, warmup_epochs: int) -> None:
        self.warmup_epochs = warmup_epochs

    def epoch_end(self, epoch: int, metrics: dict[str, float], state: TrainState) -> None:
        with tempfile.TemporaryDirectory(prefix="dmx-report-") as tmp:
            save_checkpoint(state, Path(tmp), keep=1)
            # Ray's live table shows the first 4 metrics of a result: the objective first.
            first = {k: metrics[k] for k in LIVE_TABLE_METRICS if k in metrics}
            result = {**first, **metrics, TIME_ATTR: dm_epoch(epoch, self.warmup_epochs)}
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


# --------------------------------------------------------------------------------------------
# Checkpoint recovery
# --------------------------------------------------------------------------------------------
# The name `dmx.state.checkpoint_path` gives a checkpoint file: ckpt-EPOCH.pt, EPOCH = completed
# epochs of the TrainState inside. Read from a folder listing, it orders checkpoints without
# loading any (tests/test_sweep.py pins it to checkpoint_path).
_CKPT_NAME = re.compile(r"^ckpt-(\d+)\.pt$")


def _epochs_in(fs: pafs.FileSystem, folder: str) -> list[int]:
    """Epochs of the dmx checkpoint files in `folder`, newest first ([] when none or unlistable).
    A folder may hold two: after a driver resume, Tune's folder counter can restart below the
    existing folders and write a new checkpoint into an old folder."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(folder))
    except OSError:
        return []
    epochs = (int(m.group(1)) for i in infos if (m := _CKPT_NAME.match(i.base_name)))
    return sorted(epochs, reverse=True)


def checkpoint_epoch(fs: pafs.FileSystem, folder: str) -> int | None:
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


def _trial_storage() -> tuple[pafs.FileSystem, str] | None:
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


def _intact(fs: pafs.FileSystem, folder: str, epoch: int) -> bool:
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


def _newest_checkpoint(checkpoint: tune.Checkpoint | None) -> tune.Checkpoint | None:
    """The trial's checkpoint folder with the newest INTACT epoch, when that epoch is newer than
    the one of the checkpoint Tune restores from. Tune saves its experiment state every ~10 s, so
    a driver killed right after a trial's report restores that trial from the previous
    checkpoint, or from none (epoch 0); the trial's storage folder has the newer one. A newer one
    that does not verify is a copy the killed driver left half-written (Tune never recorded it):
    it is passed over with a warning. A checkpoint whose epoch cannot be read (its file is
    missing) is left to `_restore_state`'s fallback."""
    try:
        if checkpoint is not None:
            fs, trial_path, path = _split(checkpoint)
            current = checkpoint_epoch(fs, path)
            if current is None:
                return checkpoint
        else:
            where = _trial_storage()
            if where is None:
                return checkpoint
            (fs, trial_path), path, current = where, "", -1
        found = trial_checkpoints(fs, trial_path)
    except Exception:  # noqa: BLE001 - keep Tune's choice when the folder cannot be listed
        return checkpoint
    for epoch, newest in found:
        if epoch <= current or newest == path:
            return checkpoint
        if not _intact(fs, newest, epoch):
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


def _restore_state(checkpoint: tune.Checkpoint) -> Any:
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


# --------------------------------------------------------------------------------------------
# NaN notes: a non-finite loss is deterministic, a retry of the same checkpoint would repeat it
# --------------------------------------------------------------------------------------------
def _record_nonfinite(session: str, exc: BaseException) -> None:
    """Remember a NaN/inf loss for this trial's retries in the same driver session."""
    where = _trial_storage()
    if where is None or not session:
        return
    fs, trial_path = where
    try:
        fs.create_dir(trial_path, recursive=True)
        with fs.open_output_stream(f"{trial_path}/{NONFINITE_FILE}") as fh:
            fh.write(f"{session}\n{exc}".encode())
    except OSError:  # best effort: without the note, a retry just trains into the NaN again
        pass


def _fail_fast_if_nonfinite(session: str) -> None:
    """A NaN/inf loss is deterministic: the retry Tune grants after it (FailureConfig) would
    resume from the same checkpoint and hit it again. Fail such a retry at once with the original
    message instead of re-training an epoch per retry. A new driver session (resume_sweep) tries
    again: the user may have changed something."""
    where = _trial_storage()
    if where is None or not session:
        return
    fs, trial_path = where
    try:
        with fs.open_input_stream(f"{trial_path}/{NONFINITE_FILE}") as fh:
            owner, _, message = fh.read().decode(errors="replace").partition("\n")
    except OSError:  # no note (FileNotFoundError) or unreadable: train as usual
        return
    if owner == session:
        raise NonFiniteLossError(
            f"{message} (not retried: this trial's previous attempt hit this non-finite loss, "
            "and a retry from the same checkpoint would hit it again)"
        )


# --------------------------------------------------------------------------------------------
# The trainable
# --------------------------------------------------------------------------------------------
def _check_label_file(cfg: Config, context: TrialContext, trial_id: str) -> None:
    """Every trial trains on the driver's noisy-label file: present on this node at the same path,
    with the sha256 the sweep started with."""
    label_file = cfg.noise.label_file
    if not label_file:
        return
    if not Path(label_file).is_file():
        raise FileNotFoundError(
            f"Trial {trial_id} on {ray.util.get_node_ip_address()}: the sweep's noisy-label "
            f"file {label_file} is missing. Put the data folder on storage every node mounts "
            "at the same path (see docs/sweeps.md)."
        )
    if context.label_sha256 and sha256_file(label_file) != context.label_sha256:
        raise RuntimeError(
            f"Trial {trial_id}: {label_file} differs from the file the sweep started with "
            "(sha256 mismatch); every trial must train on the same noisy labels."
        )


def _open_trial_run(
    cfg: Config, context: TrialContext, *, state: TrainState | None
) -> tracking.RunLogger:
    """Start this trial's nested MLflow run, or reopen it (by the id in the restored state, else
    by the `dmx.trial_id` tag) so that a retried or restored trial keeps writing to one run."""
    tune_context = tune.get_context()
    tags = tracking.provenance_tags(
        preset=cfg.preset,
        node=ray.util.get_node_ip_address(),
        commit=context.git_commit,
        dirty=context.git_dirty,
    )
    tags.update({"dmx.trial_name": tune_context.get_trial_name(), "dmx.sweep": context.name})
    flat = cfg.to_flat()
    logger = tracking.start_trial_run(
        context.tracking_uri,
        context.experiment_id,
        trial_id=tune_context.get_trial_id(),
        parent_run_id=context.parent_run_id,
        flat_config=flat,
        run_id=(state.mlflow_run_id or None) if state is not None else None,
        # Named by what differs between trials (`λu=25 T=0.5 p=0.5`); Tune's name is a tag.
        run_name=ui.trial_run_name(flat, context.searched) or tune_context.get_trial_name(),
        tags=tags,
    )
    if state is not None:
        state.mlflow_run_id = logger.run_id
        logger.set_tags({"dmx.restored_from_epoch": state.epoch})
    return logger


def train_trial(
    params: dict[str, Any], *, base_config: dict[str, Any], context: TrialContext
) -> None:
    """The Ray Tune function trainable: one DivideMix run with the trial's `params` (flat dotted
    keys) over `base_config` (the driver's flat config, labels already made)."""
    torch.set_num_threads(max(1, int(context.cpus_per_trial)))
    trial_id = tune.get_context().get_trial_id()
    # Resolved: a searched "auto" choice (or an old sweep's base config) becomes the concrete value
    # this trial trains with, recorded as such in MLflow and used for ASHA's clock.
    cfg = Config.from_flat({**base_config, **params}).resolved()
    _check_label_file(cfg, context, trial_id)

    _fail_fast_if_nonfinite(context.session)
    checkpoint = tune.get_checkpoint()
    if trial_id not in context.fresh_trials:  # restart_errored: from scratch on purpose
        checkpoint = _newest_checkpoint(checkpoint)
    state = _restore_state(checkpoint) if checkpoint is not None else None

    logger = _open_trial_run(cfg, context, state=state) if context.tracking_uri else None
    # MLflow first: it stores the run id in the state before Tune's checkpoint is written, and
    # tune.report (which may end this process when ASHA stops the trial) comes last.
    reporter = Reporters(
        # The noisy labels are the parent run's artifact: each trial references them.
        tracking.MlflowReporter(logger, copy_labels=False) if logger is not None else None,
        TuneReporter(warmup_epochs=cfg.dividemix.warmup_epochs),
    )
    try:
        fit(cfg, reporter=reporter, state=state)
        if logger is not None:
            logger.finish("FINISHED")
    except Exception as exc:
        # Tune may retry the trial from its checkpoint; the driver marks the run FAILED only when
        # it gives up. Record why this attempt failed.
        if isinstance(exc, NonFiniteLossError):
            _record_nonfinite(context.session, exc)
        if logger is not None:
            logger.set_tags({"dmx.last_error": f"{type(exc).__name__}: {exc}"[:5000]})
        raise


__all__ = [
    "NONFINITE_FILE",
    "TIME_ATTR",
    "TrialContext",
    "TuneReporter",
    "checkpoint_epoch",
    "dm_epoch",
    "train_trial",
    "trial_checkpoints",
]
