"""`dmx train`: one resumable DivideMix run in a run directory, tracked in MLflow, with a tqdm bar.

The command only wires things together: the config from the flags, `dmx.train.fit` for the loop,
and three reporters in order: the run directory (checkpoint first, so a crash in a later reporter
loses nothing), MLflow, and the progress bar.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dmx.cli.common import (
    DEFAULT_DATA_DIR,
    add_config_flags,
    add_data_flags,
    add_mlflow_flags,
    data_overrides,
    flag_overrides,
    parse_sets,
)
from dmx.config import Config, ConfigError
from dmx.reporting import Reporter

_EVENTS = {
    "empty_labelled": "the division labelled no sample (p_threshold too high?)",
    "empty_unlabelled": "the division left no unlabelled sample (p_threshold too low?): "
    "MixMatch on labelled inputs only",
    "skipped": "no labelled sample to train on: this net skipped its DivideMix step",
}


class StartLine(Reporter):
    """One line on stderr once training really starts (data prepared, resume checks passed, the
    MLflow run open): where the run goes. An error found before that prints only itself."""

    def __init__(self, out: Path, tracker: Any) -> None:
        self.out, self.tracker = out, tracker

    def start(self, cfg: Any, data: Any, state: Any) -> None:
        text = f"dmx train: run directory {self.out.resolve()}"
        if state.epoch:
            text += f", resuming after epoch {state.epoch}"
        if self.tracker is not None:
            text += f", MLflow run {self.tracker.run_id} in {self.tracker.uri}"
        print(text, file=sys.stderr)


class ProgressBar(Reporter):
    """One tqdm bar over epochs, drawn from `start` on: its text shows the phase and batch
    (`batch`, the `progress` callback of `fit`), its postfix the metrics of the last epoch."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.epoch = 0
        self.drawn = 0.0  # time.monotonic() of the last redraw

    def start(self, cfg: Any, data: Any, state: Any) -> None:
        from tqdm.auto import tqdm

        self.epoch = state.epoch
        self.bar = tqdm(
            total=cfg.run.epochs,
            initial=state.epoch,
            unit="epoch",
            dynamic_ncols=True,
            file=sys.stderr,
        )

    def batch(self, phase: str, index: int, total: int, info: dict[str, Any]) -> None:
        # At most a few redraws a second: reading the loss values waits for the device, and a
        # redraw per batch would slow small models.
        now = time.monotonic()
        if self.bar is None or (now - self.drawn < 0.25 and index + 1 != total):
            return
        self.drawn = now
        loss = " ".join(f"{k} {float(v):.3f}" for k, v in info.items())
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
        if self.bar is not None:
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
    # The sweep's rule: --data-dir else ./data, download only with --download; a resumed run
    # without --data-dir keeps its own folder.
    shortcuts = data_overrides(args, default_root=None if base is not None else DEFAULT_DATA_DIR)
    shortcuts.update(flag_overrides(args))
    return cfg.with_overrides({**shortcuts, **parse_sets(args.set)})


def check_out(out: Path, *, resume: bool) -> None:
    """Refuse an --out that cannot be a run directory, before anything is written: one line each,
    instead of a raw errno after the data was loaded and a run opened."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out.")
    if resume:
        if not out.is_dir() or not any((out / "checkpoints").glob("ckpt-*.pt")):
            raise ConfigError(
                f"--resume: {out} holds no checkpoint (looked in {out / 'checkpoints'}). "
                "Run without --resume to start a new run there."
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"--out {out}: cannot create the folder ({exc.strerror}); choose a writable --out."
        ) from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} is not writable; choose a writable --out.")


def lock_out(out: Path) -> Any:
    """The run directory's exclusive lock (`RUN_DIR/.lock`), held until released or death."""
    from dmx.reporting import RunDirLock

    try:
        return RunDirLock(out, what="dmx train").acquire()
    except OSError as exc:  # e.g. a read-only file system that let mkdir pass (exist_ok)
        raise ConfigError(
            f"--out {out}: cannot write there ({exc.strerror}); choose a writable --out."
        ) from None


def resume_command(args: argparse.Namespace, out: Path, cfg: Config, saved_epochs: Any) -> str:
    """The exact command line that continues this run (printed after Ctrl-C)."""
    cmd = ["dmx", "train", "--out", str(out), "--resume"]
    if saved_epochs is not None and cfg.run.epochs != saved_epochs:
        cmd += ["--epochs", str(cfg.run.epochs)]  # a resume that extended the run
    if args.device:
        cmd += ["--device", args.device]
    if args.no_mlflow:
        cmd.append("--no-mlflow")
    elif args.mlflow_uri:
        cmd += ["--mlflow-uri", args.mlflow_uri]
    if args.experiment != "dmx-train":
        cmd += ["--experiment", args.experiment]
    return shlex.join(cmd)


def cmd_train(args: argparse.Namespace) -> int:
    if args.resume and not args.out:
        raise ConfigError("--resume needs --out RUN_DIR (the folder of the run to continue).")
    cfg = None if args.resume else build_config(args)  # bad flags: refused before any write
    if args.out:
        out = Path(args.out)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{cfg.preset or cfg.data.dataset}-{stamp}"
    check_out(out, resume=args.resume)
    lock = lock_out(out)
    try:
        return _train_locked(args, out, cfg)
    finally:
        lock.release()


def _train_locked(args: argparse.Namespace, out: Path, cfg: Config | None) -> int:
    from dmx.reporting import Reporters, RunDirReporter
    from dmx.state import checkpoint_epoch, list_checkpoints, load_latest_checkpoint
    from dmx.train import fit

    state = None
    if args.resume:
        state = load_latest_checkpoint(out / "checkpoints")
        if state is None:  # the checkpoints vanished since check_out looked
            raise ConfigError(f"--resume: {out} holds no checkpoint.")
        cfg = build_config(args, Config.from_flat(state.config))
        if cfg.run.epochs < state.epoch:
            raise ConfigError(
                f"--resume: the checkpoint in {out} has completed {state.epoch} epochs; "
                f"run.epochs={cfg.run.epochs} would shrink the run below them. Pass --epochs "
                f"{state.epoch} or more (or omit --epochs), or start a new run in another --out."
            )
    elif list_checkpoints(out / "checkpoints"):
        raise ConfigError(
            f"{out} already holds a run. Pass --resume to continue it, or choose another --out."
        )
    assert cfg is not None
    saved_epochs = state.config.get("run.epochs") if state is not None else None
    tracker = None
    if not args.no_mlflow:
        from dmx import tracking

        # MLflow's INFO lines about creating a new sqlite store's tables are not dmx's business.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        tracker = tracking.train_reporter(
            run_dir=out, tracking_uri=args.mlflow_uri, experiment=args.experiment, state=state
        )
    bar = None if args.quiet else ProgressBar()
    run_dir = RunDirReporter(out, keep_checkpoints=cfg.run.keep_checkpoints)
    try:
        final = fit(
            cfg,
            reporter=Reporters(run_dir, tracker, StartLine(out, tracker), bar),
            state=state,
            progress=bar.batch if bar else None,
        )
    except KeyboardInterrupt as exc:
        if bar:
            bar.close()
        _end_quietly(tracker, exc)
        done = list_checkpoints(out / "checkpoints")
        if done:
            epochs = checkpoint_epoch(done[-1].name)
            print(
                f"dmx train: interrupted; {epochs} completed epochs are saved. Continue with: "
                + resume_command(args, out, cfg, saved_epochs),
                file=sys.stderr,
            )
        else:
            print(
                "dmx train: interrupted before the first epoch ended (no checkpoint to resume); "
                "run the same command again to start over.",
                file=sys.stderr,
            )
        return 130
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


def _end_quietly(tracker: Any, exc: BaseException) -> None:
    """Mark the MLflow run KILLED after Ctrl-C, with further Ctrl-Cs ignored for that moment (a
    second one must not leave the run RUNNING); a store error is one line, not a traceback."""
    if tracker is None:
        return
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
    try:
        tracker.fail(exc)
    except Exception as err:  # the run is interrupted anyway: say why MLflow failed, in one line
        print(f"dmx train: could not mark the MLflow run KILLED: {err}", file=sys.stderr)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)


def add_arguments(t: argparse.ArgumentParser) -> None:
    """The `dmx train` flags; the handler is `cmd_train`."""
    t.add_argument("--preset", help="a paper setting (see `dmx presets`)")
    add_data_flags(t)
    add_config_flags(t)
    t.add_argument("--seed", type=int, help="run.seed: model init, augmentation, GMM seeds")
    t.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    t.add_argument("--out", help="run directory (default runs/PRESET-TIMESTAMP)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_mlflow_flags(t)
    t.add_argument("--experiment", default="dmx-train", help="MLflow experiment name")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)


__all__ = ["ProgressBar", "StartLine", "add_arguments", "build_config", "cmd_train"]
