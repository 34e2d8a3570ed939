"""A sweep's record in MLflow, written by the driver: the experiment, the parent run that holds
the sweep's definition (not any trial's params) and a description, the experiment's saved view of
the runs page, and at the end the best trial (tags) and its ensemble as an MLflow model."""

from __future__ import annotations

import time
import warnings
from typing import Any

from dmx import tracking
from dmx.config import Config
from dmx.sweep.spec import SweepSpec
from dmx.sweep.tuner import METRIC, MODE, describe_scheduler, optuna_storage_url, searched_keys
from dmx.tracking import ui


def sweep_definition(spec: SweepSpec) -> dict[str, Any]:
    """The parent run's params: what the sweep IS (not what one trial ran)."""
    opts, base = spec.options, Config.from_flat(spec.base_config)
    if opts.is_grid:
        return {
            "sweep.kind": "grid (every cell x seed once; no search, no early stopping)",
            "sweep.cells": ",".join(opts.cells),
            "sweep.seeds": opts.seeds,
            "sweep.max_concurrent": opts.max_concurrent,
            "sweep.resources": _resources(opts),
            "sweep.max_failures": opts.max_failures,
        }
    out: dict[str, Any] = {
        "sweep.seeds": opts.seeds,
        "sweep.preset": base.preset,
        "sweep.objective": f"{METRIC} ({MODE})",
        "sweep.searcher": f"Optuna TPE (seed {opts.seed}), the preset's point first",
        "sweep.scheduler": describe_scheduler(base, opts.grace_period),
        "sweep.num_samples": opts.num_samples,
        "sweep.max_concurrent": opts.max_concurrent,
        "sweep.resources": _resources(opts),
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


def _resources(opts: Any) -> str:
    return f"{opts.cpus_per_trial:g} CPU, {opts.gpus_per_trial:g} GPU per trial"


def _grid_tags(spec: SweepSpec) -> dict[str, str]:
    """A grid's parent run: which cells and how many seeds (the paper table reads them)."""
    if not spec.options.is_grid:
        return {}
    return {
        tracking.GRID_TAG: "true",
        tracking.GRID_CELLS_TAG: ",".join(spec.options.cells),
        tracking.GRID_SEEDS_TAG: str(spec.options.seeds),
    }


def description(spec: SweepSpec, best: dict[str, Any] | None = None) -> str:
    base = Config.from_flat(spec.base_config)
    return ui.sweep_description(
        name=spec.name,
        preset=base.preset,
        searched={k: v for k, _, v in (s.partition("=") for s in spec.options.search)},
        scheduler=describe_scheduler(base, spec.options.grace_period),
        num_samples=spec.options.num_samples,
        best=best,
    )


def open_tracking(spec: SweepSpec, mlflow_uri: str | None) -> None:
    """The sweep's experiment and parent run: the sweep's definition as params, its base config
    and noisy labels as artifacts (ONE copy: trials reference the file as a dataset input), a
    description, and the experiment's saved "dmx sweep" view of the runs page."""
    spec.tracking_uri = tracking.check_tracking_uri(mlflow_uri or spec.tracking_uri or None)
    text = description(spec)
    parent = tracking.start_sweep_run(
        spec.tracking_uri,
        spec.experiment or spec.name,
        sweep_name=spec.name,
        definition=sweep_definition(spec),
        base_config=spec.base_config,
        description=text,
        tags={
            **tracking.provenance_tags(
                preset=spec.base_config.get("preset", ""),
                commit=spec.git_commit,
                dirty=spec.git_dirty,
            ),
            "dmx.search": " ".join(spec.options.search),
            "dmx.ray_results": spec.path,
            "dmx.optuna_storage": optuna_storage_url(spec),
            **_grid_tags(spec),
        },
    )
    label_file = spec.base_config.get("noise.label_file")
    if label_file:
        parent.log_artifact(label_file)  # under its own name, once per sweep
    spec.experiment = spec.experiment or spec.name
    spec.experiment_id = parent.experiment_id
    spec.parent_run_id = parent.run_id
    _write_experiment_view(spec, text)


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


def log_best_model(spec: SweepSpec, checkpoint: Any, run_id: str, trial_id: str) -> str:
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


__all__ = ["description", "log_best_model", "open_tracking", "sweep_definition"]
