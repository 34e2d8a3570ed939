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
from dmx.files import sha256_file
from dmx.reporting import Reporter, Reporters
from dmx.state import CheckpointError, TrainState, load_latest_checkpoint, save_checkpoint
from dmx.train import NonFiniteLossError, fit

TIME_ATTR = "dm_epoch"  # DivideMix epochs completed (0 during warmup): ASHA's clock
NONFINITE_FILE = "dmx_nonfinite.txt"  # in a trial's storage folder: its NaN, for its retries


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
            result = {**metrics, TIME_ATTR: dm_epoch(epoch, self.warmup_epochs)}
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))


# --------------------------------------------------------------------------------------------
# Checkpoint recovery
# --------------------------------------------------------------------------------------------
def _older_checkpoints(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The trial's other `checkpoint_*` folders older than `checkpoint`, newest first."""
    fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    parent, _, name = path.rpartition("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(parent))
    except OSError:
        return []
    older = sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.Directory
        and i.base_name.startswith("checkpoint_")
        and i.base_name < name  # zero-padded indices: text order is age order
    )
    return [tune.Checkpoint(p, filesystem=fs) for p in reversed(older)]


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


def _newest_checkpoint(checkpoint: tune.Checkpoint | None) -> tune.Checkpoint | None:
    """The trial's newest `checkpoint_*` folder that holds a dmx checkpoint, when it is newer than
    the one Tune restores from. Tune saves its experiment state every ~10 s, so a driver killed
    right after a trial's report restores that trial from the previous checkpoint, or from none
    (epoch 0); the trial's storage folder has the newer one."""
    try:
        if checkpoint is not None:
            fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
            trial_path, _, current = path.rpartition("/")
        else:
            where = _trial_storage()
            if where is None:
                return checkpoint
            (fs, trial_path), current = where, ""
        infos = fs.get_file_info(pafs.FileSelector(trial_path))
    except Exception:  # noqa: BLE001 - keep Tune's choice when the folder cannot be listed
        return checkpoint
    newer = sorted(
        (
            i.path
            for i in infos
            if i.type == pafs.FileType.Directory
            and i.base_name.startswith("checkpoint_")
            and i.base_name > current
        ),
        reverse=True,
    )
    for path in newer:
        try:
            files = fs.get_file_info(pafs.FileSelector(path))
        except OSError:
            continue
        if any(f.base_name.startswith("ckpt-") and f.base_name.endswith(".pt") for f in files):
            warnings.warn(
                f"Tune restores this trial from {checkpoint.path if checkpoint else 'scratch'}, "
                f"but its newer checkpoint {path} exists (the driver stopped before recording "
                "it): resuming from that one.",
                stacklevel=2,
            )
            return tune.Checkpoint(path, filesystem=fs)
    return checkpoint


def _restore_state(checkpoint: tune.Checkpoint) -> Any:
    """The TrainState in Tune's latest checkpoint of this trial, or, when that one is damaged
    (checksum mismatch, truncated, missing file), in the newest older checkpoint that verifies.
    A trial that has a checkpoint never silently starts again from epoch 0: with no usable
    checkpoint left this raises CheckpointError."""
    errors = []
    for candidate in [checkpoint, *_older_checkpoints(checkpoint)]:
        try:
            with candidate.as_directory() as ckpt_dir:
                state = load_latest_checkpoint(Path(ckpt_dir))
        except CheckpointError as exc:
            errors.append(str(exc))
            continue
        if state is None:
            errors.append(f"{candidate.path} holds no dmx checkpoint file.")
            continue
        if candidate is not checkpoint:
            warnings.warn(
                f"Tune's latest checkpoint {checkpoint.path} is unusable; resuming from "
                f"{candidate.path} (epoch {state.epoch}) instead.",
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
    logger = tracking.start_trial_run(
        context.tracking_uri,
        context.experiment_id,
        trial_id=tune_context.get_trial_id(),
        parent_run_id=context.parent_run_id,
        flat_config=cfg.to_flat(),
        run_id=(state.mlflow_run_id or None) if state is not None else None,
        run_name=tune_context.get_trial_name(),
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
    cfg = Config.from_flat({**base_config, **params})
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
        tracking.MlflowReporter(logger) if logger is not None else None,
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


__all__ = ["NONFINITE_FILE", "TIME_ATTR", "TrialContext", "TuneReporter", "dm_epoch", "train_trial"]
