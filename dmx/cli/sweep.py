"""The command line shared by every sweep script (`sweeps/*.py`) and `dmx sweep`.

A sweep script is a preset + a search space + these flags:

    python sweeps/cifar_asym.py --num-samples 20 --gpus-per-trial 0.5 --max-concurrent 8
    python sweeps/cifar_asym.py --smoke-test --data-dir /tmp/cifar10       # minutes on 2 CPUs
    python sweeps/cifar_asym.py --resume --name cifar10-asym-0.4-20250101-120000

Ray, Optuna and MLflow are imported only when a sweep runs (`--help` stays fast).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from dmx.cli.common import (
    add_config_flags,
    add_data_flags,
    add_mlflow_flags,
    data_overrides,
    flag_overrides,
    parse_sets,
)
from dmx.config import Config, ConfigError
from dmx.presets import get_preset

# --smoke-test: the whole pipeline (Ray, Optuna, ASHA, checkpoints, MLflow) in a few minutes on
# 2 CPU cores. Not a result: a check that a sweep runs end to end.
SMOKE_OVERRIDES = {
    "model.name": "small_cnn",  # PreAct ResNet-18 takes minutes per epoch on a CPU
    "data.subset": 2000,
    "data.test_subset": 1000,
    "run.epochs": 3,
    "dividemix.warmup_epochs": 1,  # 2 of the 3 epochs are DivideMix epochs (ASHA rung at 1)
    "run.device": "cpu",
}
SMOKE_SWEEP = {"num_samples": 3, "max_concurrent": 2, "cpus_per_trial": 1, "grace_period": 1}
# The sweep's objective: val_acc on this fraction of the noisy training labels, held out. Set here
# (dmx train's default is 0, as the reference); `--set data.val_fraction=...` wins.
SWEEP_VAL_FRACTION = 0.05


def add_arguments(p: argparse.ArgumentParser, *, preset: str | None = None) -> None:
    """The sweep flags (`preset`: the script's preset; without one, --preset is required for a
    new sweep; `--resume` takes everything from the sweep's folder)."""
    p.add_argument(
        "--preset",
        default=preset,
        help=f"paper setting to start from (default: {preset})"
        if preset
        else "paper setting to start from (see `dmx presets`); required unless --resume",
    )
    g = p.add_argument_group("trials")
    g.add_argument("--num-samples", type=int, default=None, help="trials to run (default 20)")
    add_config_flags(g)
    add_data_flags(g)
    g.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seeds the TPE sampler and every trial's run.seed (default: sampler 0, "
        "the preset's run.seed)",
    )
    s = p.add_argument_group("search")
    s.add_argument(
        "--search",
        action="append",
        default=[],
        metavar="KEY=LOW:HIGH[:log]",
        help="search another config key (or narrow a default one), e.g. "
        "dividemix.alpha=0.5:8:log or optim.batch_size=32,64,128 (repeatable). "
        "Defaults: dividemix.lambda_u=0:150, dividemix.T=0.2:1.0, "
        "dividemix.p_threshold=0.3:0.9",
    )
    s.add_argument(
        "--no-default-search", action="store_true", help="search only the --search dimensions"
    )
    s.add_argument(
        "--grace-period",
        type=int,
        help="ASHA: DivideMix epochs (after warmup) before a trial can be stopped "
        "(default 16, the lambda_u ramp-up)",
    )
    r = p.add_argument_group("cluster and storage")
    r.add_argument("--address", help="connect to a running Ray cluster, e.g. auto")
    r.add_argument(
        "--storage-path",
        default="ray_results",
        help="results folder, shared file system path or URI (s3://, gs://); default ./ray_results",
    )
    r.add_argument(
        "--name",
        help="sweep name = folder under --storage-path = MLflow experiment "
        "(default PRESET-TIMESTAMP)",
    )
    r.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted sweep --name (unfinished and errored trials "
        "resume from their checkpoints); every other setting comes from the sweep's folder",
    )
    r.add_argument("--cpus-per-trial", type=float, default=None, help="default 1")
    r.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="default 0; 0.5 packs two trials on one GPU",
    )
    r.add_argument(
        "--max-concurrent", type=int, default=None, help="trials running at once (default 1)"
    )
    r.add_argument(
        "--max-failures",
        type=int,
        default=3,
        help="retries of a failed trial from its last checkpoint",
    )
    add_mlflow_flags(r)
    r.add_argument(
        "--register-model",
        metavar="NAME",
        default="",
        help="register the best trial's ensemble (always logged as an MLflow model) under NAME "
        "in the MLflow Model Registry",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="train every configuration with N seeds (run.seed, +1, ...); the searcher sees their "
        "mean objective (Ray Tune's Repeater), --num-samples counts configurations, ASHA is off",
    )
    p.add_argument(
        "--no-share-warmup",
        action="store_true",
        help="every trial trains its own warmup (default: trials whose warmup would be "
        "identical share one, trained by the first of them)",
    )
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="small CNN, 2000 images, 3 epochs, 3 trials: the pipeline in minutes",
    )
    p.add_argument("--quiet", action="store_true", help="less Ray output")


def base_config(args: argparse.Namespace) -> Config:
    """The config every trial starts from: preset < sweep defaults < smoke test < flags < --set.
    The sweep default is the objective's validation split (`data.val_fraction` 0.05)."""
    cfg = get_preset(args.preset)
    overrides: dict[str, Any] = {"data.val_fraction": SWEEP_VAL_FRACTION}
    if args.smoke_test:
        overrides.update(SMOKE_OVERRIDES)
    overrides.update(data_overrides(args))  # the rule `dmx train` follows too
    overrides.update(flag_overrides(args))
    overrides.update(parse_sets(args.set))
    return cfg.with_overrides(overrides)


def sweep_options(args: argparse.Namespace, name: str) -> Any:
    """The `dmx.sweep.SweepOptions` of parsed `args` (flag > smoke test > default)."""
    from dmx.sweep import SweepOptions

    smoke = SMOKE_SWEEP if args.smoke_test else {}
    flags = ("num_samples", "max_concurrent", "cpus_per_trial", "gpus_per_trial", "grace_period")
    given = {f: getattr(args, f) if getattr(args, f) is not None else smoke.get(f) for f in flags}
    return SweepOptions(
        name=name,
        storage_path=args.storage_path,
        search=tuple(args.search),
        default_search=not args.no_default_search,
        max_failures=args.max_failures,
        seed=args.seed if args.seed is not None else 0,
        register_model=args.register_model,
        seeds=args.seeds or 1,
        share_warmup=not args.no_share_warmup,
        **{flag: value for flag, value in given.items() if value is not None},
    )


def print_result(result: Any, *, out: TextIO | None = None) -> None:
    """Where everything is, and the best trial (`result`: a `dmx.sweep.SweepResult`)."""
    out = out or sys.stdout
    print(
        "\n=== dmx sweep finished"
        + (" (INTERRUPTED: resume with --resume)" if result.interrupted else "")
        + " ===",
        file=out,
    )
    print(f"results (Ray Tune):  {result.path}", file=out)
    if result.tracking_uri:
        from dmx.tracking import ui

        print(
            f"MLflow store:        {result.tracking_uri}  (experiment {result.experiment!r})",
            file=out,
        )
        base = result.tracking_uri
        if not base.startswith(("http://", "https://")):
            print(
                f"open it with:        mlflow ui --backend-store-uri {result.tracking_uri}",
                file=out,
            )
            base = "http://127.0.0.1:5000"
        if result.experiment_id:
            # The link opens the "Model training" view with dmx's saved view of the runs page.
            print(f"compare trials at:   {ui.experiment_url(base, result.experiment_id)}", file=out)
    if result.optuna_storage:
        print(
            f"Optuna study:        {result.optuna_storage}  (study {result.experiment or ''!r}; "
            f"optuna-dashboard {result.optuna_storage})",
            file=out,
        )
    print(f"trials: {result.num_trials}, errored: {result.num_errors}", file=out)
    if result.best_params:
        print(f"best trial {result.best_trial_id}:", file=out)
        print("  params:  " + json.dumps(result.best_params, sort_keys=True), file=out)
        print(
            "  metrics: "
            + json.dumps({k: round(v, 3) for k, v in result.best_metrics.items()}, sort_keys=True),
            file=out,
        )
        print(f"  checkpoint: {result.best_checkpoint}", file=out)
        if result.best_run_id:
            print(f"  MLflow run: {result.best_run_id}", file=out)
        if result.model_uri:
            print(f"  model:      {result.model_uri}", file=out)
    elif result.num_errors:
        print(
            f"no trial reported val_acc ({result.num_errors} errored: see the errors above)",
            file=out,
        )
    elif result.interrupted:
        print("no trial reported val_acc before the sweep was interrupted", file=out)
    else:
        print("no trial reported val_acc", file=out)


def print_start(
    name: str,
    storage: str,
    mlflow_uri: str | bool | None,
    *,
    resume: bool = False,
    out: TextIO | None = None,
) -> None:
    """The first lines a sweep prints: where everything of this sweep goes (docs/sweeps.md,
    "Files"). `mlflow_uri` False: the sweep is not tracked, no store is printed."""
    from dmx.tracking import resolve_tracking_uri

    out = out or sys.stdout  # beside the summary; stderr carries only errors and Ray's logs
    what = "resuming" if resume else "starting"
    print(f"dmx sweep: {what} {name!r}", file=out)
    print(f"  results, checkpoints, Optuna study: {storage}/{name}", file=out)
    if mlflow_uri is not False:
        uri = resolve_tracking_uri(mlflow_uri) if not resume or mlflow_uri else "(as stored)"
        print(f"  MLflow store: {uri}  (experiment {name!r})", file=out)


def run(args: argparse.Namespace) -> int:
    """Run or resume the sweep described by parsed `args`; prints the summary."""
    from dmx.sweep import SearchSpaceError, SweepError, normalize_storage, resume_sweep, run_sweep
    from dmx.tracking import TrackingError

    start = time.perf_counter()
    storage = normalize_storage(args.storage_path)
    verbose = 1 if args.quiet else None
    try:
        if args.resume:
            if not args.name:
                raise SweepError(
                    "--resume needs --name: the sweep's folder under --storage-path "
                    f"({storage}) holds one folder per sweep."
                )
            print_start(args.name, storage, args.mlflow_uri, resume=True)
            result = resume_sweep(
                f"{storage}/{args.name}",
                address=args.address,
                mlflow_uri=args.mlflow_uri,
                verbose=verbose,
            )
        else:
            if not args.preset:
                raise SweepError(
                    "a new sweep needs --preset (see `dmx presets`); --resume --name NAME "
                    "continues an existing one."
                )
            cfg = base_config(args)
            name = (
                args.name
                or f"{args.preset}{'-smoke' if args.smoke_test else ''}-"
                + time.strftime("%Y%m%d-%H%M%S")
            )
            print_start(name, storage, False if args.no_mlflow else args.mlflow_uri)
            result = run_sweep(
                cfg,
                sweep_options(args, name),
                mlflow_uri=args.mlflow_uri,
                track=not args.no_mlflow,
                address=args.address,
                verbose=verbose,
            )
    except (ConfigError, SearchSpaceError, SweepError, TrackingError, ValueError, OSError) as exc:
        # Bad input on the driver (config, search space, dataset files, storage): one message
        # with its fix, no traceback. DMX_DEBUG=1 shows the traceback.
        if os.environ.get("DMX_DEBUG"):
            raise
        print(f"dmx sweep: error: {exc}", file=sys.stderr)
        return 2
    print_result(result)
    print(f"wall time: {time.perf_counter() - start:.0f} s")
    return 0 if result.best_params and not result.interrupted else 1


def main(
    preset: str | None = None,
    argv: Sequence[str] | None = None,
    *,
    description: str | None = None,
    search: Sequence[str] = (),
) -> int:
    """Entry point of a sweep script: `raise SystemExit(main("cifar10-asym-0.4"))`. `search`: the
    script's own search space, in place of the default (lambda_u, T, p_threshold) dimensions;
    `--search` adds to it or narrows it."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser, preset=preset)
    args = parser.parse_args(argv)
    if search:
        args.search = [*search, *args.search]
        args.no_default_search = True
    return run(args)


__all__ = [
    "SMOKE_OVERRIDES",
    "SMOKE_SWEEP",
    "SWEEP_VAL_FRACTION",
    "add_arguments",
    "base_config",
    "main",
    "print_result",
    "print_start",
    "run",
    "sweep_options",
]
