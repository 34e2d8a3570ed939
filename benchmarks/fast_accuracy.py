"""Does fast mode cost accuracy? The same preset, exact and `run.fast=true`, over several seeds.

For each mode and each seed this runs `dmx train` (a subprocess, no MLflow) to the preset's end
and reads its metrics.jsonl: the final test accuracy (ensemble of both nets), the best and the
mean of the last 10 epochs (as the paper reports), the clean-detection AUC at the last division
and the median DivideMix epoch time. Printed: one row per run, then mean +- std per mode and the
difference of the means beside the seeds' spread (fast mode must stay within seed noise).

    python benchmarks/fast_accuracy.py                                # digits-sym-0.5, seeds 1-3
    python benchmarks/fast_accuracy.py --preset cifar10-sym-0.5 --data-dir /tmp/cifar10 \
        --set data.subset=5000 --set model.name=small_cnn --epochs 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from epoch import watch_machine  # benchmarks/epoch.py: who else used the CPU


def train(args: argparse.Namespace, seed: int, fast: bool, out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "dmx", "train", "--preset", args.preset, "--seed", str(seed)]
    cmd += ["--out", str(out), "--no-mlflow", "--quiet", "--set", f"run.fast={str(fast).lower()}"]
    if args.epochs:
        cmd += ["--set", f"run.epochs={args.epochs}"]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    for item in args.set:
        cmd += ["--set", item]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = lines[-1]
    dividemix = [m["epoch_seconds"] for m in lines if m.get("phase") == 1.0]
    return {
        "test_acc": last["test_acc"],
        "best": last["best_test_acc"],
        "last10": last["last10_test_acc"],
        "auc": (last.get("auc_net1", float("nan")) + last.get("auc_net2", float("nan"))) / 2,
        "dm_epoch_s": statistics.median(dividemix) if dividemix else float("nan"),
        "wall_s": wall,
    }


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} +- {std:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", default="digits-sym-0.5")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--epochs", type=int, default=0, help="run.epochs (default: the preset's)")
    p.add_argument("--data-dir", default="")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {"exact": [], "fast": []}
    with tempfile.TemporaryDirectory(prefix="dmx-fastacc-") as tmp, watch_machine() as machine:
        for seed in args.seeds:
            for mode in results:
                out = Path(tmp) / f"{mode}-{seed}"
                results[mode].append(train(args, seed, mode == "fast", out))
    print(f"# preset {args.preset}, --set {' '.join(args.set) or '-'}, seeds {args.seeds}")
    print(
        "| mode | seed | test acc | best | last-10 mean | AUC | DivideMix epoch s | run wall s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    for mode, runs in results.items():
        for seed, r in zip(args.seeds, runs):
            print(
                f"| {mode} | {seed} | {r['test_acc']:.2f} | {r['best']:.2f} | {r['last10']:.2f} "
                f"| {r['auc']:.4f} | {r['dm_epoch_s']:.2f} | {r['wall_s']:.1f} |"
            )
    for mode, runs in results.items():
        print(
            f"| {mode} | mean +- std | {mean_std([r['test_acc'] for r in runs])} "
            f"| {mean_std([r['best'] for r in runs])} | {mean_std([r['last10'] for r in runs])} "
            f"| | {mean_std([r['dm_epoch_s'] for r in runs])} | |"
        )
    exact = [r["test_acc"] for r in results["exact"]]
    fast = [r["test_acc"] for r in results["fast"]]
    spread = max(statistics.stdev(exact) if len(exact) > 1 else 0, 1e-9)
    diff = statistics.mean(fast) - statistics.mean(exact)
    print(
        f"# fast - exact final test accuracy: {diff:+.2f} points; the exact seeds' std "
        f"{spread:.2f} ({diff / spread:+.1f} std)"
    )
    print(machine.report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
