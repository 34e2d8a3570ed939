"""Sweeps on Ray Tune: start, resume and summarise them.

A sweep = a base config (a preset with overrides) + a search space (`dmx.sweep.space`). The driver
1. checks the MLflow store and opens the sweep's experiment and parent run,
2. creates the noisy labels ONCE (every trial trains on the same file, checked by sha256; the
   validation split is fixed by `data.split_seed`, so it is the same for every trial too),
3. runs `Tuner` with Optuna's seeded TPE (the preset's own values are evaluated first) and ASHA
   early stopping on `val_acc` (the noisy validation split, never the test set), with
   `time_attr="dm_epoch"`: epochs counted from the end of warmup, because lambda_u, T and
   p_threshold have no effect during warmup.
Each trial is `dmx.sweep.trial.train_trial`; the TPE sampler is seeded by the sweep's `seed`.
Everything a sweep was started with is stored beside Tune's state (`dmx_sweep.json`), so that
`resume_sweep(path)` continues a sweep whose driver was killed.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from dmx import tracking
from dmx.config import Config
from dmx.files import sha256_file
from dmx.prepare import prepare_noisy_labels
from dmx.sweep.callbacks import MlflowStatusCallback
from dmx.sweep.space import build_search_space, preset_point
from dmx.sweep.spec import SPEC_FILE, SweepSpec, normalize_storage, read_spec, write_spec
from dmx.sweep.trial import TIME_ATTR, TrialContext, train_trial

METRIC = "val_acc"  # noisy-validation accuracy: the objective. test_acc is logged, never used.
MODE = "max"
REDUCTION_FACTOR = 3  # ASHA keeps the top third at each rung


class SweepError(RuntimeError):
    """A sweep that cannot start or resume; the message says what to do."""


@dataclass
class SweepResult:
    """What a sweep (or its resumption) ended with: its best trial, chosen on `val_acc`."""

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


# --------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------
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
    """Join the cluster at `address`, or start a local Ray; nothing when Ray already runs."""
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


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Tune's default puts every param in the name)."""
    return f"trial_{trial.trial_id}"


def _trainable(spec: SweepSpec, fresh_trials: Iterable[str] = ()) -> Any:
    """`train_trial` bound to the sweep's base config and this driver session's TrialContext,
    with the trial's resources."""
    context = TrialContext(
        name=spec.name,
        tracking_uri=spec.tracking_uri,
        experiment_id=spec.experiment_id,
        parent_run_id=spec.parent_run_id,
        label_sha256=spec.label_sha256,
        git_commit=spec.git_commit,
        git_dirty=spec.git_dirty,
        cpus_per_trial=spec.cpus_per_trial,
        fresh_trials=tuple(sorted(fresh_trials)),
        session=uuid.uuid4().hex,  # this driver session (a NaN note of another one is stale)
    )
    fn = tune.with_parameters(train_trial, base_config=spec.base_config, context=context)
    return tune.with_resources(fn, {"cpu": spec.cpus_per_trial, "gpu": spec.gpus_per_trial})


# --------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------
def _open_tracking(spec: SweepSpec, mlflow_uri: str | None) -> None:
    spec.tracking_uri = tracking.check_tracking_uri(mlflow_uri or spec.tracking_uri or None)
    parent = tracking.start_sweep_run(
        spec.tracking_uri,
        spec.experiment or spec.name,
        sweep_name=spec.name,
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
    storage = normalize_storage(storage_path)
    commit, dirty = tracking.git_commit()
    spec = SweepSpec(
        name=name,
        storage_path=storage,
        base_config={},
        search=[d.spec() for d in space.values()],
        num_samples=num_samples,
        max_concurrent=max_concurrent,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        max_failures=max_failures,
        seed=seed,
        grace_period=grace,
        git_commit=commit,
        git_dirty=dirty,
    )
    if read_spec(spec.path) is not None:
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
    prepared = prepare_noisy_labels(base).with_overrides({"data.download": False})
    spec.base_config = prepared.to_flat()
    if prepared.noise.label_file:
        spec.label_sha256 = sha256_file(prepared.noise.label_file)
    if track:
        _open_tracking(spec, spec.tracking_uri)
    write_spec(spec)

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
            search_alg=searcher,
            scheduler=scheduler,  # both carry metric and mode
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=prepared.run.keep_checkpoints),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            callbacks=[
                MlflowStatusCallback(
                    spec.tracking_uri,
                    spec.experiment_id,
                    base.run.epochs,
                    cpus_per_trial,
                    gpus_per_trial,
                )
            ]
            if track
            else None,
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
    path = normalize_storage(path)
    spec = read_spec(path)
    if spec is None or not tune.Tuner.can_restore(path):
        raise SweepError(
            f"No dmx sweep to resume at {path} (expected {SPEC_FILE} and Tune's experiment state "
            "there). Pass the sweep's folder: STORAGE_PATH/NAME."
        )
    spec.storage_path = path.rsplit("/", 1)[0]
    label_file = spec.base_config.get("noise.label_file")
    if label_file and spec.label_sha256 and sha256_file(label_file) != spec.label_sha256:
        raise SweepError(f"{label_file} changed since the sweep started (sha256 mismatch).")
    if spec.tracking_uri or mlflow_uri:  # checked before Ray starts; reopened after
        tracking.check_tracking_uri(mlflow_uri or spec.tracking_uri)
    _init_ray(address)
    if spec.tracking_uri or mlflow_uri:
        _open_tracking(spec, mlflow_uri)
        write_spec(spec)
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
        r
        for r in results
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
            k: float(v)
            for k, v in best.metrics.items()
            if k in (METRIC, "test_acc", "best_test_acc", "last10_test_acc", "epoch", TIME_ATTR)
        }
        best_id = str(best.metrics.get("trial_id", ""))
        best_ckpt = best.checkpoint.path if best.checkpoint is not None else ""
    if spec.tracking_uri:
        parent = tracking.RunLogger(spec.tracking_uri, spec.parent_run_id)
        if best_metrics:
            summary = {f"best_trial_{k}": v for k, v in best_metrics.items() if k != "epoch"}
            parent.log_metrics(summary, step=0)
            parent.set_tags(
                {
                    "dmx.best_trial_id": best_id,
                    **{f"dmx.best.{k}": v for k, v in best_params.items()},
                }
            )
        for trial_id in unfinished:  # reopened (RUNNING) by resume_sweep
            tracking.end_trial_run(
                spec.tracking_uri,
                spec.experiment_id,
                trial_id,
                "KILLED",
                reason="sweep interrupted; resume it with --resume",
            )
        parent.finish(
            "KILLED" if interrupted else "FINISHED",
            reason="driver interrupted; resume with --resume" if interrupted else "",
        )
    return SweepResult(
        path=spec.path,
        tracking_uri=spec.tracking_uri,
        experiment=spec.experiment,
        num_trials=len(grid),
        num_errors=grid.num_errors,
        best_trial_id=best_id,
        best_params=best_params,
        best_metrics=best_metrics,
        best_checkpoint=best_ckpt,
        interrupted=interrupted,
        result_grid=grid,
    )


__all__ = [  # with re-exports from dmx.sweep.spec and dmx.sweep.callbacks
    "METRIC",
    "MODE",
    "MlflowStatusCallback",
    "SPEC_FILE",
    "SweepError",
    "SweepResult",
    "SweepSpec",
    "best_result",
    "normalize_storage",
    "resume_sweep",
    "run_sweep",
    "trial_dirname",
]
