"""`dmx` command line: train, sweep, presets, models, config, label-issues."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from dmx.config import Config, ConfigError, field_docs


def _parse_sets(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"--set {item!r} must look like dotted.key=value (e.g. dividemix.T=0.5)."
            )
        out[key.strip()] = value.strip()
    return out


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
    for flag, key in (
        ("epochs", "run.epochs"),
        ("model", "model.name"),
        ("subset", "data.subset"),
        ("seed", "run.seed"),
        ("device", "run.device"),
    ):
        value = getattr(args, flag)
        if value is not None:
            shortcuts[key] = value
    return cfg.with_overrides({**shortcuts, **_parse_sets(args.set)})


_EVENTS = {
    "empty_labelled": "the division labelled no sample (p_threshold too high?)",
    "empty_unlabelled": "the division left no unlabelled sample (p_threshold too low?): "
    "MixMatch on labelled inputs only",
    "skipped": "no labelled sample to train on: this net skipped its DivideMix step",
}


class _ProgressBar:
    """One tqdm bar over epochs: its text shows the phase and batch, its postfix the metrics."""

    def __init__(self, total: int, initial: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total, initial=initial, unit="epoch", dynamic_ncols=True, file=sys.stderr
        )
        self.epoch = initial

    def batch(self, phase: str, index: int, total: int, info: dict[str, float]) -> None:
        if index % 5 and index + 1 != total:
            return
        loss = " ".join(f"{k} {v:.3f}" for k, v in info.items())
        self.bar.set_description(
            f"epoch {self.epoch} {phase} {index + 1}/{total} {loss}", refresh=False
        )
        self.bar.refresh()

    def epoch_end(self, epoch: int, m: dict[str, float]) -> None:
        post = {"acc": f"{m['test_acc']:.2f}"}
        if "val_acc" in m:
            post["val"] = f"{m['val_acc']:.2f}"
        if "labeled_net1" in m:
            post["labeled"] = f"{int(m['labeled_net1'])}/{int(m['labeled_net2'])}"
        if "auc_net1" in m and m["auc_net1"] == m["auc_net1"]:
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


def cmd_train(args: argparse.Namespace) -> int:
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
    bar = _ProgressBar(cfg.run.epochs, state.epoch if state else 0) if not args.quiet else None
    reporters = []
    if bar:
        reporters.append(lambda e, m, s: bar.epoch_end(e, m))
    tracker = None
    if not args.no_mlflow:
        from dmx import tracking

        tracker = tracking.train_reporter(
            cfg, run_dir=out, tracking_uri=args.mlflow_uri, experiment=args.experiment, state=state
        )
        reporters.append(tracker)

    def report(epoch: int, m: dict[str, float], s) -> None:
        for r in reporters:
            r(epoch, m, s)

    try:
        final = fit(
            cfg, report=report, state=state, run_dir=out, progress=bar.batch if bar else None
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


def cmd_presets(args: argparse.Namespace) -> int:
    from dmx.presets import PRESETS

    for name, overrides in PRESETS.items():
        print(name)
        for key, value in overrides.items():
            print(f"    {key} = {value}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from dmx.models import MODELS

    for name in MODELS:
        print(name)
    print("(or an import path pkg.module:factory, called with num_classes=)")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from dmx.presets import get_preset

    cfg = get_preset(args.preset) if args.preset else Config()
    docs = field_docs()
    for key, value in cfg.to_flat().items():
        doc = docs.get(key, "")
        print(f"{key} = {json.dumps(value)}" + (f"    # {doc}" if doc and args.docs else ""))
    return 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmx", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train DivideMix on one machine (resumable)")
    t.add_argument("--preset", help="a paper setting (see `dmx presets`)")
    t.add_argument("--data-dir", help="dataset folder (holding e.g. cifar-10-batches-py)")
    t.add_argument("--download", action="store_true", help="download the dataset if missing")
    t.add_argument("--epochs", type=int)
    t.add_argument("--model", help="registry name or pkg.module:factory")
    t.add_argument("--subset", type=int, help="train on a stratified subset of N samples")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto, cpu, cuda, cuda:N")
    t.add_argument("--out", help="run directory (default runs/PRESET-TIMESTAMP)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set dividemix.lambda_u=25 (repeatable)",
    )
    t.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    t.add_argument(
        "--mlflow-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)"
    )
    t.add_argument("--experiment", default="dmx-train", help="MLflow experiment name")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    sub.add_parser("presets", help="list the paper presets").set_defaults(func=cmd_presets)
    sub.add_parser("models", help="list the registered models").set_defaults(func=cmd_models)
    c = sub.add_parser("config", help="print the resolved config of a preset")
    c.add_argument("--preset")
    c.add_argument("--docs", action="store_true", help="with each field's documentation")
    c.set_defaults(func=cmd_config)

    from dmx import sweep_cli  # imports no Ray at module level

    sw = sub.add_parser("sweep", help="hyperparameter sweep on Ray Tune (docs/sweeps.md)")
    sweep_cli.add_arguments(sw)
    sw.set_defaults(func=sweep_cli.run)

    try:
        from dmx import label_issues
    except ImportError:  # pragma: no cover - module optional while it is being built
        label_issues = None
    if label_issues is not None and hasattr(label_issues, "add_cli"):
        label_issues.add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, ImportError, RuntimeError, TypeError) as exc:
        # Every error dmx raises for bad input is one of these and carries its fix in the message;
        # DMX_DEBUG=1 shows the traceback for anything that looks like a bug instead.
        if os.environ.get("DMX_DEBUG"):
            raise
        print(f"dmx: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
