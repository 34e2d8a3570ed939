"""`dmx presets`, `dmx models`, `dmx config`: what can be run, printed without running anything."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dmx.cli.common import parse_sets
from dmx.config import Config, field_docs


def preset_notes(cfg: Config) -> list[str]:
    """What sets a preset apart from the CIFAR-10 reference recipe, in words (from its resolved
    config, so the "auto" rules show as what they give)."""
    r, notes = cfg.resolved(), []
    if r.dividemix.warmup_epochs != 10:
        notes.append(f"{r.dividemix.warmup_epochs} warmup epochs")
    if r.dividemix.warmup_confidence_penalty:
        notes.append("confidence penalty in warmup")
    if r.dividemix.loss_history_window > 1:
        notes.append(f"loss averaged over the last {r.dividemix.loss_history_window} epochs")
    if r.data.dataset == "digits":
        notes.append(f"8x8 digits, {r.model.name}: a one-minute CPU run, not a paper setting")
    elif r.model.name != "preact_resnet18":
        notes.append(f"model {r.model.name}")
    return notes


def preset_rows() -> list[dict[str, str]]:
    """One row per preset: what `dmx presets` prints and the README's preset table shows."""
    from dmx.paper import paper_result
    from dmx.presets import PRESETS, get_preset

    rows = []
    for name in PRESETS:
        cfg = get_preset(name)
        paper = paper_result(name)
        rows.append(
            {
                "preset": name,
                "noise": f"{cfg.noise.rate:.0%} {cfg.noise.mode}",
                "λu": f"{cfg.dividemix.lambda_u:g}",
                "p_threshold": f"{cfg.dividemix.p_threshold:g}",
                "paper (test acc %)": paper.summary() if paper else "—",
                "notes": "; ".join(preset_notes(cfg)),
                "source": paper.source if paper else "",
            }
        )
    return rows


def cmd_presets(args: argparse.Namespace) -> int:
    """The presets with their settings, notes and the paper's numbers (dmx.paper); --verbose
    adds every override each preset sets."""
    from dmx.presets import PRESETS

    rows = preset_rows()
    columns = [c for c in rows[0] if c != "source"]
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())
        if args.verbose:
            if row["source"]:
                print(f"    paper: {row['source']}")
            for key, value in PRESETS[row["preset"]].items():
                print(f"    {key} = {value}")
    print(
        "\nPaper: Li, Socher, Hoi, ICLR 2020 (DivideMix), test accuracy in %: CIFAR best over "
        "epochs / mean of the last 10 (Tables 1-2), Clothing1M top-1 (Table 3), WebVision top-1 / "
        "top-5 (Table 4). `dmx presets --verbose` shows each preset's "
        "settings and table row; `dmx config --preset NAME` its whole config."
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from dmx.models import MODELS, available_models  # torch: only for this command

    backbones = [n for n in available_models() if n not in MODELS]
    for name in MODELS:
        print(name)
    print(
        f"torchvision:NAME ({len(backbones)} classifiers; torchvision:NAME.WEIGHTS pins weights):"
    )
    for start in range(0, len(backbones), 4):
        print(
            "    " + "  ".join(n.removeprefix("torchvision:") for n in backbones[start : start + 4])
        )
    print("(or an import path pkg.module:factory, called with num_classes=)")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    """The config `dmx train` would run with these options: "auto" fields resolved, each with the
    rule it came from (so `--set data.dataset=cifar100` shows its 30 warmup epochs); a value a
    preset or --set gave says so; the rest are the reference recipe's defaults."""
    from dmx.presets import PRESETS, get_preset

    cfg = get_preset(args.preset) if args.preset else Config()
    sets = parse_sets(args.set)
    cfg = cfg.with_overrides(sets)
    sources, docs = cfg.auto_sources(), field_docs()
    from_preset = PRESETS.get(args.preset or "", {})
    for key, value in cfg.resolved().to_flat().items():
        if key in sources:
            notes = [sources[key]]
        elif key in sets:
            notes = ["--set"]
        elif key in from_preset:
            notes = [f"preset {args.preset}"]
        else:
            notes = []  # the reference recipe's default
        if args.docs and docs.get(key):
            notes.append(docs[key])
        print(f"{key} = {json.dumps(value)}" + "".join(f"    # {n}" for n in notes))
    return 0


def add_parsers(sub: Any) -> None:
    """Register presets, models and config on an argparse subparsers object."""
    presets = sub.add_parser(
        "presets", help="the paper presets: settings, notes and the paper's test accuracy"
    )
    presets.add_argument(
        "--verbose", action="store_true", help="also every override of each preset and its table"
    )
    presets.set_defaults(func=cmd_presets)
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


__all__ = ["add_parsers", "cmd_config", "cmd_models", "cmd_presets", "preset_notes", "preset_rows"]
