"""What `dmx train` and the sweep command line share: the --set parser, the flag -> config-key
table, and the flags that mean the same in both."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from dmx.config import ConfigError

# Shortcut flags that set one config field each, in both `dmx train` and a sweep (`--device` only
# in train: a sweep's trials take the device Ray gives them). `--data-dir` and `--download` are
# not here: a sweep defaults them (./data, download when missing) where `dmx train` does not.
FLAG_KEYS = {
    "epochs": "run.epochs",
    "model": "model.name",
    "subset": "data.subset",
    "seed": "run.seed",
    "device": "run.device",
}


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
    """--mlflow-uri and --no-mlflow on a parser or argument group."""
    p.add_argument(
        "--mlflow-uri",
        help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the "
        "working directory)",
    )
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")


__all__ = ["FLAG_KEYS", "add_config_flags", "add_mlflow_flags", "flag_overrides", "parse_sets"]
