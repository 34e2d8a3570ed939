"""The MLflow store: URIs and their checks, provenance tags, retries, experiments, runs found
by tags, the `RunLogger` that writes one run, and the read / attach helpers of the analysis edge."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, ViewType
from mlflow.exceptions import MlflowException

ROLE_TAG = "dmx.role"
TRIAL_TAG = "dmx.trial_id"
SWEEP_TAG = "dmx.sweep"
RUN_DIR_TAG = "dmx.run_dir"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own tag for nested runs
PRESET_TAG = "dmx.preset"
CELL_TAG = "dmx.cell"  # a grid trial's cell (preset name): sweeps/paper.py
SEED_TAG = "dmx.seed"  # a grid trial's, or a repeated configuration's, run.seed
CONFIG_TAG = "dmx.config_id"  # the seeds of one searched configuration share it
GRID_TAG = "dmx.grid"  # a grid's parent run: "true" (sweeps/paper.py)
GRID_CELLS_TAG = "dmx.grid_cells"  # ... its cells, comma-separated
GRID_SEEDS_TAG = "dmx.grid_seeds"  # ... and its seeds per cell
WARMUP_SHARED_TAG = "dmx.warmup_shared"  # the shared warmup a trial loaded (dmx.sweep.warmup)
STOPPED_TAG = "dmx.stopped_early"  # a trial ASHA stopped (its run ends FINISHED)
FAILURE_TAG = "dmx.failure_reason"  # set by RunLogger.finish on FAILED / KILLED
RESTORED_TAG = "dmx.restored_from_epoch"  # a restored trial / resumed run: the epoch it went on
LABELS_SHA_TAG = "dmx.noisy_labels_sha256"  # the noisy-label file a run trained on (provenance)
SUPERSEDED_TAG = "dmx.superseded_by_restart"  # a trial run replaced by a restart from scratch
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value
_PARAMS_PER_BATCH = 100  # MLflow's limit on params per log_batch
_METRICS_PER_BATCH = 1000  # MLflow's limit on metrics per log_batch

T = TypeVar("T")


class TrackingError(RuntimeError):
    """The MLflow store cannot be used; the message names the URI and what to check."""


# --------------------------------------------------------------------------------------------
# URIs, provenance
# --------------------------------------------------------------------------------------------
def resolve_tracking_uri(uri: str | None = None) -> str:
    """Explicit `uri` > MLFLOW_TRACKING_URI > `sqlite:///<cwd>/mlflow.db`, made absolute.

    Relative sqlite paths and plain folders are resolved against the current directory NOW, so the
    same string means the same store in every Ray worker (each runs in its own directory)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///"):
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:" and not path.startswith("/"):
            return "sqlite:///" + str(Path(path).expanduser().resolve())
        return uri
    if uri.startswith("file:"):
        if uri.startswith("file:///"):
            return uri
        return Path(uri[len("file:") :]).expanduser().resolve().as_uri()
    if "://" not in uri:  # a bare folder: MLflow's (deprecated) file store
        return Path(uri).expanduser().resolve().as_uri()
    return uri


def _sqlite_path(uri: str) -> Path | None:
    if uri.startswith("sqlite:///") and uri != "sqlite:///:memory:":
        return Path(uri[len("sqlite:///") :])
    return None


POINT_ELSEWHERE = (
    "Point elsewhere with --mlflow-uri URI (e.g. sqlite:////path/to/mlflow.db or "
    "http://HOST:5000) or MLFLOW_TRACKING_URI."
)


def uri_source(uri: str | None = None) -> str:
    """Where a tracking URI came from, for messages: the flag, the environment or the default."""
    if uri:
        return "--mlflow-uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "MLFLOW_TRACKING_URI"
    return "the default, ./mlflow.db"


def read_client(uri: str | None = None) -> tuple[MlflowClient, str]:
    """(client, resolved URI) of an EXISTING store, for tools that only read. MLflow creates an
    empty sqlite database (or file-store folder) on first use; a reader pointed at nothing must
    not leave one behind and then report an unknown experiment: FileNotFoundError naming the
    store looked in, where that URI came from and how to point elsewhere."""
    resolved = resolve_tracking_uri(uri)
    db = _sqlite_path(resolved)
    missing = None
    if db is not None and not db.is_file():
        missing = db
    elif resolved.startswith("file://"):
        folder = Path(resolved[len("file://") :])
        missing = None if folder.is_dir() else folder
    if missing is not None:
        raise FileNotFoundError(
            f"No MLflow store at {resolved} ({missing} does not exist; the URI is "
            f"{uri_source(uri)}). {POINT_ELSEWHERE}"
        )
    return MlflowClient(resolved), resolved


def check_tracking_uri(uri: str, *, timeout: float = 10.0) -> str:
    """Raise TrackingError (naming the URI) unless the store answers; returns the resolved URI.

    Called on the sweep driver BEFORE any trial starts. A sqlite store is created here (its schema
    migration then never races between workers); a server is asked for /health with a short
    timeout instead of MLflow's minutes of retries."""
    uri = resolve_tracking_uri(uri)
    db = _sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(
                f"MLflow store {uri}: cannot create folder {db.parent}: {exc}"
            ) from exc
        if not os.access(db.parent, os.W_OK):
            raise TrackingError(f"MLflow store {uri}: folder {db.parent} is not writable.")
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(
                f"MLflow tracking server {uri} is not reachable ({exc}). Start it (`mlflow "
                "server --host 127.0.0.1 --port 5000 ...`), check the address, or pass another "
                "--mlflow-uri."
            ) from exc
    try:
        MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:  # MLflow raises many types (MlflowException, sqlalchemy, requests)
        raise TrackingError(f"MLflow tracking store {uri} is not usable: {exc}") from exc
    return uri


def git_commit(path: str | Path | None = None) -> tuple[str, bool]:
    """(commit hash, dirty) of the git work tree holding `path` (default: this package). Outside a
    checkout (a pip-installed copy, e.g. the Docker image) the commit is `DMX_GIT_COMMIT` (set at
    image build time), else ""."""
    where = Path(path) if path else Path(__file__).resolve().parent
    fallback = (os.environ.get("DMX_GIT_COMMIT", ""), False)
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return fallback
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return commit.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return fallback


def provenance_tags(
    *,
    preset: str = "",
    node: str | None = None,
    commit: str | None = None,
    dirty: bool | None = None,
) -> dict[str, str]:
    """Tags every dmx run carries: preset, git commit (+ dirty flag), node."""
    if commit is None:
        commit, dirty = git_commit()
    tags = {PRESET_TAG: preset, "dmx.node": node or socket.gethostname()}
    if commit:
        tags["dmx.git_commit"] = commit
        tags["dmx.git_dirty"] = str(bool(dirty)).lower()
    return tags


def param_values(flat: Mapping[str, Any]) -> dict[str, str]:
    """Flat config -> MLflow param strings (JSON for lists, at most 6000 characters each)."""
    out = {}
    for key, value in flat.items():
        text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
        out[key] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return out


@contextlib.contextmanager
def sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) until the block ends, then raise KeyboardInterrupt. A store write
    interrupted halfway leaves an sqlite transaction open whose lock this very process then waits
    on when it marks the run KILLED; deferring the signal keeps every write whole. Only the main
    thread can install handlers: elsewhere the block runs as is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught and callable(previous):
        previous(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt
    elif caught and previous == signal.SIG_DFL:
        raise KeyboardInterrupt


def retry(call: Callable[[], T], *, attempts: int = 8) -> T:
    """Retry a store call that failed because a concurrent writer held the sqlite lock. Each
    attempt runs whole: a Ctrl-C during it is raised after it (`sigint_deferred`)."""
    for i in range(attempts):
        try:
            with sigint_deferred():
                return call()
        except Exception as exc:
            if i == attempts - 1 or "locked" not in str(exc).lower():
                raise
            time.sleep(0.2 * 2**i)
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------------------------
# Experiments and runs
# --------------------------------------------------------------------------------------------
def get_or_create_experiment(client: MlflowClient, name: str, tracking_uri: str) -> str:
    """The id of experiment `name`, created (or restored from deletion) when needed."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    artifact_location = None
    db = _sqlite_path(tracking_uri)
    if db is not None:  # next to the database, not under whichever folder this process runs in
        artifact_location = (db.parent / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def find_run(client: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> str | None:
    """The id of the oldest non-deleted run carrying all `tags`, or None."""
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs(
        [experiment_id],
        filter_string=query,
        run_view_type=ViewType.ACTIVE_ONLY,
        order_by=["attributes.start_time ASC"],
        max_results=10,
    )
    return runs[0].info.run_id if runs else None


class RunLogger:
    """Writes to one MLflow run by id: params, per-epoch metrics (no repeated steps), tags,
    artifacts, and its end status. Safe to create again for the same run after a restart."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        self.tracking_uri = resolve_tracking_uri(tracking_uri)
        self.client = MlflowClient(self.tracking_uri)
        self.run_id = run_id
        run = retry(lambda: self.client.get_run(run_id))
        self.experiment_id = run.info.experiment_id
        self._params = dict(run.data.params)
        # The last step each metric already holds: a trial re-running epochs after a restore from
        # an older checkpoint must not log them again.
        self._last_step: dict[str, int] = {}
        for key in run.data.metrics:
            history = retry(lambda key=key: self.client.get_metric_history(run_id, key))
            self._last_step[key] = max((m.step for m in history), default=-1)
        if run.info.status != "RUNNING":
            retry(lambda: self.client.update_run(run_id, status="RUNNING"))

    def last_step(self, key: str) -> int:
        """The highest step logged for metric `key` (-1 when none)."""
        return self._last_step.get(key, -1)

    def log_params(self, flat: Mapping[str, Any]) -> None:
        """Log the params this run does not hold yet. MLflow params cannot change once set, so a
        value changed on resume (e.g. more epochs) is recorded as a tag `dmx.resumed_with.KEY`."""
        values = param_values(flat)
        new = [Param(k, v) for k, v in values.items() if k not in self._params]
        changed = {k: v for k, v in values.items() if k in self._params and self._params[k] != v}
        if changed:
            self.set_tags({f"dmx.resumed_with.{k}": v for k, v in changed.items()})
        for i in range(0, len(new), _PARAMS_PER_BATCH):
            chunk = new[i : i + _PARAMS_PER_BATCH]
            retry(lambda chunk=chunk: self.client.log_batch(self.run_id, params=chunk))
        self._params.update({p.key: p.value for p in new})

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> int:
        """Log `metrics` at `step`, skipping every metric that already holds this step or a later
        one. Returns how many values were written."""
        now = int(time.time() * 1000)
        new = [
            Metric(k, float(v), now, int(step))
            for k, v in metrics.items()
            if step > self._last_step.get(k, -1)
        ]
        for i in range(0, len(new), _METRICS_PER_BATCH):
            chunk = new[i : i + _METRICS_PER_BATCH]
            retry(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk))
        for m in new:
            self._last_step[m.key] = m.step
        return len(new)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        if batch:
            retry(lambda: self.client.log_batch(self.run_id, tags=batch))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> bool:
        """Upload a file if it exists; returns whether it was logged."""
        path = Path(path)
        if not path.is_file():
            return False
        retry(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path))
        return True

    def finish(self, status: str = "FINISHED", *, reason: str = "") -> None:
        """End the run: FINISHED, FAILED (with a `dmx.failure_reason` tag) or KILLED."""
        if status not in ("FINISHED", "FAILED", "KILLED"):
            raise ValueError(f"status={status!r}: expected FINISHED, FAILED or KILLED")
        if reason:
            self.set_tags({FAILURE_TAG: reason[:5000]})
        retry(lambda: self.client.set_terminated(self.run_id, status=status))

    def status(self) -> str:
        """RUNNING, FINISHED, FAILED or KILLED."""
        return str(self.client.get_run(self.run_id).info.status)


def open_run(
    tracking_uri: str,
    experiment_id: str,
    *,
    key_tags: Mapping[str, str],
    tags: Mapping[str, str] | None = None,
    run_name: str | None = None,
    run_id: str | None = None,
) -> RunLogger:
    """Resume the run `run_id` (when given and present), else the run carrying `key_tags`, else
    create one with `key_tags` + `tags`. This is how a retried or restored trial finds its run."""
    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(uri)
    found = None
    if run_id:
        try:
            run = retry(lambda: client.get_run(run_id))
            if run.info.lifecycle_stage == "active":
                found = run_id
        except MlflowException:
            found = None  # the stored id belongs to another store: fall back to the tags
    if found is None:
        found = retry(lambda: find_run(client, experiment_id, key_tags))
    if found is None:
        all_tags = {**dict(tags or {}), **dict(key_tags)}
        run = retry(lambda: client.create_run(experiment_id, tags=all_tags, run_name=run_name))
        found = run.info.run_id
    logger = RunLogger(uri, found)
    if tags:
        logger.set_tags(tags)
    return logger


# --------------------------------------------------------------------------------------------
# Analysis edge: read an artifact, attach files to an ended run
# --------------------------------------------------------------------------------------------
def download_artifact(run_id: str, artifact: str, tracking_uri: str | None = None) -> Path:
    """Local path of the file `artifact` of run `run_id`. A store with local artifacts (the
    default sqlite + mlartifacts) gives the stored file itself, nothing is copied: read it, do not
    change it. A remote store downloads it to a new temporary folder. FileNotFoundError (naming
    the store) when the run or the artifact is missing."""
    from mlflow.artifacts import download_artifacts

    client, uri = read_client(tracking_uri)  # never creates a store
    try:
        root = client.get_run(run_id).info.artifact_uri
        # By artifact URI with no destination: a local store answers with its own path (no copy,
        # no progress bar on stderr); `run_id=` would always copy through the runs:/ repository.
        local = download_artifacts(artifact_uri=f"{root.rstrip('/')}/{artifact}", tracking_uri=uri)
    except MlflowException as exc:
        raise FileNotFoundError(
            f"MLflow (tracking URI {uri}) could not give its {artifact}: {exc.message}"
        ) from None
    return Path(local)


def log_files(tracking_uri: str, run_id: str, paths: list[Path], artifact_path: str) -> list[str]:
    """Upload files under `artifact_path` of run `run_id` without reopening it (a RunLogger would
    set an ended run RUNNING again); returns the artifact paths."""
    client, _ = read_client(tracking_uri)  # the run's store exists: never create one
    for path in paths:
        retry(lambda path=path: client.log_artifact(run_id, str(path), artifact_path))
    return [f"{artifact_path}/{Path(p).name}" for p in paths]
