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
import time
import uuid
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from dmx import tracking
from dmx.config import Config
from dmx.files import sha256_file
from dmx.prepare import prepare_noisy_labels
from dmx.sweep.callbacks import MlflowStatusCallback
from dmx.sweep.checks import check_storage, check_validation_split, ray_session
from dmx.sweep.lock import SweepLock
from dmx.sweep.space import Dimension, build_search_space, preset_point
from dmx.sweep.spec import (
    OPTUNA_FILE,
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
from dmx.sweep.trial import TIME_ATTR, TrialContext, train_trial
from dmx.tracking import ui

METRIC = "val_acc"  # noisy-validation accuracy: the objective. test_acc is logged, never used.
MODE = "max"
REDUCTION_FACTOR = 3  # ASHA keeps the top third at each rung


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


def trial_dirname(trial: Any) -> str:
    """Short trial folder names (Tune's default puts every param in the name)."""
    return f"trial_{trial.trial_id}"


def searched_keys(spec: SweepSpec) -> tuple[str, ...]:
    """The searched config keys of a sweep, in the order of its stored space."""
    return tuple(s.partition("=")[0] for s in spec.options.search)


def optuna_storage_url(spec: SweepSpec) -> str:
    """Where the sweep's Optuna study lives: the option when given, else an sqlite file in the
    sweep folder (a local or shared path), else "" (a URI storage such as s3:// cannot hold
    sqlite: the study is then in memory and inside Tune's searcher state only)."""
    if spec.options.optuna_storage:
        return spec.options.optuna_storage
    if "://" in spec.path:
        return ""
    return f"sqlite:///{spec.path}/{OPTUNA_FILE}"


def tune_domain(dim: Dimension) -> Any:
    """A searched dimension as a Tune search-space domain (OptunaSearch turns it back into the
    same Optuna distribution). Given as the Tuner's `param_space`, which also makes Ray's live
    table show the searched params as columns."""
    if dim.choices:
        return tune.choice(list(dim.choices))
    if dim.integer:  # Tune's integer upper bound is exclusive, Optuna's inclusive
        make = tune.lograndint if dim.log else tune.randint
        return make(int(dim.low), int(dim.high) + 1)
    return (tune.loguniform if dim.log else tune.uniform)(float(dim.low), float(dim.high))


def describe_scheduler(base: Config, grace_period: int) -> str:
    """What stops trials early, in words (the parent run's `sweep.scheduler` param)."""
    last_rung = base.run.epochs - base.dividemix.warmup_epochs - 1
    if grace_period > last_rung:
        return f"none (FIFO): the grace period {grace_period} reaches the last epoch"
    return (
        f"ASHA on {METRIC} ({MODE}), clock {TIME_ATTR} (DivideMix epochs after warmup), "
        f"grace period {grace_period}, reduction factor {REDUCTION_FACTOR}, max_t {last_rung}"
    )


def sweep_definition(spec: SweepSpec) -> dict[str, Any]:
    """The parent run's params: what the sweep IS (not what one trial ran)."""
    opts, base = spec.options, Config.from_flat(spec.base_config)
    out: dict[str, Any] = {
        "sweep.preset": base.preset,
        "sweep.objective": f"{METRIC} ({MODE})",
        "sweep.searcher": f"Optuna TPE (seed {opts.seed}), the preset's point first",
        "sweep.scheduler": describe_scheduler(base, opts.grace_period),
        "sweep.num_samples": opts.num_samples,
        "sweep.max_concurrent": opts.max_concurrent,
        "sweep.resources": f"{opts.cpus_per_trial:g} CPU, {opts.gpus_per_trial:g} GPU per trial",
        "sweep.max_failures": opts.max_failures,
        "sweep.epochs": base.run.epochs,
        "sweep.model": base.model.name,
        "sweep.dataset": base.data.dataset,
        "sweep.noise": f"{base.noise.mode} {base.noise.rate:g}",
    }
    for text in opts.search:
        key, _, value = text.partition("=")
        out[f"sweep.search.{key}"] = value
    return out


def _trainable(spec: SweepSpec, fresh_trials: Iterable[str] = ()) -> Any:
    """`train_trial` bound to the sweep's base config and this driver session's TrialContext,
    with the trial's resources."""
    opts = spec.options
    context = TrialContext(
        name=spec.name,
        tracking_uri=spec.tracking_uri,
        experiment_id=spec.experiment_id,
        parent_run_id=spec.parent_run_id,
        label_sha256=spec.label_sha256,
        git_commit=spec.git_commit,
        git_dirty=spec.git_dirty,
        cpus_per_trial=opts.cpus_per_trial,
        fresh_trials=tuple(sorted(fresh_trials)),
        session=uuid.uuid4().hex,  # this driver session (a NaN note of another one is stale)
        searched=searched_keys(spec),
    )
    fn = tune.with_parameters(train_trial, base_config=spec.base_config, context=context)
    return tune.with_resources(fn, {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})


def _new_tuner(spec: SweepSpec, base: Config, *, verbose: int | None) -> tune.Tuner:
    """A Tuner for a sweep that has not run yet: Optuna's seeded TPE over the spec's space (the
    base config's own point first) and ASHA on val_acc with `dm_epoch` as its clock."""
    opts = spec.options
    space = build_search_space(base, opts.search, defaults=opts.default_search)
    storage = optuna_storage_url(spec)
    searcher = OptunaSearch(
        metric=METRIC,
        mode=MODE,
        points_to_evaluate=[p] if (p := preset_point(base, space)) else None,
        sampler=optuna.samplers.TPESampler(seed=opts.seed),
        study_name=spec.name,
        storage=optuna.storages.RDBStorage(storage) if storage else None,
    )
    # ASHA's rungs all lie BEFORE the last epoch: pruning at the last epoch saves nothing, and a
    # trial that trains to the end then finishes by itself (logging its final per-sample file).
    # A grace period reaching the last epoch leaves nothing to prune: then every trial runs to the
    # end (FIFO).
    last_rung = base.run.epochs - base.dividemix.warmup_epochs - 1
    scheduler = None
    if opts.grace_period <= last_rung:
        scheduler = ASHAScheduler(
            time_attr=TIME_ATTR,
            metric=METRIC,
            mode=MODE,
            max_t=last_rung,
            grace_period=opts.grace_period,
            reduction_factor=REDUCTION_FACTOR,
            stop_last_trials=False,  # past max_t a trial runs on to run.epochs
        )
    callback = MlflowStatusCallback(
        spec.tracking_uri,
        spec.experiment_id,
        base.run.epochs,
        opts.cpus_per_trial,
        opts.gpus_per_trial,
    )
    return tune.Tuner(
        _trainable(spec),
        param_space={key: tune_domain(dim) for key, dim in space.items()},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,  # both carry metric and mode
            num_samples=opts.num_samples,
            max_concurrent_trials=opts.max_concurrent,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=spec.name,
            storage_path=opts.storage_path,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=base.run.keep_checkpoints),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
            callbacks=[callback] if spec.tracking_uri else None,
            verbose=verbose,
        ),
    )


# --------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------
def _description(spec: SweepSpec, best: dict[str, Any] | None = None) -> str:
    base = Config.from_flat(spec.base_config)
    return ui.sweep_description(
        name=spec.name,
        preset=base.preset,
        searched={k: v for k, _, v in (s.partition("=") for s in spec.options.search)},
        scheduler=describe_scheduler(base, spec.options.grace_period),
        num_samples=spec.options.num_samples,
        best=best,
    )


def _open_tracking(spec: SweepSpec, mlflow_uri: str | None) -> None:
    """The sweep's experiment and parent run: the sweep's definition as params, its base config
    and noisy labels as artifacts (ONE copy: trials reference the file as a dataset input), a
    description, and the experiment's saved "dmx sweep" view of the runs page."""
    spec.tracking_uri = tracking.check_tracking_uri(mlflow_uri or spec.tracking_uri or None)
    description = _description(spec)
    parent = tracking.start_sweep_run(
        spec.tracking_uri,
        spec.experiment or spec.name,
        sweep_name=spec.name,
        definition=sweep_definition(spec),
        base_config=spec.base_config,
        description=description,
        tags={
            **tracking.provenance_tags(
                preset=spec.base_config.get("preset", ""),
                commit=spec.git_commit,
                dirty=spec.git_dirty,
            ),
            "dmx.search": " ".join(spec.options.search),
            "dmx.ray_results": spec.path,
            "dmx.optuna_storage": optuna_storage_url(spec),
        },
    )
    label_file = spec.base_config.get("noise.label_file")
    if label_file:
        parent.log_artifact(label_file)  # under its own name, once per sweep
    spec.experiment = spec.experiment or spec.name
    spec.experiment_id = parent.experiment_id
    spec.parent_run_id = parent.run_id
    _write_experiment_view(spec, description)


def _write_experiment_view(spec: SweepSpec, description: str) -> None:
    """The experiment's description and its saved view (`ui.view_state`, named "dmx sweep")."""
    state = ui.view_state(
        searched=searched_keys(spec),
        metrics=ui.CHART_METRICS,
        parent_run_id=spec.parent_run_id,
    )
    created = time.mktime(time.strptime(spec.created, "%Y-%m-%dT%H:%M:%S"))
    key, value = ui.saved_view("dmx sweep", state, created_ms=int(created * 1000))
    tracking.set_experiment_tags(
        spec.tracking_uri,
        spec.experiment_id,
        {ui.DESCRIPTION_TAG: description, key: value, "dmx.objective": METRIC},
    )


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
        earlier = read_spec(spec.path)
        if earlier is not None:
            if has_tune_state(spec.path):
                raise SweepError(
                    f"A sweep named {spec.name!r} already exists at {spec.path}. Resume it "
                    "(--resume) or choose another --name."
                )
            _start_unstarted(earlier, spec)
        # Then the Ray cluster, before any file or MLflow run is created (nothing left half-made).
        with ray_session(address, spec.options):
            # Noisy labels once, on the driver; trials get the absolute path, never download,
            # and check the sha256.
            prepared = prepare_noisy_labels(base).with_overrides({"data.download": False})
            spec.base_config = prepared.to_flat()
            if prepared.noise.label_file:
                spec.label_sha256 = sha256_file(prepared.noise.label_file)
            if track:
                _open_tracking(spec, spec.tracking_uri)
            write_spec(spec)
            tuner = _new_tuner(spec, prepared, verbose=verbose)
            return _finish(spec, _fit(spec, tuner))


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
                _open_tracking(spec, mlflow_uri)
                write_spec(spec)
            if not started:
                tuner = _new_tuner(spec, Config.from_flat(spec.base_config), verbose=verbose)
                return _finish(spec, _fit(spec, tuner))
            fresh = []  # errored trials restarted from scratch must not pick up old checkpoints
            if restart_errored:
                analysis = tune.ExperimentAnalysis(path)
                fresh = [t.trial_id for t in analysis.trials if t.status == "ERROR"]
            tuner = tune.Tuner.restore(
                path,
                trainable=_trainable(spec, fresh),
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


def _log_best_model(spec: SweepSpec, checkpoint: Any, run_id: str, trial_id: str) -> str:
    """Log the best trial's ensemble (from its checkpoint) as an MLflow model of its run, and
    register it when the sweep names a model; returns the model URI ("" with a warning when it
    cannot be built, e.g. the data folder is not reachable from the driver)."""
    from dmx.ensemble import ensemble_from_checkpoint, example_inputs
    from dmx.tracking.models import log_ensemble_model

    try:
        with checkpoint.as_directory() as folder:
            model = ensemble_from_checkpoint(folder)
        example = example_inputs(model, Config.from_flat(spec.base_config)).numpy()
        logged = log_ensemble_model(
            spec.tracking_uri,
            run_id,
            model,
            example,
            registered_model_name=spec.options.register_model or None,
            metadata={
                "class_names": list(model.class_names),
                "dmx.trial_id": trial_id,
                "dmx.checkpoint": checkpoint.path,
                "input": f"uint8 images (B, {model.channels}, {example.shape[2]}, "
                f"{example.shape[3]}), already resized and cropped as dmx predict does",
                "output": "(B, K) probabilities: softmax of the sum of the two nets' logits",
            },
        )
    except Exception as exc:  # noqa: BLE001 - the sweep's results stand without the model
        warnings.warn(
            f"The best trial's model could not be logged to MLflow ({type(exc).__name__}: "
            f"{exc}); its checkpoint {checkpoint.path} holds it.",
            stacklevel=2,
        )
        return ""
    return logged.model_uri


def _finish(spec: SweepSpec, grid: Any) -> SweepResult:
    # The saved experiment state tells an interrupted sweep (Ctrl+C) from a finished one: Tune
    # marks running trials TERMINATED in memory when it stops, but saves them as unfinished.
    saved = tune.ExperimentAnalysis(spec.path).trials
    unfinished = [t.trial_id for t in saved if t.status not in ("TERMINATED", "ERROR")]
    interrupted = bool(unfinished) or len(saved) < spec.options.num_samples
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
            description = _description(
                spec, {"trial_id": best_id, "params": best_params, "metrics": best_metrics}
            )
            parent.set_tags({ui.DESCRIPTION_TAG: description})
            tracking.set_experiment_tags(
                spec.tracking_uri, spec.experiment_id, {ui.DESCRIPTION_TAG: description}
            )
            if best.checkpoint is not None and best_run_id and not interrupted:
                model_uri = _log_best_model(spec, best.checkpoint, best_run_id, best_id)
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


__all__ = [  # with re-exports from dmx.sweep.spec and dmx.sweep.callbacks
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
    "run_sweep",
    "trial_dirname",
]
