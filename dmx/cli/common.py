"""What `dmx train` and the sweep command line share: the --set parser, the flag -> config-key
table, and the flags that mean the same in both."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dmx.config import ConfigError

# Shortcut flags that set one config field each, in both `dmx train` and a sweep (`--device` only
# in train: a sweep's trials take the device Ray gives them). `--data-dir` and `--download` follow
# one rule in both (`data_overrides`).
FLAG_KEYS = {
    "epochs": "run.epochs",
    "model": "model.name",
    "subset": "data.subset",
    "seed": "run.seed",
    "device": "run.device",
}


DEFAULT_DATA_DIR = "data"


def add_data_flags(p: Any) -> None:
    """--data-dir and --download, with the one rule of `data_overrides`."""
    p.add_argument(
        "--data-dir",
        help=f"dataset folder (holding e.g. cifar-10-batches-py; default ./{DEFAULT_DATA_DIR}). "
        "On a cluster: a path every node mounts",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="download the dataset into --data-dir when it is missing (without it a missing "
        "dataset is an error naming the archive to fetch)",
    )


def data_overrides(
    args: argparse.Namespace, *, default_root: str | None = DEFAULT_DATA_DIR
) -> dict:
    """The one rule for the data folder, in `dmx train` and every sweep: `--data-dir`, else
    `./data` (made absolute); the dataset is downloaded only with `--download`. `default_root`
    None keeps the config's own folder (a resumed run without --data-dir)."""
    out: dict[str, Any] = {}
    root = args.data_dir or default_root
    if root:
        out["data.root"] = str(Path(root).expanduser().resolve())
    out["data.download"] = bool(args.download)
    return out


def parse_sets(items: Sequence[str]) -> dict[str, str]:
    """`--set` items `dotted.key=value` -> {key: value} (strings; the Config types them)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"--set {item!r} must look like dotted.key=value (e.g. dividemix.T=0.5)."
            )
        out[key.strip()] = value.strip()
    return out


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """{config key: value} of the `FLAG_KEYS` flags given on the command line (None = not given;
    a flag the command does not define counts as not given)."""
    return {
        key: getattr(args, flag)
        for flag, key in FLAG_KEYS.items()
        if getattr(args, flag, None) is not None
    }


def add_config_flags(p: Any) -> None:
    """--epochs, --model, --subset and --set on a parser or argument group."""
    p.add_argument("--epochs", type=int, help="epochs to train (default: the preset's)")
    p.add_argument(
        "--model", help="registry name or pkg.module:factory (default: the preset's; `dmx models`)"
    )
    p.add_argument("--subset", type=int, help="train on a stratified subset of N samples")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any config field, e.g. --set dividemix.lambda_u=25 (repeatable)",
    )


def add_mlflow_flags(p: Any) -> None:
    """--mlflow-uri (alias --tracking-uri) and --no-mlflow on a parser or argument group."""
    p.add_argument(
        "--mlflow-uri",
        "--tracking-uri",
        dest="mlflow_uri",
        metavar="URI",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the "
        "working directory); --tracking-uri is an alias",
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")


__all__ = [
    "DEFAULT_DATA_DIR",
    "FLAG_KEYS",
    "add_config_flags",
    "add_data_flags",
    "add_mlflow_flags",
    "data_overrides",
    "flag_overrides",
    "parse_sets",
]
