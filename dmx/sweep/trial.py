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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from dmx import tracking
from dmx.config import Config
from dmx.files import sha256_bytes, sha256_file
from dmx.reporting import Reporter, Reporters
from dmx.state import TrainState, save_checkpoint
from dmx.sweep import warmup as shared
from dmx.sweep.recovery import newest_checkpoint, restore_state, trial_storage
from dmx.tracking import ui
from dmx.train import NonFiniteLossError, fit

TIME_ATTR = "dm_epoch"  # DivideMix epochs completed (0 during warmup): ASHA's clock
NONFINITE_FILE = "dmx_nonfinite.txt"  # in a trial's storage folder: its NaN, for its retries
REPEAT_INDEX = "__trial_index__"  # ray.tune.search.repeater.TRIAL_INDEX: the seed of a config
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
    cell_label_sha256: dict[str, str] = field(default_factory=dict)
    """A grid's label-file sha256 per cell (`label_sha256` is the search's one file)."""
    seeds: int = 1
    """Seeds per configuration (Ray Tune's Repeater passes the seed's index)."""
    share_warmup: bool = False
    """Load the warmup from the sweep's shared store (or train and publish it there)."""


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
# NaN notes: a non-finite loss is deterministic, a retry of the same checkpoint would repeat it
# --------------------------------------------------------------------------------------------
def _record_nonfinite(session: str, exc: BaseException) -> None:
    """Remember a NaN/inf loss for this trial's retries in the same driver session."""
    where = trial_storage()
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
    where = trial_storage()
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
    expected = context.cell_label_sha256.get(cfg.preset, context.label_sha256)
    if expected and sha256_file(label_file) != expected:
        raise RuntimeError(
            f"Trial {trial_id}: {label_file} differs from the file the sweep started with "
            "(sha256 mismatch); every trial must train on the same noisy labels."
        )


def _open_trial_run(
    cfg: Config, context: TrialContext, *, state: TrainState | None, tags: dict[str, str]
) -> tracking.RunLogger:
    """Start this trial's nested MLflow run, or reopen it (by the id in the restored state, else
    by the `dmx.trial_id` tag) so that a retried or restored trial keeps writing to one run."""
    tune_context = tune.get_context()
    tags = {
        **tracking.provenance_tags(
            preset=cfg.preset,
            node=ray.util.get_node_ip_address(),
            commit=context.git_commit,
            dirty=context.git_dirty,
        ),
        "dmx.trial_name": tune_context.get_trial_name(),
        tracking.SWEEP_TAG: context.name,
        tracking.SESSION_TAG: context.session,
        **tags,
    }
    flat = cfg.to_flat()
    logger = tracking.start_trial_run(
        context.tracking_uri,
        context.experiment_id,
        trial_id=tune_context.get_trial_id(),
        parent_run_id=context.parent_run_id,
        flat_config=flat,
        run_id=(state.mlflow_run_id or None) if state is not None else None,
        # Named by what differs between trials (`λu=25 T=0.5 p=0.5`, `cifar10-sym-0.5 seed=124`);
        # Tune's name is a tag.
        run_name=_run_name(flat, context.searched, tags) or tune_context.get_trial_name(),
        tags=tags,
    )
    if state is not None:
        state.mlflow_run_id = logger.run_id
        if tracking.WARMUP_SHARED_TAG not in tags:
            logger.set_tags({tracking.RESTORED_TAG: state.epoch})
    return logger


def _run_name(flat: dict[str, Any], searched: tuple[str, ...], tags: dict[str, str]) -> str:
    """A grid trial: `CELL seed=N`; a search trial: its searched values (`λu=25 T=0.5 p=0.5`),
    and `seed=N` when its configuration runs with several seeds."""
    if tracking.CELL_TAG in tags:
        return f"{tags[tracking.CELL_TAG]} seed={tags[tracking.SEED_TAG]}"
    name = ui.trial_run_name(flat, searched)
    if tracking.SEED_TAG in tags and "run.seed" not in searched:
        name = f"{name} seed={tags[tracking.SEED_TAG]}".strip()
    return name


def trial_config(
    params: dict[str, Any],
    base_config: dict[str, Any],
    cells: dict[str, dict[str, Any]],
    *,
    searched: tuple[str, ...] = (),
) -> tuple[Config, dict[str, str]]:
    """The trial's resolved config and the tags that name it: a grid trial's cell (its preset's
    prepared config) and seed, a search trial's params over the base config; a seed index from
    Ray Tune's Repeater becomes run.seed = base seed + index, and the seeds of one configuration
    share a `dmx.config_id` tag."""
    params = dict(params)
    cell = params.pop(tracking.CELL_TAG, None)
    index = params.pop(REPEAT_INDEX, None)
    flat = {**(cells[cell] if cell is not None else base_config), **params}
    tags: dict[str, str] = {}
    if index is not None:
        searched_values = {k: params[k] for k in searched if k in params}
        tags[tracking.CONFIG_TAG] = sha256_bytes(repr(sorted(searched_values.items())).encode())[
            :12
        ]
        flat["run.seed"] = int(flat.get("run.seed", 123)) + int(index)
    cfg = Config.from_flat(flat).resolved()
    if cell is not None:
        tags[tracking.CELL_TAG] = cell
    if cell is not None or index is not None:
        tags[tracking.SEED_TAG] = str(cfg.run.seed)
    return cfg, tags


def train_trial(
    params: dict[str, Any],
    *,
    base_config: dict[str, Any],
    context: TrialContext,
    cells: dict[str, dict[str, Any]] | None = None,
) -> None:
    """The Ray Tune function trainable: one DivideMix run with the trial's `params` (flat dotted
    keys) over `base_config` (the driver's flat config, labels already made), or over its cell's
    config in a grid (`cells`)."""
    torch.set_num_threads(max(1, int(context.cpus_per_trial)))
    trial_id = tune.get_context().get_trial_id()
    # Resolved: a searched "auto" choice (or an old sweep's base config) becomes the concrete value
    # this trial trains with, recorded as such in MLflow and used for ASHA's clock.
    cfg, tags = trial_config(params, base_config, cells or {}, searched=context.searched)
    _check_label_file(cfg, context, trial_id)

    _fail_fast_if_nonfinite(context.session)
    checkpoint = tune.get_checkpoint()
    if trial_id not in context.fresh_trials:  # restart_errored: from scratch on purpose
        checkpoint = newest_checkpoint(checkpoint)
    state = restore_state(checkpoint) if checkpoint is not None else None
    sharing = None
    if state is None and context.share_warmup and (where := trial_storage()) is not None:
        fs, trial_path = where
        sharing = shared.SharedWarmup(cfg, (fs, trial_path.rpartition("/")[0]))
        state = sharing.load_or_claim()  # None: this trial trains (and publishes) the warmup
        tags[tracking.WARMUP_SHARED_TAG] = sharing.key + (" (loaded)" if state else " (trained)")

    if context.tracking_uri and trial_id in context.fresh_trials and checkpoint is None:
        # Restarted from scratch on purpose: a new MLflow run, the old one ended and set aside.
        tracking.supersede_trial_run(
            context.tracking_uri, context.experiment_id, trial_id, session=context.session
        )
    logger = _open_trial_run(cfg, context, state=state, tags=tags) if context.tracking_uri else None
    # MLflow first: it stores the run id in the state before Tune's checkpoint is written, and
    # tune.report (which may end this process when ASHA stops the trial) comes last.
    reporter = Reporters(
        # The noisy labels are the parent run's artifact: each trial references them.
        tracking.MlflowReporter(logger, copy_labels=False) if logger is not None else None,
        sharing,  # publishes the warmup after its last epoch, when this trial trains it
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
    finally:
        if sharing is not None:
            sharing.release()


__all__ = [
    "NONFINITE_FILE",
    "REPEAT_INDEX",
    "TIME_ATTR",
    "TrialContext",
    "TuneReporter",
    "dm_epoch",
    "train_trial",
    "trial_config",
]
