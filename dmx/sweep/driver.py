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
The Optuna study lives in an RDB storage (default `sqlite:///STORAGE/NAME/optuna.db`, study name =
sweep name), so `optuna.load_study` and `optuna-dashboard` read a running or finished sweep.
Everything a sweep was started with is stored beside Tune's state (`dmx_sweep.json`), so that
`resume_sweep(path)` continues a sweep whose driver was killed.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

from ray import tune

from dmx import tracking
from dmx.config import Config
from dmx.files import sha256_file
from dmx.prepare import prepare_noisy_labels
from dmx.sweep.callbacks import MlflowStatusCallback
from dmx.sweep.checks import check_storage, check_validation_split, ray_session
from dmx.sweep.lock import SweepLock
from dmx.sweep.record import description, log_best_model, open_tracking
from dmx.sweep.space import build_search_space
from dmx.sweep.spec import (
    SPEC_FILE,
    SweepError,
    SweepOptions,
    SweepSpec,
    clear_unstarted,
    has_tune_state,
    normalize_storage,
    read_spec,
    write_spec,
)
from dmx.sweep.trial import TIME_ATTR
from dmx.sweep.tuner import (
    METRIC,
    MODE,
    grid_tuner,
    optuna_storage_url,
    search_tuner,
    trainable,
    trial_dirname,
)
from dmx.tracking import ui


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
    experiment_id: str = ""
    best_run_id: str = ""
    """The MLflow run of the best trial."""
    optuna_storage: str = ""
    """The Optuna study's storage URL (study name = sweep name); "" when it is in memory."""
    model_uri: str = ""
    """The best trial's ensemble in MLflow (models:/...), "" when it could not be logged."""
    result_grid: Any = None

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("result_grid")
        return out


def _fit(spec: SweepSpec, tuner: tune.Tuner) -> Any:
    """`tuner.fit()`; a driver that crashes (not Tune's own Ctrl-C handling, which returns) ends
    the sweep's parent run instead of leaving it RUNNING."""
    try:
        return tuner.fit()
    except BaseException as exc:
        if spec.tracking_uri and spec.parent_run_id:
            killed = isinstance(exc, KeyboardInterrupt)
            try:
                tracking.RunLogger(spec.tracking_uri, spec.parent_run_id).finish(
                    "KILLED" if killed else "FAILED",
                    reason="driver interrupted; resume with --resume"
                    if killed
                    else f"driver failed ({type(exc).__name__}: {exc}); resume with --resume",
                )
            except Exception:  # noqa: BLE001 - the original error matters more
                pass
        raise


def _start_unstarted(earlier: SweepSpec, spec: SweepSpec | None = None) -> None:
    """The sweep at `earlier.path` wrote its spec, but its driver stopped before Tune saved any
    state: no trial ran. Clear Tune's leftovers so the sweep starts cleanly. `spec`: the new
    sweep that replaces it (None: the same sweep, started from its spec); an MLflow parent run the
    new sweep will not reuse is ended KILLED."""
    clear_unstarted(earlier.path)
    warnings.warn(
        f"The sweep at {earlier.path} was started ({earlier.created}) but its driver stopped "
        "before any trial ran (no Tune state was saved): starting its trials now.",
        stacklevel=3,
    )
    if spec is None or not earlier.tracking_uri or not earlier.parent_run_id:
        return
    if spec.tracking_uri == earlier.tracking_uri:
        return  # start_sweep_run finds the same parent run again (by its dmx.sweep tag)
    try:
        tracking.RunLogger(earlier.tracking_uri, earlier.parent_run_id).finish(
            "KILLED", reason="the sweep was started again (elsewhere) before any trial ran"
        )
    except Exception as exc:  # noqa: BLE001 - an old store that is gone changes nothing here
        warnings.warn(
            f"Could not end the earlier parent run {earlier.parent_run_id} in "
            f"{earlier.tracking_uri}: {exc}",
            stacklevel=3,
        )


def run_sweep(
    base: Config,
    options: SweepOptions,
    *,
    mlflow_uri: str | None = None,
    track: bool = True,
    address: str | None = None,
    verbose: int | None = None,
) -> SweepResult:
    """Run a new sweep of `base` over the search space and return its best trial.

    Results land in `options.path` (`storage_path/name`). Checked before Ray starts or anything is
    made: the validation split (`data.val_fraction` > 0: the objective), the search space, the
    storage folder, the MLflow store; then, holding the sweep's lock, that no sweep of this name
    ran already, the Ray cluster and the per-trial resources. `options.grace_period` counts
    DivideMix epochs after warmup; ASHA's rungs all lie before the last epoch, and with a grace
    period that reaches it there is no early stopping."""
    base = base.resolved()  # concrete warmup epochs for ASHA's clock and the stored base config
    check_validation_split(base)
    space = build_search_space(base, options.search, defaults=options.default_search)
    if base.run.epochs - base.dividemix.warmup_epochs < 1:
        raise SweepError(
            f"run.epochs={base.run.epochs} <= dividemix.warmup_epochs="
            f"{base.dividemix.warmup_epochs}: the searched parameters would never take effect."
        )
    if options.is_grid:
        raise SweepError("a grid (SweepOptions.cells) runs with run_grid, not run_sweep.")
    check_storage(options.path)
    commit, dirty = tracking.git_commit()
    spec = SweepSpec(
        # The stored space lists every dimension: it does not change with later defaults.
        options=replace(
            options, search=tuple(d.spec() for d in space.values()), default_search=False
        ),
        base_config={},
        git_commit=commit,
        git_dirty=dirty,
    )
    # The tracking store is checked before anything else is done (and before any trial starts).
    if track:
        spec.tracking_uri = tracking.check_tracking_uri(mlflow_uri)
    with SweepLock(spec.path):
        _refuse_existing(spec)
        # Then the Ray cluster, before any file or MLflow run is created (nothing left half-made).
        with ray_session(address, spec.options):
            # Noisy labels once, on the driver; trials get the absolute path, never download,
            # and check the sha256.
            prepared = prepare_noisy_labels(base).with_overrides({"data.download": False})
            spec.base_config = prepared.to_flat()
            if prepared.noise.label_file:
                spec.label_sha256 = sha256_file(prepared.noise.label_file)
            if track:
                open_tracking(spec, spec.tracking_uri)
            write_spec(spec)
            return _finish(spec, _fit(spec, search_tuner(spec, prepared, verbose=verbose)))


def run_grid(
    cells: dict[str, Config],
    options: SweepOptions,
    *,
    mlflow_uri: str | None = None,
    track: bool = True,
    address: str | None = None,
    verbose: int | None = None,
) -> SweepResult:
    """Run a grid: every config of `cells` (name -> config, e.g. the paper's presets) with
    `options.seeds` seeds (run.seed, run.seed + 1, ...), each once, as ONE Tune experiment: no
    search, no early stopping, no validation split needed (nothing is selected). Every cell's
    noisy labels are made once, on the driver; trials are checkpointed every epoch and resume
    with `resume_sweep` (finished trials are not run again). MLflow: one experiment, a parent run
    tagged `dmx.grid`, each trial tagged with its cell and seed (`analysis.paper_table`)."""
    if not cells or tuple(cells) != options.cells:
        raise SweepError(
            f"options.cells={list(options.cells)} must name the grid's cells {list(cells)}, "
            "in order."
        )
    resolved = {
        name: cfg.resolved().with_overrides({"preset": name}) for name, cfg in cells.items()
    }
    check_storage(options.path)
    commit, dirty = tracking.git_commit()
    spec = SweepSpec(options=options, base_config={}, git_commit=commit, git_dirty=dirty)
    if track:
        spec.tracking_uri = tracking.check_tracking_uri(mlflow_uri)
    with SweepLock(spec.path):
        _refuse_existing(spec)
        with ray_session(address, spec.options):
            for name, cfg in resolved.items():  # labels once per cell, on the driver
                prepared = prepare_noisy_labels(cfg).with_overrides({"data.download": False})
                spec.cell_configs[name] = prepared.to_flat()
                if prepared.noise.label_file:
                    spec.cell_label_sha256[name] = sha256_file(prepared.noise.label_file)
            spec.base_config = next(iter(spec.cell_configs.values()))  # the first cell's
            if track:
                open_tracking(spec, spec.tracking_uri)
            write_spec(spec)
            return _finish(spec, _fit(spec, grid_tuner(spec, verbose=verbose)))


def _refuse_existing(spec: SweepSpec) -> None:
    """A sweep of this name that Tune already ran is refused (resume it); one whose driver died
    before Tune saved any state is cleared and started again."""
    earlier = read_spec(spec.path)
    if earlier is None:
        return
    if has_tune_state(spec.path):
        raise SweepError(
            f"A sweep named {spec.name!r} already exists at {spec.path}. Resume it "
            "(--resume) or choose another --name."
        )
    _start_unstarted(earlier, spec)


def _fresh_tuner(spec: SweepSpec, verbose: int | None) -> tune.Tuner:
    """The Tuner of a stored spec whose driver died before Tune saved any state."""
    if spec.options.is_grid:
        return grid_tuner(spec, verbose=verbose)
    return search_tuner(spec, Config.from_flat(spec.base_config), verbose=verbose)


def resume_sweep(
    path: str | os.PathLike,
    *,
    address: str | None = None,
    mlflow_uri: str | None = None,
    restart_errored: bool = False,
    verbose: int | None = None,
) -> SweepResult:
    """Continue an interrupted sweep from its experiment folder `path` (`storage_path/name`):
    unfinished trials resume from their last checkpoints, errored ones too (from their checkpoint,
    or from scratch with `restart_errored`), and the search goes on to `num_samples` trials. A
    sweep whose driver stopped before Tune saved any state (no trial ran) starts its trials."""
    path = normalize_storage(path)
    spec = read_spec(path)
    if spec is None:
        raise SweepError(
            f"No dmx sweep to resume at {path} (expected {SPEC_FILE} there). Pass the sweep's "
            "folder: STORAGE_PATH/NAME."
        )
    spec.options = replace(spec.options, storage_path=path.rsplit("/", 1)[0])
    label_file = spec.base_config.get("noise.label_file")
    if label_file and spec.label_sha256 and sha256_file(label_file) != spec.label_sha256:
        raise SweepError(f"{label_file} changed since the sweep started (sha256 mismatch).")
    if spec.tracking_uri or mlflow_uri:  # checked before Ray starts; reopened after
        tracking.check_tracking_uri(mlflow_uri or spec.tracking_uri)
    with SweepLock(path):
        started = has_tune_state(path)
        if not started:
            _start_unstarted(spec)
        with ray_session(address, spec.options):
            if spec.tracking_uri or mlflow_uri:
                open_tracking(spec, mlflow_uri)
                write_spec(spec)
            if not started:
                return _finish(spec, _fit(spec, _fresh_tuner(spec, verbose)))
            fresh = []  # errored trials restarted from scratch must not pick up old checkpoints
            if restart_errored:
                analysis = tune.ExperimentAnalysis(path)
                fresh = [t.trial_id for t in analysis.trials if t.status == "ERROR"]
            tuner = tune.Tuner.restore(
                path,
                trainable=trainable(spec, fresh),
                resume_unfinished=True,
                resume_errored=not restart_errored,
                restart_errored=restart_errored,
            )
            return _finish(spec, _fit(spec, tuner))


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
    expected = (
        len(spec.options.cells) * spec.options.seeds
        if spec.options.is_grid
        else spec.options.num_samples * spec.options.seeds
    )
    interrupted = bool(unfinished) or len(saved) < expected
    best = best_result(grid)
    best_params: dict[str, Any] = {}
    best_metrics: dict[str, float] = {}
    best_id = best_ckpt = ""
    if best is not None and best.metrics:
        searched = [s.partition("=")[0] for s in spec.options.search]
        best_params = {k: best.config[k] for k in searched if k in best.config}
        best_metrics = {
            k: float(v)
            for k, v in best.metrics.items()
            if k in (METRIC, "test_acc", "best_test_acc", "last10_test_acc", "epoch", TIME_ATTR)
        }
        best_id = str(best.metrics.get("trial_id", ""))
        best_ckpt = best.checkpoint.path if best.checkpoint is not None else ""
    model_uri = ""
    best_run_id = ""
    if spec.tracking_uri:
        parent = tracking.RunLogger(spec.tracking_uri, spec.parent_run_id)
        if best_metrics:
            best_run_id = tracking.trial_run_id(spec.tracking_uri, spec.experiment_id, best_id)
            # Tags, not metrics: the parent's values would be charted beside the trials' own.
            parent.set_tags(
                {
                    "dmx.best_trial_id": best_id,
                    "dmx.best_run_id": best_run_id,
                    **{f"dmx.best.{k}": v for k, v in best_params.items()},
                    **{
                        f"dmx.best.{k}": ui.round_metric(k, v)
                        for k, v in best_metrics.items()
                        if k in (METRIC, "test_acc", "best_test_acc", "last10_test_acc")
                    },
                }
            )
            text = description(
                spec, {"trial_id": best_id, "params": best_params, "metrics": best_metrics}
            )
            parent.set_tags({ui.DESCRIPTION_TAG: text})
            tracking.set_experiment_tags(
                spec.tracking_uri, spec.experiment_id, {ui.DESCRIPTION_TAG: text}
            )
            if best.checkpoint is not None and best_run_id and not interrupted:
                model_uri = log_best_model(spec, best.checkpoint, best_run_id, best_id)
                if model_uri:
                    parent.set_tags({"dmx.best_model_uri": model_uri})
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
        experiment_id=spec.experiment_id,
        best_run_id=best_run_id,
        optuna_storage=optuna_storage_url(spec),
        model_uri=model_uri,
        result_grid=grid,
    )


__all__ = [  # with re-exports from dmx.sweep.spec, dmx.sweep.tuner and dmx.sweep.callbacks
    "METRIC",
    "MODE",
    "MlflowStatusCallback",
    "SPEC_FILE",
    "SweepError",
    "SweepOptions",
    "SweepResult",
    "SweepSpec",
    "best_result",
    "normalize_storage",
    "resume_sweep",
    "run_grid",
    "run_sweep",
    "trial_dirname",
]
