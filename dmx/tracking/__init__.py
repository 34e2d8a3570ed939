"""MLflow tracking: the only module that writes to MLflow.

Everything goes through an explicit `MlflowClient` and a run id, never through MLflow's global
"active run": that is what lets a Ray worker, a retried trial or a restarted driver reopen the same
run and keep writing to it. Layout (docs/architecture.md): one experiment per sweep, a parent run
tagged `dmx.role=sweep`, one nested run per trial tagged `dmx.role=trial` + `dmx.trial_id`, and a
standalone `dmx train` run tagged `dmx.role=train` + `dmx.run_dir`. A trial's or train run's
params are its flat config, the sweep run's the sweep's definition (`sweep.*`); metrics are logged
with step = epoch, rounded, the objective first (`dmx.tracking.ui`), and a step that a run already
holds is never logged twice (a trial restored from an older checkpoint re-runs epochs that MLflow
has already seen). What the UI shows (view, columns, charts) is decided in `dmx.tracking.ui`.

Tracking URI: explicit argument > `MLFLOW_TRACKING_URI` > `sqlite:///<cwd>/mlflow.db`, always made
absolute, because Ray runs each trial in its own working directory. With a sqlite store the
artifacts go next to the database (`<db folder>/mlartifacts`), where `mlflow ui` finds them.
"""

from dmx.tracking.runs import (
    BASE_CONFIG_FILE,
    PHASE_TAG,
    MlflowReporter,
    SystemMetrics,
    dataset_input,
    end_trial_run,
    log_dataset_input,
    log_trial_artifact,
    quiet_mlflow_logging,
    set_experiment_tags,
    start_sweep_run,
    start_trial_run,
    train_reporter,
    trial_run_id,
)
from dmx.tracking.store import (
    CELL_TAG,
    CONFIG_TAG,
    FAILURE_TAG,
    GRID_CELLS_TAG,
    GRID_SEEDS_TAG,
    GRID_TAG,
    MAX_PARAM_CHARS,
    PARENT_TAG,
    POINT_ELSEWHERE,
    PRESET_TAG,
    RESTORED_TAG,
    ROLE_TAG,
    RUN_DIR_TAG,
    SEED_TAG,
    STOPPED_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
    WARMUP_SHARED_TAG,
    RunLogger,
    TrackingError,
    check_tracking_uri,
    download_artifact,
    find_run,
    get_or_create_experiment,
    git_commit,
    log_files,
    open_run,
    param_values,
    provenance_tags,
    read_client,
    resolve_tracking_uri,
    retry,
    uri_source,
)

__all__ = [
    "CELL_TAG",
    "CONFIG_TAG",
    "FAILURE_TAG",
    "GRID_CELLS_TAG",
    "GRID_SEEDS_TAG",
    "GRID_TAG",
    "PRESET_TAG",
    "RESTORED_TAG",
    "SEED_TAG",
    "STOPPED_TAG",
    "WARMUP_SHARED_TAG",
    "BASE_CONFIG_FILE",
    "MAX_PARAM_CHARS",
    "MlflowReporter",
    "PHASE_TAG",
    "SystemMetrics",
    "dataset_input",
    "log_dataset_input",
    "quiet_mlflow_logging",
    "set_experiment_tags",
    "trial_run_id",
    "PARENT_TAG",
    "ROLE_TAG",
    "RUN_DIR_TAG",
    "RunLogger",
    "SWEEP_TAG",
    "TRIAL_TAG",
    "TrackingError",
    "check_tracking_uri",
    "download_artifact",
    "end_trial_run",
    "find_run",
    "get_or_create_experiment",
    "git_commit",
    "log_files",
    "log_trial_artifact",
    "open_run",
    "param_values",
    "POINT_ELSEWHERE",
    "provenance_tags",
    "read_client",
    "uri_source",
    "resolve_tracking_uri",
    "retry",
    "start_sweep_run",
    "start_trial_run",
    "train_reporter",
]
