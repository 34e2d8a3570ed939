"""`dmx` command line: train, sweep, presets, models, config, label-issues."""

from __future__ import annotations

import argparse
import os
import sys

from dmx.cli import info, label_issues, predict, sweep, train


def version() -> str:
    """The installed dmx version (the package's metadata; the source's when not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("dmx")
    except PackageNotFoundError:
        from dmx import __version__

        return __version__


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dmx", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"dmx {version()}", help="print dmx's version"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train.add_arguments(sub.add_parser("train", help="train DivideMix on one machine (resumable)"))
    info.add_parsers(sub)
    sw = sub.add_parser("sweep", help="hyperparameter sweep on Ray Tune (docs/sweeps.md)")
    sweep.add_arguments(sw)
    sw.set_defaults(func=sweep.run)
    label_issues.add_cli(sub)
    predict.add_cli(sub)  # predict, export
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # `dmx train` says how to resume; elsewhere one line is enough
        print("dmx: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError, RuntimeError, TypeError) as exc:
        # Every error dmx raises for bad input is one of these and carries its fix in the message;
        # DMX_DEBUG=1 shows the traceback for anything that looks like a bug instead.
        if os.environ.get("DMX_DEBUG"):
            raise
        print(f"dmx: error: {exc}", file=sys.stderr)
        return 2


__all__ = ["main", "make_parser", "version"]
