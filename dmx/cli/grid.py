"""`sweeps/paper.py`: one of the paper's result tables as a grid, every cell x seed once.

    python sweeps/paper.py --table cifar --seeds 3 --data-dir /data --gpus-per-trial 1
    python sweeps/paper.py --table cifar --cells cifar10-sym-0.5,cifar10-asym-0.4 --seeds 2
    python sweeps/paper.py --table cifar --set dividemix.co_guess_eval_mode=true   # your variant
    python sweeps/paper.py --table cifar --smoke-test --data-dir /data            # minutes, CPU
    python sweeps/paper.py --resume --name NAME
    python analysis/paper_table.py --experiment NAME      # the table beside the paper's numbers

Every cell is its preset as published (`dmx presets`); `--set` applies one change to every cell
(the way to test a variant against the paper). One Ray Tune experiment and one MLflow experiment;
each trial is checkpointed every epoch, and `--resume` continues an interrupted grid without
running finished trials again.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from dmx.cli.common import add_mlflow_flags, data_overrides, parse_sets
from dmx.config import ConfigError
from dmx.paper import PAPER_TABLES
from dmx.presets import get_preset

# --smoke-test: the whole grid machinery in minutes on a CPU (not a result).
SMOKE_OVERRIDES = {
    "model.name": "small_cnn",
    "data.subset": 1000,
    "data.test_subset": 500,
    "run.epochs": 3,
    "dividemix.warmup_epochs": 1,
    "run.device": "cpu",
}
SMOKE_REAL_WORLD = {"data.image_size": 32, "model.pretrained": False, "dividemix.num_batches": 4}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--table",
        choices=sorted(PAPER_TABLES),
        help="the paper's table to run: cifar (Tables 1-2), clothing1m (3), webvision (4)",
    )
    p.add_argument(
        "--cells",
        help="comma-separated presets of the table to run (default: all of them)",
    )
    p.add_argument("--seeds", type=int, default=1, help="seeds per cell (run.seed, +1, ...)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="apply one config change to every cell, e.g. --set dividemix.T=0.4 (repeatable)",
    )
    p.add_argument(
        "--data-dir", help="dataset folder of every cell (default ./data); on a cluster: shared"
    )
    p.add_argument("--download", action="store_true", help="download datasets when missing")
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="small CNN, 1000 images, 3 epochs: the grid end to end in minutes on a CPU",
    )
    p.add_argument(
        "--storage-path", default="ray_results", help="where Ray Tune keeps the grid (shared)"
    )
    p.add_argument("--name", help="the grid's name (default paper-TABLE-TIMESTAMP)")
    p.add_argument("--resume", action="store_true", help="continue the interrupted grid --name")
    p.add_argument("--address", help="an existing Ray cluster (auto): else a local Ray")
    p.add_argument("--cpus-per-trial", type=float, default=1, help="default 1")
    p.add_argument("--gpus-per-trial", type=float, default=0, help="default 0; 0.5 shares a GPU")
    p.add_argument("--max-concurrent", type=int, default=1, help="trials at once (default 1)")
    p.add_argument("--max-failures", type=int, default=3, help="retries of a failed trial")
    add_mlflow_flags(p)
    p.add_argument("--quiet", action="store_true", help="less Ray output")


def grid_cells(args: argparse.Namespace) -> dict:
    """name -> Config of every cell: its preset < smoke test < --data-dir < --set."""
    table = PAPER_TABLES[args.table]
    names = [c.strip() for c in args.cells.split(",") if c.strip()] if args.cells else list(table)
    unknown = [n for n in names if n not in table]
    if unknown or not names:
        raise ConfigError(
            f"--cells {args.cells!r}: {unknown or 'nothing'} not in the {args.table} table; "
            f"choose from {', '.join(table)}."
        )
    cells = {}
    for name in names:
        cfg = get_preset(name)
        overrides = dict(SMOKE_OVERRIDES) if args.smoke_test else {}
        if args.smoke_test and cfg.data.dataset in ("clothing1m", "webvision"):
            overrides.update(SMOKE_REAL_WORLD)
        overrides.update(data_overrides(args))
        overrides.update(parse_sets(args.set))
        cells[name] = cfg.with_overrides(overrides)
    return cells


def run(args: argparse.Namespace) -> int:
    from dmx.cli.sweep import print_start
    from dmx.sweep import SweepError, SweepOptions, normalize_storage, resume_sweep, run_grid
    from dmx.tracking import TrackingError

    start = time.perf_counter()
    storage = normalize_storage(args.storage_path)
    verbose = 1 if args.quiet else None
    try:
        if args.resume:
            if not args.name:
                raise SweepError("--resume needs --name: the grid's folder under --storage-path.")
            print_start(args.name, storage, args.mlflow_uri, resume=True)
            result = resume_sweep(
                f"{storage}/{args.name}", address=args.address, mlflow_uri=args.mlflow_uri,
                verbose=verbose,
            )  # fmt: skip
        else:
            if not args.table:
                raise SweepError("a new grid needs --table (cifar, clothing1m or webvision).")
            cells = grid_cells(args)
            name = args.name or (
                f"paper-{args.table}{'-smoke' if args.smoke_test else ''}-"
                + time.strftime("%Y%m%d-%H%M%S")
            )
            options = SweepOptions(
                name=name,
                storage_path=storage,
                cells=tuple(cells),
                seeds=args.seeds,
                max_concurrent=args.max_concurrent,
                cpus_per_trial=args.cpus_per_trial,
                gpus_per_trial=args.gpus_per_trial,
                max_failures=args.max_failures,
            )
            print_start(name, storage, False if args.no_mlflow else args.mlflow_uri)
            result = run_grid(
                cells, options, mlflow_uri=args.mlflow_uri, track=not args.no_mlflow,
                address=args.address, verbose=verbose,
            )  # fmt: skip
    except (ConfigError, SweepError, TrackingError, ValueError, OSError) as exc:
        if os.environ.get("DMX_DEBUG"):
            raise
        print(f"dmx paper grid: error: {exc}", file=sys.stderr)
        return 2
    done = result.num_trials - result.num_errors
    print(
        f"\n=== paper grid {result.experiment or result.path} "
        + ("INTERRUPTED: resume with --resume" if result.interrupted else "finished")
        + f" ===\nresults (Ray Tune): {result.path}\ntrials: {result.num_trials} "
        f"({done} finished, {result.num_errors} errored)"
    )
    if result.tracking_uri:
        print(
            f"the table: python analysis/paper_table.py --experiment {result.experiment!r} "
            f"--mlflow-uri {result.tracking_uri}"
        )
    print(f"wall time: {time.perf_counter() - start:.0f} s")
    return 0 if not result.interrupted and not result.num_errors else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


__all__ = ["SMOKE_OVERRIDES", "add_arguments", "grid_cells", "main", "run"]
