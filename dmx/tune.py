"""Hyperparameter sweeps on Ray Tune: the only module that imports Ray and Optuna.

A sweep = a base config (a preset with overrides) + a search space. The driver
1. checks the MLflow store and opens the sweep's experiment and parent run,
2. creates the noisy labels ONCE (every trial trains on the same file, checked by sha256; the
   validation split is fixed by `data.split_seed`, so it is the same for every trial too),
3. runs `Tuner` with Optuna's seeded TPE (the preset's own values are evaluated first) and ASHA
   early stopping on `val_acc` (the noisy validation split, never the test set), with
   `time_attr="dm_epoch"`: epochs counted from the end of warmup, because lambda_u, T and
   p_threshold have no effect during warmup.

Each trial runs `dmx.train.fit` and, at every epoch end, logs the metrics to its own MLflow run
and reports them to Tune with a checkpoint of the full TrainState. A retried trial (lost node,
crash) or a restored sweep (killed driver, `resume_sweep`) restarts from the last checkpoint and
keeps writing to the same MLflow run (its id is in the TrainState; the `dmx.trial_id` tag finds it
otherwise), skipping steps the run already holds.

Seeds: every trial uses the same `run.seed` (common random numbers: trials differ only by their
hyperparameters, and a restored trial continues bit-for-bit); the TPE sampler is seeded by the
sweep's `seed`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pyarrow.fs as pafs
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from dmx import tracking
from dmx.config import Config, ConfigError

METRIC = "val_acc"  # noisy-validation accuracy: the objective. test_acc is logged, never used.
MODE = "max"
TIME_ATTR = "dm_epoch"  # DivideMix epochs completed (0 during warmup): ASHA's clock
SPEC_FILE = "dmx_sweep.json"  # in the experiment folder: everything resume_sweep needs
NONFINITE_FILE = "dmx_nonfinite.txt"  # in a trial's storage folder: its NaN, for its retries
REDUCTION_FACTOR = 3  # ASHA keeps the top third at each rung

# Paper practice (DESIGN §5): lambda_u 0..150 (appendix table), T around 0.5, p_threshold 0.5/0.6.
DEFAULT_SEARCH = (
    "dividemix.lambda_u=0:150",
    "dividemix.T=0.2:1.0",
    "dividemix.p_threshold=0.3:0.9",
)


class SearchSpaceError(ValueError):
    """An invalid --search dimension; the message names it and shows the expected form."""


class SweepError(RuntimeError):
    """A sweep that cannot start or resume; the message says what to do."""


# --------------------------------------------------------------------------------------------
# Search space
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Dimension:
    """One searched config key: a float/int range (optionally log-scaled) or a list of choices."""

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: tuple[Any, ...] = ()

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.choices:
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        if self.integer:
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log)
        return optuna.distributions.FloatDistribution(
            float(self.low), float(self.high), log=self.log
        )

    def contains(self, value: Any) -> bool:
        if self.choices:
            return value in self.choices
        return self.low <= value <= self.high

    def spec(self) -> str:
        """The `key=...` text this dimension parses from (stored with the sweep)."""
        if self.choices:
            return f"{self.key}=" + ",".join(str(c) for c in self.choices)
        return f"{self.key}={self.low}:{self.high}" + (":log" if self.log else "")


_SPEC_HELP = "expected KEY=LOW:HIGH, KEY=LOW:HIGH:log or KEY=A,B,C (e.g. dividemix.alpha=0.5:8:log)"


def parse_dimension(spec: str, base: Config) -> Dimension:
    """Parse `KEY=LOW:HIGH[:log]` or `KEY=A,B,C` against `base` (the key's type decides int vs
    float; both ends and every choice must be valid config values)."""
    key, sep, text = spec.partition("=")
    key, text = key.strip(), text.strip()
    if not sep or not key or not text:
        raise SearchSpaceError(f"--search {spec!r}: {_SPEC_HELP}.")
    flat = base.to_flat()
    if key not in flat:
        try:
            base.with_overrides({key: "0"})
        except ConfigError as exc:
            raise SearchSpaceError(f"--search {spec!r}: {exc}") from None
    current = flat.get(key)
    is_int = isinstance(current, int) and not isinstance(current, bool)
    if "," in text or isinstance(current, (bool, str)):
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            choices = tuple(base.with_overrides({key: t}).to_flat()[key] for t in items)
        except ConfigError as exc:
            raise SearchSpaceError(f"--search {spec!r}: {exc}") from None
        if len(set(map(str, choices))) < 2:
            raise SearchSpaceError(f"--search {spec!r}: give at least two different choices.")
        return Dimension(key, choices=choices)
    parts = text.split(":")
    log = len(parts) == 3 and parts[2].strip().lower() == "log"
    if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
        raise SearchSpaceError(f"--search {spec!r}: {_SPEC_HELP}.")
    try:
        low, high = (int(p) if is_int else float(p) for p in parts[:2])
    except ValueError:
        kind = "integers" if is_int else "numbers"
        raise SearchSpaceError(f"--search {spec!r}: {key} needs {kind}; {_SPEC_HELP}.") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise SearchSpaceError(
            f"--search {spec!r}: the range is empty or inverted ({low} >= {high}); "
            f"write LOW:HIGH with LOW < HIGH."
        )
    if log and low <= 0:
        raise SearchSpaceError(f"--search {spec!r}: a log range needs LOW > 0 (got {low}).")
    for end in (low, high):
        try:
            base.with_overrides({key: end})
        except ConfigError as exc:
            raise SearchSpaceError(
                f"--search {spec!r}: the range end {end} is invalid: {exc}"
            ) from None
    return Dimension(key, low=low, high=high, log=log, integer=is_int)


def build_search_space(
    base: Config, extra: Iterable[str] = (), *, defaults: bool = True
) -> dict[str, Dimension]:
    """The default dimensions (λu, T, p_threshold) plus `extra` specs; a later spec of the same
    key replaces the earlier one (so `--search dividemix.lambda_u=0:50` narrows a default)."""
    specs = list(DEFAULT_SEARCH if defaults else ()) + list(extra)
    if not specs:
        raise SearchSpaceError("The search space is empty: give at least one --search KEY=...")
    space: dict[str, Dimension] = {}
    for spec in specs:
        dim = parse_dimension(spec, base)
        space[dim.key] = dim
    return space


def preset_point(base: Config, space: Mapping[str, Dimension]) -> dict[str, Any] | None:
    """The base config's own values of the searched keys (the paper's setting), evaluated first;
    None (with a warning) when one of them lies outside its range."""
    flat = base.to_flat()
    point = {key: flat[key] for key in space}
    outside = [k for k, dim in space.items() if not dim.contains(point[k])]
    if outside:
        warnings.warn(
            f"The preset's values of {outside} lie outside the search ranges; the preset's own "
            "setting is not evaluated first.",
            stacklevel=2,
        )
        return None
    return point


# --------------------------------------------------------------------------------------------
# The trial
# --------------------------------------------------------------------------------------------
def _file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dm_epoch(epoch: int, warmup_epochs: int) -> int:
    """DivideMix epochs completed at the end of 0-based `epoch` (0 during warmup)."""
    return max(0, epoch - warmup_epochs + 1)


def _older_checkpoints(checkpoint: tune.Checkpoint) -> list[tune.Checkpoint]:
    """The trial's other `checkpoint_*` folders older than `checkpoint`, newest first."""
    fs, path = checkpoint.filesystem, checkpoint.path.rstrip("/")
    parent, _, name = path.rpartition("/")
    try:
        infos = fs.get_file_info(pafs.FileSelector(parent))
    except OSError:
        return []
    older = sorted(
        i.path for i in infos
        if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
        and i.base_name < name  # zero-padded indices: text order is age order
    )
    return [tune.Checkpoint(p, filesystem=fs) for p in reversed(older)]


def _trial_storage() -> tuple[pafs.FileSystem, str] | None:
    """(file system, path) of this trial's folder on the sweep's storage (shared by every node)."""
    try:
        from ray.train._internal.session import get_session  # no public API for this

        storage = get_session().storage
        return storage.storage_filesystem, storage.trial_fs_path
    except Exception:  # noqa: BLE001 - outside a Tune session: nothing to share
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
        (i.path for i in infos
         if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")
         and i.base_name > current),
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
    from dmx.state import CheckpointError, load_latest_checkpoint

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
        f"No usable checkpoint for this trial (latest: {checkpoint.path}): " + " | ".join(errors)
        + " Restart the trial from scratch (resume_sweep(..., restart_errored=True)) or restore "
        "the files from a backup."
    )


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
    from dmx.train import NonFiniteLossError

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


def train_trial(
    params: dict[str, Any], *, base_config: dict[str, Any], sweep: dict[str, Any]
) -> None:
    """The Ray Tune function trainable: one DivideMix run with the trial's `params` (flat dotted
    keys) over `base_config`. `sweep` carries the MLflow ids, the noisy-label sha256 and the
    provenance computed on the driver."""
    import torch

    from dmx.state import save_checkpoint
    from dmx.train import NonFiniteLossError, fit

    torch.set_num_threads(max(1, int(sweep.get("cpus_per_trial", 1))))
    ctx = tune.get_context()
    trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()
    cfg = Config.from_flat({**base_config, **params})
    label_file = cfg.noise.label_file
    if label_file:
        if not Path(label_file).is_file():
            raise FileNotFoundError(
                f"Trial {trial_id} on {ray.util.get_node_ip_address()}: the sweep's noisy-label "
                f"file {label_file} is missing. Put the data folder on storage every node mounts "
                "at the same path (see docs/sweeps.md)."
            )
        if sweep.get("label_sha256") and _file_sha256(label_file) != sweep["label_sha256"]:
            raise RuntimeError(
                f"Trial {trial_id}: {label_file} differs from the file the sweep started with "
                "(sha256 mismatch); every trial must train on the same noisy labels."
            )

    _fail_fast_if_nonfinite(sweep.get("session", ""))
    checkpoint = tune.get_checkpoint()
    if trial_id not in sweep.get("fresh_trials", ()):  # restart_errored: from scratch on purpose
        checkpoint = _newest_checkpoint(checkpoint)
    state = _restore_state(checkpoint) if checkpoint is not None else None

    logger = None
    if sweep.get("tracking_uri"):
        tags = tracking.provenance_tags(
            preset=cfg.preset, node=ray.util.get_node_ip_address(),
            commit=sweep.get("git_commit", ""), dirty=sweep.get("git_dirty", False),
        )
        tags.update({"dmx.trial_name": trial_name, "dmx.sweep": sweep.get("name", "")})
        logger = tracking.start_trial_run(
            sweep["tracking_uri"], sweep["experiment_id"], trial_id=trial_id,
            parent_run_id=sweep["parent_run_id"], flat_config=cfg.to_flat(),
            run_id=(state.mlflow_run_id or None) if state is not None else None,
            run_name=trial_name, tags=tags,
        )
        if state is not None:
            state.mlflow_run_id = logger.run_id
            logger.set_tags({"dmx.restored_from_epoch": state.epoch})

    # fit's run directory lives outside Ray's trial folder (which Tune syncs to storage at every
    # report): Tune gets the checkpoint explicitly below, MLflow gets the small files.
    run_dir = Path(tempfile.mkdtemp(prefix=f"dmx-{trial_id}-"))
    first_report = True

    def report(epoch: int, metrics: dict[str, float], st: Any) -> None:
        nonlocal first_report
        if logger is not None:
            st.mlflow_run_id = logger.run_id
            logger.log_metrics(metrics, step=epoch)
            if first_report:
                for name in ("config.json", "noisy_labels.parquet"):
                    logger.log_artifact(run_dir / name)
        # Hand Tune this epoch's checkpoint. fit has just written it; a hard link costs nothing.
        # The first report of a new trial saves afresh so the file carries the MLflow run id.
        with tempfile.TemporaryDirectory(prefix="dmx-report-") as tmp:
            written = run_dir / "checkpoints" / f"ckpt-{st.epoch:04d}.pt"
            if first_report or not written.is_file():
                save_checkpoint(st, Path(tmp), keep=1)
            else:
                for src in (written, written.with_name(written.name + ".sha256")):
                    try:
                        os.link(src, Path(tmp) / src.name)
                    except OSError:  # another file system: copy
                        shutil.copyfile(src, Path(tmp) / src.name)
            first_report = False
            result = {**metrics, TIME_ATTR: dm_epoch(epoch, cfg.dividemix.warmup_epochs)}
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(tmp))

    try:
        fit(cfg, report=report, state=state, run_dir=run_dir)
        if logger is not None:
            tracking.log_run_dir_artifacts(logger, run_dir)
            logger.finish("FINISHED")
    except Exception as exc:
        # Tune may retry the trial from its checkpoint; the driver marks the run FAILED only when
        # it gives up. Record why this attempt failed.
        if isinstance(exc, NonFiniteLossError):
            _record_nonfinite(sweep.get("session", ""), exc)
        if logger is not None:
            logger.set_tags({"dmx.last_error": f"{type(exc).__name__}: {exc}"[:5000]})
        raise
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


@ray.remote(max_retries=1)
def _stopped_trial_report(
    checkpoint: tune.Checkpoint, tracking_uri: str, experiment_id: str, trial_id: str,
    threads: int,
) -> bool:
    """clean_probs.parquet of a trial stopped early, from its last checkpoint, into its MLflow run
    (the trial's own process ends at a report and never writes it)."""
    import torch

    from dmx.train import sample_report_from_checkpoint

    torch.set_num_threads(max(1, threads))
    source = checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
    with checkpoint.as_directory() as folder, tempfile.TemporaryDirectory() as tmp:
        out = sample_report_from_checkpoint(Path(folder), Path(tmp) / "clean_probs.parquet")
        return tracking.log_trial_artifact(
            tracking_uri, experiment_id, trial_id, out,
            tags={"dmx.clean_probs_from": f"last checkpoint ({source})"},
        )


class MlflowStatusCallback(tune.Callback):
    """Driver side: end a trial's MLflow run when Tune is done with it. A trial stopped early by
    ASHA never reaches the end of its function, so its run is closed here (FINISHED, tagged
    `dmx.stopped_early`) and its per-sample report is computed from its last checkpoint by a Ray
    task with the trial's resources (waited for when the sweep ends); a trial out of retries is
    marked FAILED with the reason."""

    def __init__(self, tracking_uri: str, experiment_id: str, epochs: int,
                 cpus_per_trial: float = 1, gpus_per_trial: float = 0) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.epochs = epochs
        self.cpus_per_trial = cpus_per_trial
        self.gpus_per_trial = gpus_per_trial
        self._reports: dict[str, Any] = {}  # trial id -> ObjectRef of its report task

    def __getstate__(self) -> dict[str, Any]:  # Tune saves callbacks with the experiment
        return {**self.__dict__, "_reports": {}}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        done = int(last.get("epoch", -1)) + 1
        tracking.end_trial_run(
            self.tracking_uri, self.experiment_id, trial.trial_id, "FINISHED",
            tags={"dmx.stopped_early": str(done < self.epochs).lower(), "dmx.epochs_done": done},
        )
        checkpoint = getattr(trial, "checkpoint", None)
        if done < self.epochs and checkpoint is not None:
            self._reports[trial.trial_id] = _stopped_trial_report.options(
                num_cpus=self.cpus_per_trial, num_gpus=self.gpus_per_trial
            ).remote(checkpoint, self.tracking_uri, self.experiment_id, trial.trial_id,
                     int(self.cpus_per_trial))

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """Wait for the per-sample reports of stopped trials; a failed one is a warning (the
        trial's checkpoint still gives it: `dmx label-issues TRIAL/checkpoint_N`)."""
        for trial_id, ref in self._reports.items():
            try:
                ray.get(ref, timeout=3600)
            except Exception as exc:  # noqa: BLE001 - the sweep's results stand without it
                warnings.warn(
                    f"Trial {trial_id} was stopped early and its clean_probs.parquet could not be "
                    f"computed from its last checkpoint ({type(exc).__name__}: {exc}). Run "
                    "`dmx label-issues` on that trial's checkpoint_* folder instead.",
                    stacklevel=2,
                )
        self._reports.clear()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        reason = "trial failed"
        error_file = getattr(trial, "error_file", None)
        if error_file and Path(error_file).is_file():
            lines = Path(error_file).read_text(errors="replace").strip().splitlines()
            reason = lines[-1] if lines else reason
        tracking.end_trial_run(
            self.tracking_uri, self.experiment_id, trial.trial_id, "FAILED", reason=reason
        )


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Tune's default puts every param in the name)."""
    return f"trial_{trial.trial_id}"


# --------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------
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


@dataclass
class SweepResult:
    path: str
    """The experiment folder (or URI): pass it to `resume_sweep`."""
    tracking_uri: str
    experiment: str
    num_trials: int
    num_errors: int
    best_trial_id: str
    best_params: dict[str, Any]
    best_metrics: dict[str, float]
    best_checkpoint: str
    interrupted: bool
    result_grid: Any = None

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("result_grid")
        return out


def _normalize_storage(path: str | os.PathLike) -> str:
    text = str(path)
    if "://" in text:
        return text.rstrip("/")
    return str(Path(text).expanduser().resolve())


def _join(storage: str, name: str) -> str:
    return f"{storage.rstrip('/')}/{name}"


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri if "://" in uri else str(Path(uri).resolve()))


def _read_spec(path: str) -> SweepSpec | None:
    fs, base = _filesystem(path)
    target = f"{base.rstrip('/')}/{SPEC_FILE}"
    if fs.get_file_info(target).type == pafs.FileType.NotFound:
        return None
    with fs.open_input_stream(target) as fh:
        return SweepSpec(**json.loads(fh.read().decode()))


def _write_spec(spec: SweepSpec) -> None:
    fs, base = _filesystem(spec.path)
    fs.create_dir(base, recursive=True)
    with fs.open_output_stream(f"{base.rstrip('/')}/{SPEC_FILE}") as fh:
        fh.write((json.dumps(asdict(spec), indent=2, sort_keys=True) + "\n").encode())


def _check_ray_address(address: str, *, timeout: float = 5.0) -> None:
    """Fail in seconds, naming the address, when nothing listens at a HOST:PORT Ray address
    (ray.init would otherwise retry for minutes). `auto` and `local` are left to Ray."""
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SweepError(
            f"No Ray cluster answers at --address {address} ({exc}). Start one there (`ray start "
            "--head --port PORT` on the head node), check the host and port (the head prints "
            "them), or drop --address to run on a local Ray instance."
        ) from None


def _init_ray(address: str | None) -> None:
    if ray.is_initialized():
        return
    if address:
        _check_ray_address(address)
        try:
            ray.init(address=address)
        except ConnectionError as exc:
            raise SweepError(
                f"Cannot connect to a Ray cluster at --address {address}: {exc} Start one "
                "(`ray start --head`) or drop --address to run on a local Ray instance."
            ) from None
    else:
        # A new local Ray, even when a cluster already runs on this machine (plain ray.init()
        # would join that one: --address auto says so explicitly). Its dashboard (when installed)
        # serves on this machine only; expose it through an SSH tunnel, never by binding 0.0.0.0.
        ray.init(address="local", dashboard_host="127.0.0.1")


def _trainable(spec: SweepSpec, fresh_trials: Iterable[str] = ()) -> Any:
    sweep = {
        "name": spec.name,
        "tracking_uri": spec.tracking_uri,
        "experiment_id": spec.experiment_id,
        "parent_run_id": spec.parent_run_id,
        "label_sha256": spec.label_sha256,
        "git_commit": spec.git_commit,
        "git_dirty": spec.git_dirty,
        "cpus_per_trial": spec.cpus_per_trial,
        "fresh_trials": sorted(fresh_trials),
        "session": uuid.uuid4().hex,  # this driver session (see _fail_fast_if_nonfinite)
    }
    fn = tune.with_parameters(train_trial, base_config=spec.base_config, sweep=sweep)
    return tune.with_resources(fn, {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})


def _open_tracking(spec: SweepSpec, mlflow_uri: str | None) -> None:
    spec.tracking_uri = tracking.check_tracking_uri(mlflow_uri or spec.tracking_uri or None)
    parent = tracking.start_sweep_run(
        spec.tracking_uri, spec.experiment or spec.name, sweep_name=spec.name,
        base_config=spec.base_config,
        tags={
            **tracking.provenance_tags(
                preset=spec.base_config.get("preset", ""),
                commit=spec.git_commit,
                dirty=spec.git_dirty,
            ),
            "dmx.search": " ".join(spec.search),
            "dmx.ray_results": spec.path,
        },
    )
    spec.experiment = spec.experiment or spec.name
    spec.experiment_id = parent.experiment_id
    spec.parent_run_id = parent.run_id


def run_sweep(
    base: Config,
    *,
    name: str,
    storage_path: str | os.PathLike = "ray_results",
    num_samples: int = 20,
    search: Iterable[str] = (),
    default_search: bool = True,
    max_concurrent: int = 1,
    cpus_per_trial: float = 1,
    gpus_per_trial: float = 0,
    max_failures: int = 3,
    seed: int = 0,
    grace_period: int | None = None,
    mlflow_uri: str | None = None,
    track: bool = True,
    address: str | None = None,
    verbose: int | None = None,
) -> SweepResult:
    """Run a new sweep of `base` over the search space and return its best trial.

    `storage_path` is a local folder, a shared file system path or a pyarrow URI (s3://, gs://);
    results land in `storage_path/name`. `grace_period` counts DivideMix epochs after warmup
    (default 16, lambda_u's ramp-up length); ASHA's rungs all lie before the last epoch, and with
    a grace period that reaches it there is no early stopping."""
    if num_samples < 1:
        raise SweepError(f"num_samples={num_samples}: run at least one trial.")
    if max_concurrent < 1:
        raise SweepError(f"max_concurrent={max_concurrent}: must be >= 1.")
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise SweepError(
            f"cpus_per_trial={cpus_per_trial}, gpus_per_trial={gpus_per_trial}: need cpus > 0 and "
            "gpus >= 0 (fractions such as 0.5 share a GPU between trials)."
        )
    space = build_search_space(base, search, defaults=default_search)
    dm_epochs = base.run.epochs - base.dividemix.warmup_epochs
    if dm_epochs < 1:
        raise SweepError(
            f"run.epochs={base.run.epochs} <= dividemix.warmup_epochs="
            f"{base.dividemix.warmup_epochs}: the searched parameters would never take effect."
        )
    if grace_period is not None and grace_period < 1:
        raise SweepError(f"grace_period={grace_period}: must be >= 1 DivideMix epoch.")
    # ASHA's rungs all lie BEFORE the last epoch: pruning at the last epoch saves nothing, and a
    # trial that trains to the end then finishes by itself (logging its final per-sample file).
    # A grace period reaching the last epoch leaves nothing to prune: then every trial runs to the
    # end (FIFO).
    last_rung = dm_epochs - 1
    grace = grace_period if grace_period is not None else 16
    storage = _normalize_storage(storage_path)
    commit, dirty = tracking.git_commit()
    spec = SweepSpec(
        name=name, storage_path=storage, base_config={}, search=[d.spec() for d in space.values()],
        num_samples=num_samples, max_concurrent=max_concurrent, cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial, max_failures=max_failures, seed=seed, grace_period=grace,
        git_commit=commit, git_dirty=dirty,
    )
    if _read_spec(spec.path) is not None:
        raise SweepError(
            f"A sweep named {name!r} already exists at {spec.path}. Resume it (--resume) or "
            "choose another --name."
        )
    # The tracking store is checked before anything else is done (and before any trial starts).
    if track:
        spec.tracking_uri = tracking.check_tracking_uri(mlflow_uri)
    # Then the Ray cluster, before any file or MLflow run is created (nothing left half-made).
    _init_ray(address)
    # Noisy labels once, on the driver; trials get the absolute path, never download, and check
    # the sha256.
    from dmx.train import prepare_noisy_labels

    prepared = prepare_noisy_labels(base).with_overrides({"data.download": False})
    spec.base_config = prepared.to_flat()
    if prepared.noise.label_file:
        spec.label_sha256 = _file_sha256(prepared.noise.label_file)
    if track:
        _open_tracking(spec, spec.tracking_uri)
    _write_spec(spec)

    searcher = OptunaSearch(
        space={key: dim.distribution() for key, dim in space.items()},
        metric=METRIC,
        mode=MODE,
        points_to_evaluate=[p] if (p := preset_point(prepared, space)) else None,
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    scheduler = None
    if grace <= last_rung:
        scheduler = ASHAScheduler(
            time_attr=TIME_ATTR,
            metric=METRIC,
            mode=MODE,
            max_t=last_rung,
            grace_period=grace,
            reduction_factor=REDUCTION_FACTOR,
            stop_last_trials=False,  # past max_t a trial runs on to run.epochs
        )
    tuner = tune.Tuner(
        _trainable(spec),
        tune_config=tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler,  # both carry metric and mode
            num_samples=num_samples, max_concurrent_trials=max_concurrent,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=prepared.run.keep_checkpoints),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=[MlflowStatusCallback(spec.tracking_uri, spec.experiment_id, base.run.epochs,
                                            cpus_per_trial, gpus_per_trial)]
            if track else None,
            verbose=verbose,
        ),
    )
    return _finish(spec, tuner.fit())


def resume_sweep(
    path: str | os.PathLike,
    *,
    address: str | None = None,
    mlflow_uri: str | None = None,
    restart_errored: bool = False,
) -> SweepResult:
    """Continue an interrupted sweep from its experiment folder `path` (`storage_path/name`):
    unfinished trials resume from their last checkpoints, errored ones too (from their checkpoint,
    or from scratch with `restart_errored`), and the search goes on to `num_samples` trials."""
    path = _normalize_storage(path)
    spec = _read_spec(path)
    if spec is None or not tune.Tuner.can_restore(path):
        raise SweepError(
            f"No dmx sweep to resume at {path} (expected {SPEC_FILE} and Tune's experiment state "
            "there). Pass the sweep's folder: STORAGE_PATH/NAME."
        )
    spec.storage_path = path.rsplit("/", 1)[0]
    label_file = spec.base_config.get("noise.label_file")
    if label_file and spec.label_sha256 and _file_sha256(label_file) != spec.label_sha256:
        raise SweepError(f"{label_file} changed since the sweep started (sha256 mismatch).")
    if spec.tracking_uri or mlflow_uri:  # checked before Ray starts; reopened after
        tracking.check_tracking_uri(mlflow_uri or spec.tracking_uri)
    _init_ray(address)
    if spec.tracking_uri or mlflow_uri:
        _open_tracking(spec, mlflow_uri)
        _write_spec(spec)
    fresh = []  # errored trials restarted from scratch must not pick up their old checkpoints
    if restart_errored:
        fresh = [t.trial_id for t in tune.ExperimentAnalysis(path).trials if t.status == "ERROR"]
    tuner = tune.Tuner.restore(
        path,
        trainable=_trainable(spec, fresh),
        resume_unfinished=True,
        resume_errored=not restart_errored,
        restart_errored=restart_errored,
    )
    return _finish(spec, tuner.fit())


def best_result(results: Iterable[Any]) -> Any:
    """The result with the highest last-reported `val_acc` among trials that did NOT fail (a
    trial that errored after a good epoch is no candidate: its model diverged or crashed), or
    None. Non-finite objectives are skipped. Tune's `get_best_result` counts errored trials."""
    candidates = [
        r for r in results
        if r.error is None and r.metrics and math.isfinite(float(r.metrics.get(METRIC, math.nan)))
    ]
    return max(candidates, key=lambda r: float(r.metrics[METRIC]), default=None)


def _finish(spec: SweepSpec, grid: Any) -> SweepResult:
    # The saved experiment state tells an interrupted sweep (Ctrl+C) from a finished one: Tune
    # marks running trials TERMINATED in memory when it stops, but saves them as unfinished.
    saved = tune.ExperimentAnalysis(spec.path).trials
    unfinished = [t.trial_id for t in saved if t.status not in ("TERMINATED", "ERROR")]
    interrupted = bool(unfinished) or len(saved) < spec.num_samples
    best = best_result(grid)
    best_params: dict[str, Any] = {}
    best_metrics: dict[str, float] = {}
    best_id = best_ckpt = ""
    if best is not None and best.metrics:
        searched = [s.partition("=")[0] for s in spec.search]
        best_params = {k: best.config[k] for k in searched if k in best.config}
        best_metrics = {
            k: float(v) for k, v in best.metrics.items()
            if k in (METRIC, "test_acc", "best_test_acc", "last10_test_acc", "epoch", TIME_ATTR)
        }
        best_id = str(best.metrics.get("trial_id", ""))
        best_ckpt = best.checkpoint.path if best.checkpoint is not None else ""
    if spec.tracking_uri:
        parent = tracking.RunLogger(spec.tracking_uri, spec.parent_run_id)
        if best_metrics:
            summary = {f"best_trial_{k}": v for k, v in best_metrics.items() if k != "epoch"}
            parent.log_metrics(summary, step=0)
            parent.set_tags({"dmx.best_trial_id": best_id,
                             **{f"dmx.best.{k}": v for k, v in best_params.items()}})
        for trial_id in unfinished:  # reopened (RUNNING) by resume_sweep
            tracking.end_trial_run(spec.tracking_uri, spec.experiment_id, trial_id, "KILLED",
                                   reason="sweep interrupted; resume it with --resume")
        parent.finish("KILLED" if interrupted else "FINISHED",
                      reason="driver interrupted; resume with --resume" if interrupted else "")
    return SweepResult(
        path=spec.path, tracking_uri=spec.tracking_uri, experiment=spec.experiment,
        num_trials=len(grid), num_errors=grid.num_errors, best_trial_id=best_id,
        best_params=best_params, best_metrics=best_metrics, best_checkpoint=best_ckpt,
        interrupted=interrupted, result_grid=grid,
    )


__all__ = [
    "DEFAULT_SEARCH",
    "Dimension",
    "METRIC",
    "MlflowStatusCallback",
    "SearchSpaceError",
    "SweepError",
    "SweepResult",
    "SweepSpec",
    "TIME_ATTR",
    "best_result",
    "build_search_space",
    "dm_epoch",
    "parse_dimension",
    "preset_point",
    "resume_sweep",
    "run_sweep",
    "train_trial",
]
