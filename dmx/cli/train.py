"""`dmx train`: one resumable DivideMix run in a run directory, tracked in MLflow, with a tqdm bar.

The command only wires things together: the config from the flags, `dmx.train.fit` for the loop,
and three reporters in order: the run directory (checkpoint first, so a crash in a later reporter
loses nothing), MLflow, and the progress bar.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from dmx.cli.common import add_config_flags, add_mlflow_flags, flag_overrides, parse_sets
from dmx.config import Config, ConfigError
from dmx.reporting import Reporter

_EVENTS = {
    "empty_labelled": "the division labelled no sample (p_threshold too high?)",
    "empty_unlabelled": "the division left no unlabelled sample (p_threshold too low?): "
    "MixMatch on labelled inputs only",
    "skipped": "no labelled sample to train on: this net skipped its DivideMix step",
}


class ProgressBar(Reporter):
    """One tqdm bar over epochs: its text shows the phase and batch (`batch`, the `progress`
    callback of `fit`), its postfix the metrics of the last epoch (`epoch_end`)."""

    def __init__(self, total: int, initial: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total, initial=initial, unit="epoch", dynamic_ncols=True, file=sys.stderr
        )
        self.epoch = initial

    def batch(self, phase: str, index: int, total: int, info: dict[str, float]) -> None:
        if index % 5 and index + 1 != total:  # a redraw per batch would slow small models down
            return
        loss = " ".join(f"{k} {v:.3f}" for k, v in info.items())
        self.bar.set_description(
            f"epoch {self.epoch} {phase} {index + 1}/{total} {loss}", refresh=False
        )
        self.bar.refresh()

    def epoch_end(self, epoch: int, metrics: dict[str, float], state: Any) -> None:
        m = metrics
        post = {"acc": f"{m['test_acc']:.2f}"}
        if "val_acc" in m:
            post["val"] = f"{m['val_acc']:.2f}"
        if "labeled_net1" in m:
            post["labeled"] = f"{int(m['labeled_net1'])}/{int(m['labeled_net2'])}"
        if "auc_net1" in m and m["auc_net1"] == m["auc_net1"]:  # nan during warmup
            post["auc"] = f"{m['auc_net1']:.3f}"
        for key in sorted(k for k in m if k.startswith(("empty_", "skipped_"))):
            self.bar.write(
                f"epoch {epoch}: {_EVENTS[key.rsplit('_', 1)[0]]} ({key.rsplit('_', 1)[1]})"
            )
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)
        self.epoch = epoch + 1

    def close(self) -> None:
        self.bar.close()


def build_config(args: argparse.Namespace, base: Config | None = None) -> Config:
    """Preset (or a resumed run's own config) + the shortcut flags + --set overrides."""
    from dmx.presets import get_preset

    if args.preset:
        cfg = get_preset(args.preset)
    elif base is not None:
        cfg = base
    else:
        cfg = Config()
    shortcuts: dict[str, Any] = {}
    if args.data_dir:
        shortcuts["data.root"] = str(Path(args.data_dir).expanduser().resolve())
    if args.download:
        shortcuts["data.download"] = True
    shortcuts.update(flag_overrides(args))
    return cfg.with_overrides({**shortcuts, **parse_sets(args.set)})


def cmd_train(args: argparse.Namespace) -> int:
    from dmx.reporting import Reporters, RunDirReporter
    from dmx.state import load_latest_checkpoint
    from dmx.train import fit

    out = Path(args.out) if args.out else None
    state = None
    base = None
    if args.resume:
        if out is None:
            raise ConfigError("--resume needs --out RUN_DIR (the folder of the run to continue).")
        state = load_latest_checkpoint(out / "checkpoints")
        if state is None:
            raise ConfigError(
                f"--resume: {out} holds no checkpoint (looked in {out / 'checkpoints'}). "
                "Run without --resume to start a new run there."
            )
        base = Config.from_flat(state.config)
    cfg = build_config(args, base)
    if out is None:
        out = Path("runs") / f"{cfg.preset or cfg.data.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    if state is None and (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise ConfigError(
            f"{out} already holds a run. Pass --resume to continue it, or choose another --out."
        )
    print(f"dmx train: run directory {out.resolve()}", file=sys.stderr)
    tracker = None
    if not args.no_mlflow:
        from dmx import tracking

        tracker = tracking.train_reporter(
            cfg, run_dir=out, tracking_uri=args.mlflow_uri, experiment=args.experiment, state=state
        )
    bar = None if args.quiet else ProgressBar(cfg.run.epochs, state.epoch if state else 0)
    run_dir = RunDirReporter(out, keep_checkpoints=cfg.run.keep_checkpoints)
    try:
        final = fit(
            cfg,
            reporter=Reporters(run_dir, tracker, bar),
            state=state,
            progress=bar.batch if bar else None,
        )
    except BaseException as exc:
        if tracker is not None:
            tracker.fail(exc)
        raise
    finally:
        if bar:
            bar.close()
    if tracker is not None:
        tracker.finish(final)
    last = final.metrics_history[-1] if final.metrics_history else {}
    summary = {
        k: last[k] for k in ("test_acc", "best_test_acc", "last10_test_acc", "val_acc") if k in last
    }
    print(json.dumps({"run_dir": str(out.resolve()), "epochs": final.epoch, **summary}, indent=2))
    return 0


def add_arguments(t: argparse.ArgumentParser) -> None:
    """The `dmx train` flags; the handler is `cmd_train`."""
    t.add_argument("--preset", help="a paper setting (see `dmx presets`)")
    t.add_argument("--data-dir", help="dataset folder (holding e.g. cifar-10-batches-py)")
    t.add_argument("--download", action="store_true", help="download the dataset if missing")
    add_config_flags(t)
    t.add_argument("--seed", type=int, help="run.seed: model init, augmentation, GMM seeds")
    t.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    t.add_argument("--out", help="run directory (default runs/PRESET-TIMESTAMP)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_mlflow_flags(t)
    t.add_argument("--experiment", default="dmx-train", help="MLflow experiment name")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)


__all__ = ["ProgressBar", "add_arguments", "build_config", "cmd_train"]
