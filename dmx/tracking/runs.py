"""dmx's runs in MLflow: the sweep's parent run, one nested run per trial, the run of a standalone
`dmx train`, and `MlflowReporter`, the loop's reporter that logs a run of `fit`."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, RunTag
from mlflow.exceptions import MlflowException

from dmx.files import write_parquet_atomic
from dmx.reporting import CLEAN_PROBS_FILE, CONFIG_FILE, NOISY_LABELS_FILE, Reporter
from dmx.tracking.store import (
    FAILURE_TAG,
    LABELS_SHA_TAG,
    PARENT_TAG,
    RESTORED_TAG,
    ROLE_TAG,
    RUN_DIR_TAG,
    SUPERSEDED_TAG,
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
from dmx.tracking.ui import DESCRIPTION_TAG, mlflow_metrics, phase_name

BASE_CONFIG_FILE = "base_config.json"  # the parent run's artifact: what every trial starts from
PHASE_TAG = "dmx.phase"  # the phase of the last logged epoch: warmup | dividemix


def quiet_mlflow_logging() -> None:
    """MLflow's and alembic's INFO lines (a new sqlite store's tables, the system-metrics thread
    starting) are not the user's business and break `dmx train`'s progress bar: WARNING and up
    only. Called by every writer of this package."""
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


def start_sweep_run(
    tracking_uri: str,
    experiment: str,
    *,
    sweep_name: str,
    definition: Mapping[str, Any],
    base_config: Mapping[str, Any] | None = None,
    tags: Mapping[str, str] | None = None,
    description: str = "",
) -> RunLogger:
    """Get-or-create the sweep's experiment and start-or-resume its parent run (found by the
    `dmx.sweep` tag). Its params are the sweep's `definition` (search space, scheduler, searcher,
    base preset, trials; flat `sweep.*` keys), NOT a trial's config: the base config every trial
    starts from is the artifact `base_config.json`. `description` (markdown) becomes the run's and
    the experiment's description."""
    quiet_mlflow_logging()
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    experiment_id = retry(lambda: get_or_create_experiment(client, experiment, uri))
    logger = open_run(
        uri,
        experiment_id,
        key_tags={ROLE_TAG: "sweep", SWEEP_TAG: sweep_name},
        tags={**dict(tags or {}), **({DESCRIPTION_TAG: description} if description else {})},
        run_name=sweep_name,
    )
    logger.log_params(definition)
    if base_config is not None:
        with tempfile.TemporaryDirectory(prefix="dmx-mlflow-") as tmp:
            path = Path(tmp) / BASE_CONFIG_FILE
            path.write_text(json.dumps(dict(base_config), indent=2, sort_keys=True) + "\n")
            logger.log_artifact(path)
    return logger


def set_experiment_tags(tracking_uri: str, experiment_id: str, tags: Mapping[str, str]) -> None:
    """Set tags of an experiment (its description `mlflow.note.content`, a saved view)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    for key, value in tags.items():
        retry(lambda key=key, value=value: client.set_experiment_tag(experiment_id, key, value))


def dataset_input(noisy: Any, *, dataset_name: str = "", context: str = "training") -> DatasetInput:
    """The noisy-label file of a run as an MLflow dataset input BY REFERENCE: its name, a digest
    (the file's sha256, first 16 hex digits), its source (the file's URI) and a profile (samples,
    classes, realised noise rate in %); nothing is copied. `noisy`: a `dmx.labels.NoisyLabels`."""
    path = Path(noisy.path).resolve()
    profile = {
        "num_samples": int(len(noisy.noisy_labels)),
        "num_classes": int(noisy.params.get("num_classes", 0) or 0),
        "noise_rate_percent": round(100.0 * float(noisy.realised_rate), 2),
        "sha256": noisy.sha256,
        "noise": {k: v for k, v in noisy.params.items() if k in ("mode", "rate", "seed")},
    }
    dataset = Dataset(
        name=dataset_name or path.stem,
        digest=noisy.sha256[:16],
        source_type="local",
        source=json.dumps({"uri": path.as_uri()}),
        profile=json.dumps(profile),
    )
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])


def log_dataset_input(logger: RunLogger, noisy: Any, *, dataset_name: str = "") -> bool:
    """Log `dataset_input(noisy)` to the run once: a run that already holds an input of this digest
    (a resumed trial) is left alone. Returns whether it was logged."""
    entry = dataset_input(noisy, dataset_name=dataset_name)
    run = retry(lambda: logger.client.get_run(logger.run_id))
    held = {d.dataset.digest for d in (run.inputs.dataset_inputs if run.inputs else [])}
    if entry.dataset.digest in held:
        return False
    retry(lambda: logger.client.log_inputs(logger.run_id, datasets=[entry]))
    return True


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
    quiet_mlflow_logging()
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


def trial_run_id(tracking_uri: str, experiment_id: str, trial_id: str) -> str:
    """The MLflow run id of trial `trial_id` ("" when it has none)."""
    client = MlflowClient(resolve_tracking_uri(tracking_uri))
    return _find_trial_run(client, experiment_id, trial_id) or ""


SESSION_TAG = "dmx.driver_session"  # the driver session that opened a trial run


def supersede_trial_run(
    tracking_uri: str, experiment_id: str, trial_id: str, *, session: str
) -> bool:
    """A trial restarted from scratch on purpose (`resume_sweep(restart_errored=True)`) gets a NEW
    run: its run of an earlier driver session is ended KILLED and its trial tag renamed
    (`ID~superseded`), so that the trial's run lookup by `dmx.trial_id` no longer finds it. A run
    of this `session` (a retry of the restarted trial) stays. False when nothing was set aside."""
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    run_id = _find_trial_run(client, experiment_id, trial_id)
    if run_id is None:
        return False
    if retry(lambda: client.get_run(run_id)).data.tags.get(SESSION_TAG) == session:
        return False
    logger = RunLogger(uri, run_id)
    logger.set_tags({TRIAL_TAG: f"{trial_id}~superseded", SUPERSEDED_TAG: "true"})
    logger.finish("KILLED", reason="the trial was restarted from scratch (restart_errored)")
    return True


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
class SystemMetrics:
    """MLflow's system metrics (CPU, memory, disk, network; GPU with nvidia-ml-py) of one run
    logged by id: `mlflow.system_metrics.system_metrics_monitor.SystemMetricsMonitor`, the monitor
    `mlflow.start_run(log_system_metrics=True)` uses, started on the run id itself because dmx
    writes through `MlflowClient` without an active run. Logged as `system/...` every
    `MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` seconds (default 10) by a daemon thread, continuing
    the steps of a resumed run; the thread stops at `stop` or when the run is no longer RUNNING.
    Without psutil (or with `DMX_SYSTEM_METRICS=0`) nothing is logged."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.monitor: Any = None

    def start(self) -> bool:
        """Start the thread (once); False when system metrics are off or unavailable."""
        if self.monitor is not None:
            return True
        if os.environ.get("DMX_SYSTEM_METRICS", "1") == "0":
            return False
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(
                self.run_id, resume_logging=True, tracking_uri=self.tracking_uri
            )
        except ImportError as exc:  # psutil missing: the run goes on without system metrics
            warnings.warn(f"No MLflow system metrics ({exc}); `pip install psutil`.", stacklevel=2)
            return False
        monitor.start()
        self.monitor = monitor
        return True

    def stop(self) -> None:
        if self.monitor is not None:
            monitor, self.monitor = self.monitor, None
            monitor.finish()


class MlflowReporter(Reporter):
    """Logs a run of `fit` to the MLflow run of `logger`: at the start the run id goes into the
    TrainState (so every checkpoint names its run), config.json is logged, the noisy labels as a
    dataset input by reference (and, with `copy_labels`, as the artifact noisy_labels.parquet: a
    standalone run; a sweep's trials share the file its parent run holds), and the resumed state's
    epochs that the run lacks. Each epoch: `ui.mlflow_metrics` (no `epoch`/`phase`, rounded, the
    objective first) with step = epoch, the phase as the tag `dmx.phase`; system metrics from the
    end of the first epoch on (so that a run's first metric is the objective, which Compare's
    plots start on). At the end clean_probs.parquet. `finish` / `fail` end the run."""

    def __init__(
        self, logger: RunLogger, *, copy_labels: bool = True, system_metrics: bool = True
    ) -> None:
        self.logger = logger
        self.copy_labels = copy_labels
        self.system = SystemMetrics(logger.tracking_uri, logger.run_id) if system_metrics else None

    @property
    def run_id(self) -> str:
        return self.logger.run_id

    def start(self, cfg: Any, data: Any, state: Any) -> None:
        state.mlflow_run_id = self.logger.run_id
        with tempfile.TemporaryDirectory(prefix="dmx-mlflow-") as tmp:
            (Path(tmp) / CONFIG_FILE).write_text(cfg.to_json() + "\n")
            self.logger.log_artifact(Path(tmp) / CONFIG_FILE)
            if self.copy_labels:
                data.noisy.save_parquet(Path(tmp) / NOISY_LABELS_FILE)
                self.logger.log_artifact(Path(tmp) / NOISY_LABELS_FILE)
        name = f"{cfg.data.dataset} noisy labels ({Path(data.noisy.path).stem})"
        log_dataset_input(self.logger, data.noisy, dataset_name=name)
        self.logger.set_tags({LABELS_SHA_TAG: data.noisy.sha256})
        # The checkpoint is written before MLflow hears of its epoch: a process killed in between
        # left epochs that the resumed state holds and the run lacks. Log them now (steps the run
        # holds are skipped, so nothing is logged twice).
        for metrics in getattr(state, "metrics_history", []):
            self._log(int(metrics["epoch"]), metrics)
        if getattr(state, "metrics_history", None) and self.system is not None:
            self.system.start()  # a resumed run already has its first epoch

    def _log(self, epoch: int, metrics: Mapping[str, float]) -> None:
        self.logger.log_metrics(mlflow_metrics(metrics), step=epoch)
        phase = phase_name(metrics)
        if phase is not None:
            self.logger.set_tags({PHASE_TAG: phase, "dmx.epochs_done": epoch + 1})

    def epoch_end(self, epoch: int, metrics: Mapping[str, float], state: Any) -> None:
        state.mlflow_run_id = self.logger.run_id
        self._log(epoch, metrics)
        if self.system is not None:
            self.system.start()

    def run_end(self, state: Any, samples: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="dmx-mlflow-") as tmp:
            write_parquet_atomic(samples, Path(tmp) / CLEAN_PROBS_FILE)
            self.logger.log_artifact(Path(tmp) / CLEAN_PROBS_FILE)

    def _stop_system(self) -> None:
        if self.system is not None:
            self.system.stop()

    def finish(self, state: Any = None) -> None:
        self._stop_system()
        self.logger.finish("FINISHED")

    def fail(self, exc: BaseException) -> None:
        self._stop_system()
        if isinstance(exc, KeyboardInterrupt):
            self.logger.finish("KILLED", reason="interrupted (KeyboardInterrupt)")
        else:
            self.logger.finish("FAILED", reason=f"{type(exc).__name__}: {exc}")


def display_path(path: str | Path) -> str:
    """`path` as text MLflow can store: a name that is not UTF-8 (undecodable bytes kept by
    Python as surrogates) shows those bytes as `\\xNN` instead of failing the store's encoder."""
    return os.fsencode(str(path)).decode("utf-8", errors="backslashreplace")


class TrainRunReporter(MlflowReporter):
    """The MLflow run of one `dmx train`, opened when the loop starts (`start`), so that an error
    found before training (bad data, a resume with another config) creates or touches no run.

    Which run: the one whose id the resumed checkpoint carries (`resume_id`, written into the
    TrainState by `MlflowReporter.start` before the first checkpoint), when this store holds it;
    otherwise a NEW run. Never a run found by its run directory: a folder emptied or deleted and
    used again is a new run, not the continuation of whatever once trained there."""

    def __init__(
        self, uri: str, experiment_id: str, *, run_dir: Path | None, resume_id: str = ""
    ) -> None:
        self.uri, self.experiment_id = uri, experiment_id
        self.run_dir, self.resume_id = run_dir, resume_id
        self.logger: RunLogger | None = None  # type: ignore[assignment]
        self.copy_labels = True  # a standalone run holds its own labels
        self.system: SystemMetrics | None = None

    @property
    def run_id(self) -> str:
        return self.logger.run_id if self.logger is not None else ""

    def start(self, cfg: Any, data: Any, state: Any) -> None:
        self.logger = self._open(cfg, state)
        self.system = SystemMetrics(self.uri, self.logger.run_id)
        super().start(cfg, data, state)

    def finish(self, state: Any = None) -> None:
        if self.logger is not None:
            super().finish(state)

    def fail(self, exc: BaseException) -> None:
        if self.logger is not None:
            super().fail(exc)

    def _stored_run(self, client: MlflowClient) -> str | None:
        if not self.resume_id:
            return None
        try:
            run = retry(lambda: client.get_run(self.resume_id))
        except MlflowException:
            run = None
        if run is None or run.info.lifecycle_stage != "active":
            warnings.warn(
                f"The checkpoint names MLflow run {self.resume_id}, which the store {self.uri} "
                "does not hold (another store, or deleted): this resume logs to a new run.",
                stacklevel=2,
            )
            return None
        return self.resume_id

    def _open(self, cfg: Any, state: Any) -> RunLogger:
        client = MlflowClient(self.uri)
        tags = provenance_tags(preset=getattr(cfg, "preset", ""))
        if self.run_dir is not None:
            tags[RUN_DIR_TAG] = display_path(self.run_dir)  # information only, never searched
        run_id = self._stored_run(client)
        if run_id is None:
            name = display_path(self.run_dir.name) if self.run_dir is not None else None
            run = retry(
                lambda: client.create_run(
                    self.experiment_id, tags={ROLE_TAG: "train", **tags}, run_name=name
                )
            )
            logger = RunLogger(self.uri, run.info.run_id)
        else:
            logger = RunLogger(self.uri, run_id)  # RUNNING again
            previous = retry(lambda: client.get_run(run_id)).data.tags.get(FAILURE_TAG)
            if previous:  # this run goes on: the last attempt's failure is history, not status
                tags["dmx.previous_failure_reason"] = previous
                retry(lambda: client.delete_tag(run_id, FAILURE_TAG))
            tags[RESTORED_TAG] = str(getattr(state, "epoch", 0))
            logger.set_tags(tags)
        resolved = cfg.resolved() if hasattr(cfg, "resolved") else cfg
        logger.log_params(resolved.to_flat())
        return logger


def train_reporter(
    *,
    run_dir: str | Path | None = None,
    tracking_uri: str | None = None,
    experiment: str = "dmx-train",
    state: Any = None,
) -> TrainRunReporter:
    """The MLflow reporter of a standalone `dmx train` (runs tagged `dmx.role=train`).

    The store is checked now (an unusable URI is a TrackingError before any training); the run is
    opened by `start`: the run stored in `state` (the TrainState being resumed) when the store
    holds it, else a new run. `run_dir` is recorded as the `dmx.run_dir` tag and run name only."""
    quiet_mlflow_logging()
    uri = check_tracking_uri(resolve_tracking_uri(tracking_uri))
    client = MlflowClient(uri)
    experiment_id = retry(lambda: get_or_create_experiment(client, experiment, uri))
    return TrainRunReporter(
        uri,
        experiment_id,
        run_dir=Path(run_dir).resolve() if run_dir is not None else None,
        resume_id=getattr(state, "mlflow_run_id", "") if state is not None else "",
    )
