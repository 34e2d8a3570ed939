"""What Ray Tune and MLflow add to a run: one trial of a sweep against the same `dmx train`.

Runs, one after the other on this machine, the same config (a preset, --epochs, --set):
  train  `dmx train` (a subprocess, as a user runs it), logging to MLflow as it does by default;
  trial  the same config as the one trial of a one-cell grid (`dmx.sweep.run_grid`: Ray Tune,
         a checkpoint handed to Tune every epoch, MLflow logging from the trial, the parent run).
Both log to one fresh MLflow store, so each run's duration is read the same way: its MLflow
run's start to end (setup, every epoch, the final test and per-sample report). Printed: the two
durations and their ratio (the trial's overhead), each command's whole wall time (the sweep's
includes starting Ray once, a cost shared by all its trials), and whether the two runs reached
the same test accuracy at every epoch (they should: same config, same seed).

    python benchmarks/overhead.py                                   # digits-sym-0.5, 12 epochs
    python benchmarks/overhead.py --preset cifar10-sym-0.5 --data-dir /tmp/cifar10 \
        --set data.subset=2000 --model small_cnn --epochs 12

The figures are only fit to publish when nothing else used the CPU meanwhile (checked from
/proc, as benchmarks/epoch.py does).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from epoch import watch_machine  # benchmarks/epoch.py: who else used the CPU

from dmx.cli.common import parse_sets
from dmx.presets import get_preset


def config_overrides(args: argparse.Namespace) -> dict[str, str]:
    overrides = {"run.epochs": str(args.epochs), "model.name": args.model}
    if args.data_dir:
        overrides["data.root"] = args.data_dir
    overrides.update(parse_sets(args.set))
    return overrides


def run_train(args: argparse.Namespace, uri: str, out: Path) -> float:
    cmd = [sys.executable, "-m", "dmx", "train", "--preset", args.preset, "--out", str(out)]
    cmd += ["--mlflow-uri", uri, "--experiment", "overhead-train", "--quiet"]
    for key, value in config_overrides(args).items():
        cmd += ["--set", f"{key}={value}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def run_trial(args: argparse.Namespace, uri: str, storage: Path) -> tuple[float, str]:
    from dmx.sweep import SweepOptions, run_grid

    cfg = get_preset(args.preset).with_overrides(config_overrides(args))
    # The trial gets the whole machine, as `dmx train` does (a trial runs torch with
    # cpus_per_trial threads: fewer threads would be slower and sum in another order).
    options = SweepOptions(
        name="overhead-trial",
        storage_path=str(storage),
        cells=(args.preset,),
        cpus_per_trial=os.cpu_count() or 1,
    )
    start = time.perf_counter()
    result = run_grid({args.preset: cfg}, options, mlflow_uri=uri, verbose=0)
    wall = time.perf_counter() - start
    if result.num_errors or result.interrupted:
        raise SystemExit(f"the trial did not finish: see {result.path}")
    return wall, result.experiment


def mlflow_run(uri: str, experiment: str, *, trial: bool):
    """(duration s, {epoch: test_acc}) of the experiment's one train run / one grid trial."""
    from mlflow.tracking import MlflowClient

    from dmx.tracking.store import CELL_TAG

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [
        r for r in client.search_runs([exp.experiment_id]) if not trial or CELL_TAG in r.data.tags
    ]
    if len(runs) != 1:
        raise SystemExit(f"expected one run in {experiment}, found {len(runs)}")
    run = runs[0]
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_acc")}
    return (run.info.end_time - run.info.start_time) / 1000, history


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="digits-sym-0.5")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--data-dir", default="")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    with tempfile.TemporaryDirectory(prefix="dmx-overhead-") as tmp, watch_machine() as machine:
        uri = f"sqlite:///{tmp}/mlflow.db"
        train_wall = run_train(args, uri, Path(tmp) / "train")
        trial_wall, experiment = run_trial(args, uri, Path(tmp) / "ray")
        train_s, train_acc = mlflow_run(uri, "overhead-train", trial=False)
        trial_s, trial_acc = mlflow_run(uri, experiment, trial=True)
    print(
        f"# preset {args.preset}, model {args.model}, {args.epochs} epochs, "
        f"--set {' '.join(args.set) or '-'}; cpus {os.cpu_count()}"
    )
    print("| | run (MLflow start to end) s | whole command s |\n|---|---:|---:|")
    print(f"| dmx train | {train_s:.1f} | {train_wall:.1f} |")
    print(f"| one trial of a grid (Ray Tune + MLflow) | {trial_s:.1f} | {trial_wall:.1f} |")
    print(f"| ratio trial / train | {trial_s / train_s:.3f} | {trial_wall / train_wall:.3f} |")
    same = train_acc == trial_acc and len(train_acc) == args.epochs
    print(
        f"# test accuracy at every epoch identical in both: {same} "
        f"(final {train_acc.get(args.epochs - 1)} / {trial_acc.get(args.epochs - 1)})"
    )
    print(machine.report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
