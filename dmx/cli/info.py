"""`dmx presets`, `dmx models`, `dmx config`: what can be run, printed without running anything."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dmx.cli.common import parse_sets
from dmx.config import Config, field_docs


def cmd_presets(args: argparse.Namespace) -> int:
    from dmx.presets import PRESETS

    for name, overrides in PRESETS.items():
        print(name)
        for key, value in overrides.items():
            print(f"    {key} = {value}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from dmx.models import MODELS  # torch: only for this command

    for name in MODELS:
        print(name)
    print("(or an import path pkg.module:factory, called with num_classes=)")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """The config `dmx train` would run with these options: "auto" fields resolved, each with the
    rule it came from (so `--set data.dataset=cifar100` shows its 30 warmup epochs)."""
    from dmx.presets import get_preset

    cfg = get_preset(args.preset) if args.preset else Config()
    cfg = cfg.with_overrides(parse_sets(args.set))
    sources, docs = cfg.auto_sources(), field_docs()
    for key, value in cfg.resolved().to_flat().items():
        notes = [sources[key]] if key in sources else []
        if args.docs and docs.get(key):
            notes.append(docs[key])
        print(f"{key} = {json.dumps(value)}" + "".join(f"    # {n}" for n in notes))
    return 0


def add_parsers(sub: Any) -> None:
    """Register presets, models and config on an argparse subparsers object."""
    sub.add_parser("presets", help="list the paper presets").set_defaults(func=cmd_presets)
    sub.add_parser("models", help="list the registered models").set_defaults(func=cmd_models)
    c = sub.add_parser(
        "config", help="print the resolved config of a preset (auto fields with their source)"
    )
    c.add_argument("--preset", help="a paper setting (see `dmx presets`)")
    c.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field first, as `dmx train --set` does (repeatable)",
    )
    c.add_argument("--docs", action="store_true", help="with each field's documentation")
    c.set_defaults(func=cmd_config)


__all__ = ["add_parsers", "cmd_config", "cmd_models", "cmd_presets"]
