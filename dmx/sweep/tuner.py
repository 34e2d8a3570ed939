"""The Tuners of a sweep: Optuna's seeded TPE over the search space with ASHA (a search), or
every cell x seed once (a grid), each trial `dmx.sweep.trial.train_trial` with its resources."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import optuna
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import Repeater
from ray.tune.search.optuna import OptunaSearch

from dmx import tracking
from dmx.config import Config
from dmx.sweep.callbacks import MlflowStatusCallback
from dmx.sweep.space import Dimension, build_search_space, preset_point
from dmx.sweep.spec import OPTUNA_FILE, SweepError, SweepSpec
from dmx.sweep.trial import TIME_ATTR, TrialContext, train_trial

METRIC = "val_acc"  # noisy-validation accuracy: the objective. test_acc is logged, never used.
MODE = "max"
REDUCTION_FACTOR = 3  # ASHA keeps the top third at each rung


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


def trainable(spec: SweepSpec, fresh_trials: Iterable[str] = ()) -> Any:
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
        cell_label_sha256=dict(spec.cell_label_sha256),
        seeds=opts.seeds,
        share_warmup=opts.share_warmup,
    )
    fn = tune.with_parameters(
        train_trial, base_config=spec.base_config, context=context, cells=spec.cell_configs
    )
    return tune.with_resources(fn, {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial})


def search_tuner(spec: SweepSpec, base: Config, *, verbose: int | None) -> tune.Tuner:
    """A Tuner for a sweep that has not run yet: Optuna's seeded TPE over the spec's space (the
    base config's own point first) and ASHA on val_acc with `dm_epoch` as its clock."""
    opts = spec.options
    space = build_search_space(base, opts.search, defaults=opts.default_search)
    storage = optuna_storage_url(spec)
    searcher: Any = OptunaSearch(
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
    if opts.seeds > 1:  # every configuration N times; Optuna sees their mean objective
        searcher = Repeater(searcher, repeat=opts.seeds, set_index=True)
    last_rung = base.run.epochs - base.dividemix.warmup_epochs - 1
    scheduler = None
    if opts.grace_period <= last_rung and opts.seeds == 1:
        scheduler = ASHAScheduler(
            time_attr=TIME_ATTR,
            metric=METRIC,
            mode=MODE,
            max_t=last_rung,
            grace_period=opts.grace_period,
            reduction_factor=REDUCTION_FACTOR,
            stop_last_trials=False,  # past max_t a trial runs on to run.epochs
        )
    return tune.Tuner(
        trainable(spec),
        param_space={key: tune_domain(dim) for key, dim in space.items()},
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,  # both carry metric and mode
            num_samples=opts.num_samples * opts.seeds,
            max_concurrent_trials=opts.max_concurrent,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=_run_config(spec, base, verbose),
    )


def grid_tuner(spec: SweepSpec, *, verbose: int | None) -> tune.Tuner:
    """A Tuner for a grid (`SweepOptions.cells`): every cell with every seed, once, no search
    and no early stopping; the trial picks its cell's prepared config by the `dmx.cell` param."""
    opts = spec.options
    cells = {name: Config.from_flat(flat) for name, flat in spec.cell_configs.items()}
    first = next(iter(cells.values()))
    seeds = sorted({c.run.seed for c in cells.values()})
    if len(seeds) != 1:
        raise SweepError(f"the cells' run.seed differ ({seeds}): give them one base seed.")
    return tune.Tuner(
        trainable(spec),
        param_space={
            tracking.CELL_TAG: tune.grid_search(list(opts.cells)),
            "run.seed": tune.grid_search([seeds[0] + k for k in range(opts.seeds)]),
        },
        tune_config=tune.TuneConfig(
            num_samples=1,
            max_concurrent_trials=opts.max_concurrent,
            trial_dirname_creator=trial_dirname,
        ),
        run_config=_run_config(
            spec, first, verbose, epochs=max(c.run.epochs for c in cells.values())
        ),
    )


def _run_config(spec: SweepSpec, base: Config, verbose: int | None, *, epochs: int = 0) -> Any:
    """Where Tune keeps the sweep, how many checkpoints, the retries, the MLflow callback."""
    opts = spec.options
    callback = MlflowStatusCallback(
        spec.tracking_uri,
        spec.experiment_id,
        epochs or base.run.epochs,
        opts.cpus_per_trial,
        opts.gpus_per_trial,
    )
    return tune.RunConfig(
        name=spec.name,
        storage_path=opts.storage_path,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=base.run.keep_checkpoints),
        failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        callbacks=[callback] if spec.tracking_uri else None,
        verbose=verbose,
    )


__all__ = [
    "METRIC",
    "MODE",
    "REDUCTION_FACTOR",
    "describe_scheduler",
    "grid_tuner",
    "optuna_storage_url",
    "search_tuner",
    "searched_keys",
    "trainable",
    "trial_dirname",
    "tune_domain",
]
