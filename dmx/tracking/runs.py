"""dmx's runs in MLflow: the sweep's parent run, one nested run per trial, the run of a standalone
`dmx train`, and `MlflowReporter`, the loop's reporter that logs a run of `fit`."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import RunTag

from dmx.files import write_parquet_atomic
from dmx.reporting import CLEAN_PROBS_FILE, CONFIG_FILE, NOISY_LABELS_FILE, Reporter
from dmx.tracking.store import (
    PARENT_TAG,
    ROLE_TAG,
    RUN_DIR_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    RunLogger,
    check_tracking_uri,
    find_run,
    get_or_create_experiment,
    open_run,
    provenance_tags,
    resolve_tracking_uri,
    retry,
)


def start_sweep_run(
    tracking_uri: str,
    experiment: str,
    *,
    sweep_name: str,
    base_config: Mapping[str, Any],
    tags: Mapping[str, str] | None = None,
) -> RunLogger:
    """Get-or-create the sweep's experiment and start-or-resume its parent run (found by the
    `dmx.sweep` tag). The base config is logged as params; `tags` may add the search space."""
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    experiment_id = retry(lambda: get_or_create_experiment(client, experiment, uri))
    logger = open_run(
        uri,
        experiment_id,
        key_tags={ROLE_TAG: "sweep", SWEEP_TAG: sweep_name},
        tags=dict(tags or {}),
        run_name=sweep_name,
    )
    logger.log_params(base_config)
    return logger


def start_trial_run(
    tracking_uri: str,
    experiment_id: str,
    *,
    trial_id: str,
    parent_run_id: str,
    flat_config: Mapping[str, Any],
    run_id: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> RunLogger:
    """Start-or-resume the nested run of one trial (by `run_id` from the TrainState, else by the
    `dmx.trial_id` tag) and log the trial's flat config as params."""
    logger = open_run(
        tracking_uri,
        experiment_id,
        key_tags={ROLE_TAG: "trial", TRIAL_TAG: trial_id},
        tags={PARENT_TAG: parent_run_id, **dict(tags or {})},
        run_name=run_name or trial_id,
        run_id=run_id,
    )
    logger.log_params(flat_config)
    return logger


def _find_trial_run(client: MlflowClient, experiment_id: str, trial_id: str) -> str | None:
    return retry(lambda: find_run(client, experiment_id, {ROLE_TAG: "trial", TRIAL_TAG: trial_id}))


def end_trial_run(
    tracking_uri: str,
    experiment_id: str,
    trial_id: str,
    status: str,
    *,
    reason: str = "",
    tags: Mapping[str, str] | None = None,
) -> bool:
    """End the run of `trial_id` (used by the sweep driver when Tune completes, stops or gives up
    on a trial). Returns False when the trial never opened a run."""
    uri = resolve_tracking_uri(tracking_uri)
    run_id = _find_trial_run(MlflowClient(uri), experiment_id, trial_id)
    if run_id is None:
        return False
    logger = RunLogger(uri, run_id)
    if tags:
        logger.set_tags(tags)
    logger.finish(status, reason=reason)
    return True


def log_trial_artifact(
    tracking_uri: str,
    experiment_id: str,
    trial_id: str,
    path: str | Path,
    *,
    tags: Mapping[str, str] | None = None,
) -> bool:
    """Upload a file to the run of `trial_id` without changing the run's status (it has usually
    ended already; a RunLogger would reopen it); False when the trial has no run."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    run_id = _find_trial_run(client, experiment_id, trial_id)
    if run_id is None:
        return False
    batch = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    if batch:
        retry(lambda: client.log_batch(run_id, tags=batch))
    retry(lambda: client.log_artifact(run_id, str(path)))
    return True


# --------------------------------------------------------------------------------------------
# The loop's MLflow reporter (a `dmx train` run or a sweep trial)
# --------------------------------------------------------------------------------------------
class MlflowReporter(Reporter):
    """Logs a run of `fit` to the MLflow run of `logger`: at the start the run id goes into the
    TrainState (so every checkpoint names its run) and config.json + noisy_labels.parquet are
    logged; each epoch's metrics with step = epoch (steps the run holds are skipped); at the end
    clean_probs.parquet. `finish` / `fail` end the run; the caller decides which."""

    def __init__(self, logger: RunLogger) -> None:
        self.logger = logger

    @property
    def run_id(self) -> str:
        return self.logger.run_id

    def start(self, cfg: Any, data: Any, state: Any) -> None:
        state.mlflow_run_id = self.logger.run_id
        with tempfile.TemporaryDirectory(prefix="dmx-mlflow-") as tmp:
            (Path(tmp) / CONFIG_FILE).write_text(cfg.to_json() + "\n")
            shutil.copyfile(data.noisy.path, Path(tmp) / NOISY_LABELS_FILE)
            for name in (CONFIG_FILE, NOISY_LABELS_FILE):
                self.logger.log_artifact(Path(tmp) / name)

    def epoch_end(self, epoch: int, metrics: Mapping[str, float], state: Any) -> None:
        state.mlflow_run_id = self.logger.run_id
        self.logger.log_metrics(metrics, step=epoch)

    def run_end(self, state: Any, samples: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="dmx-mlflow-") as tmp:
            write_parquet_atomic(samples, Path(tmp) / CLEAN_PROBS_FILE)
            self.logger.log_artifact(Path(tmp) / CLEAN_PROBS_FILE)

    def finish(self, state: Any = None) -> None:
        self.logger.finish("FINISHED")

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, KeyboardInterrupt):
            self.logger.finish("KILLED", reason="interrupted (KeyboardInterrupt)")
        else:
            self.logger.finish("FAILED", reason=f"{type(exc).__name__}: {exc}")


def train_reporter(
    cfg: Any,
    *,
    run_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = "dmx-train",
    state: Any = None,
) -> MlflowReporter:
    """Create or resume the MLflow run of a standalone `dmx train` (tagged `dmx.role=train`).

    `cfg` is a `dmx.config.Config`; `state` the TrainState being resumed (or None)."""
    uri = check_tracking_uri(resolve_tracking_uri(tracking_uri))
    client = MlflowClient(uri)
    experiment_id = retry(lambda: get_or_create_experiment(client, experiment, uri))
    run_dir = Path(run_dir).resolve() if run_dir is not None else None
    key_tags = {ROLE_TAG: "train"}
    if run_dir is not None:
        key_tags[RUN_DIR_TAG] = str(run_dir)
    stored_id = getattr(state, "mlflow_run_id", "") if state is not None else ""
    if run_dir is None and not stored_id:
        # Without a run directory there is nothing to find the run by: always a new one.
        run = retry(lambda: client.create_run(experiment_id, tags=key_tags))
        stored_id = run.info.run_id
    logger = open_run(
        uri,
        experiment_id,
        key_tags=key_tags,
        tags=provenance_tags(preset=getattr(cfg, "preset", "")),
        run_name=run_dir.name if run_dir is not None else None,
        run_id=stored_id or None,
    )
    logger.log_params(cfg.to_flat())
    return MlflowReporter(logger)
