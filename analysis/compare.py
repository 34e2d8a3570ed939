"""Compare the trials of a sweep: which setting to use, and can the objective be trusted?

    python -m analysis.compare --experiment NAME [--mlflow-uri URI] [--out DIR]
                               [--group-by PARAM ...] [--rank-by COLUMN]

Prints the trials ranked by the sweep objective (noisy-validation accuracy at the last epoch) as
a markdown table, names the best setting, reports the Spearman rank correlation between the
objective and test accuracy across trials (and the test accuracy lost by trusting the objective),
and gives mean ± std per setting when a sweep repeats seeds (or per `--group-by` param). Writes
OUT/trials.csv, OUT/trials.parquet, OUT/history.parquet, OUT/groups.csv and OUT/summary.json.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.runs import (
    OBJECTIVE,
    Sweep,
    best_setting,
    correlation_caveat,
    default_grouping,
    format_cell,
    format_mean_std,
    format_value,
    group_summary,
    load_sweep,
    objective_test_correlation,
    ran_to_the_end,
    rank_trials,
    to_json,
)

METRIC_COLUMNS = [
    "val_acc_final",
    "val_acc_best",
    "test_acc_final",
    "test_acc_best",
    "test_acc_last10",
    "auc_final",
    "precision_final",
    "recall_final",
    "epochs",
    "outcome",
    "wall_seconds",
]
HEADERS = {
    "val_acc_final": "val acc %",
    "val_acc_best": "best val %",
    "test_acc_final": "test acc %",
    "test_acc_best": "best test %",
    "test_acc_last10": "last-10 test %",
    "auc_final": "AUC",
    "precision_final": "precision",
    "recall_final": "recall",
    "wall_seconds": "wall s",
}


GROUP_METRICS = ("val_acc_final", "test_acc_final", "test_acc_last10", "auc_final")


@dataclass
class Comparison:
    """Everything `python -m analysis.compare` prints and writes."""

    sweep: Sweep
    ranked: pd.DataFrame
    rank_by: str
    best: dict[str, Any]
    correlation: dict[str, float]
    group_by: list[str] = field(default_factory=list)
    groups: pd.DataFrame | None = None

    def top_trial(self) -> pd.Series | None:
        """The best-ranked trial that ran to the end (else the best-ranked one): a failed seed
        whose last logged objective happens to be high is not "the best trial"."""
        if self.ranked.empty:
            return None
        done = self.ranked[ran_to_the_end(self.ranked)]
        return (done if len(done) else self.ranked).iloc[0]

    def summary(self) -> dict[str, Any]:
        top = self.top_trial()
        return {
            "experiment": self.sweep.experiment,
            "tracking_uri": self.sweep.tracking_uri,
            "trials": int(len(self.ranked)),
            "rank_by": self.rank_by,
            "searched_params": self.sweep.searched,
            "best_setting": self.best,
            "best_trial": None if top is None else str(top["trial_id"]),
            "best_run_id": None if top is None else str(top["run_id"]),
            "objective_test_correlation": self.correlation,
            "group_by": self.group_by,
        }


def compare(
    sweep: Sweep, *, group_by: list[str] | None = None, rank_by: str = OBJECTIVE
) -> Comparison:
    """Rank, pick the best setting, correlate objective and test, group (by `group_by`, or
    automatically by the searched params other than the seed when seeds repeat)."""
    if rank_by not in sweep.trials:
        raise KeyError(f"--rank-by {rank_by!r} is not a column; try one of {METRIC_COLUMNS[:5]}")
    ranked = rank_trials(sweep.trials.drop(columns="rank", errors="ignore"), by=rank_by)
    keys = list(group_by) if group_by else default_grouping(sweep)
    columns = [rank_by, *(m for m in GROUP_METRICS if m != rank_by)]
    # Failed, running or ASHA-stopped trials ended mid-way: their final numbers would skew the
    # mean, so they are counted out and named per group (`not_counted`), never averaged in.
    counted = ran_to_the_end(ranked)
    groups = None
    if keys and counted.any():
        groups = group_summary(ranked, keys, columns=columns, counted=counted)
    return Comparison(
        sweep=sweep,
        ranked=ranked,
        rank_by=rank_by,
        best=best_setting(ranked, sweep.searched, groups),
        correlation=objective_test_correlation(ranked),
        group_by=keys,
        groups=groups,
    )


def display_columns(comparison: Comparison) -> list[str]:
    ranked = comparison.ranked
    searched = [p for p in comparison.sweep.searched if p in ranked]
    ids = [c for c in ("cell", "config_id") if c in ranked and ranked[c].notna().any()]
    cols = ["rank", "trial_id", *ids, *searched, *METRIC_COLUMNS]
    return [c for c in cols if c in ranked]


def grouping_label(keys: list[str]) -> str:
    """What a group is, for headings: `configuration (dmx.config_id)` or the params' names."""
    if keys and keys[0] == "config_id":
        return "configuration (dmx.config_id)"
    if keys == ["cell"]:
        return "cell of the paper grid (dmx.cell)"
    return ", ".join(keys)


def display_headers(comparison: Comparison) -> dict[str, str]:
    """Column headers: HEADERS, and params by their last dotted part when that is unambiguous."""
    short = [p.rsplit(".", 1)[-1] for p in comparison.sweep.searched]
    params = {
        p: s for p, s in zip(comparison.sweep.searched, short, strict=True) if short.count(s) == 1
    }
    return {**HEADERS, **params}


def markdown_table(
    frame: pd.DataFrame,
    columns: list[str] | None = None,
    headers: dict[str, str] | None = None,
    *,
    right: Sequence[str] = (),
) -> str:
    """A GitHub-flavoured markdown table (numbers, and the columns `right`, right-aligned)
    without extra dependencies."""
    columns = list(frame.columns) if columns is None else columns
    headers = headers or {}
    cells = [
        [format_cell(c, v) for c, v in zip(columns, row, strict=True)]
        for row in frame[columns].itertuples(index=False)
    ]
    names = [headers.get(c, c) for c in columns]
    numeric = [
        c in right
        or (pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c]))
        for c in columns
    ]
    widths = [max([len(n), *(len(r[i]) for r in cells)]) for i, n in enumerate(names)]

    def line(values: list[str]) -> str:
        padded = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "|"
        + "|".join(
            ("-" * (w + 1) + ":") if num else ("-" * (w + 2))
            for w, num in zip(widths, numeric, strict=True)
        )
        + "|"
    )
    return "\n".join([line(names), rule, *(line(r) for r in cells)])


def groups_table(groups: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """`mean ± std (n)` strings per setting, for printing and the report."""
    out = groups[keys].copy()
    metrics = sorted(
        {c.rsplit("_", 1)[0] for c in groups if c.endswith("_mean")},
        key=lambda c: METRIC_COLUMNS.index(c) if c in METRIC_COLUMNS else 99,
    )
    for m in metrics:
        mean, std = groups[f"{m}_mean"], groups[f"{m}_std"]
        out[HEADERS.get(m, m) + " (mean ± std)"] = [
            format_mean_std(a, b) for a, b in zip(mean, std, strict=True)
        ]
    out["n"] = groups["n"]
    if "runs" in groups:
        out["runs"] = groups["runs"]
        out["not averaged"] = groups["not_counted"]
    return out


def best_text(c: Comparison) -> str:
    """One sentence naming the setting to use and the evidence for it."""
    setting = ", ".join(f"{k}={format_cell(k, v)}" for k, v in c.best.items())
    setting = setting or "no parameter was searched"
    top = c.top_trial()
    single = (
        f"trial {top['trial_id']}: {c.rank_by} {format_value(top[c.rank_by]) or 'n/a'}, "
        f"test acc {format_value(top['test_acc_final']) or 'n/a'}%"
    )
    if c.groups is None:
        return f"Best setting: {setting} ({single})."
    g = c.groups.iloc[0]

    def mean_std(col: str) -> str:
        return format_mean_std(g[col + "_mean"], g[col + "_std"])

    return (
        f"Best setting: {setting} (best mean {c.rank_by} over {int(g['n'])} runs: "
        f"{mean_std(c.rank_by)}; test acc {mean_std('test_acc_final')}%). "
        f"Best single {single}."
    )


def format_text(comparison: Comparison) -> str:
    """The whole printed report: ranked table, best setting, correlation, groups."""
    c = comparison
    lines = [
        f"# {c.sweep.experiment}: {len(c.ranked)} trials, ranked by {c.rank_by}",
        "",
        markdown_table(c.ranked, display_columns(c), display_headers(c)),
        "",
    ]
    if len(c.ranked):
        lines.append(best_text(c))
    corr = c.correlation
    if corr["n"] >= 3 and corr["spearman"] == corr["spearman"]:
        caveat = correlation_caveat(corr["n"])
        lines.append(
            f"Spearman rank correlation of the objective with test accuracy over {corr['n']} "
            f"trials: {corr['spearman']:.2f} (n = {corr['n']})." + (f" {caveat}" if caveat else "")
        )
    else:
        lines.append(f"Spearman rank correlation: undefined ({corr['n']} trials with both values).")
    if "regret" in corr:
        lines.append(
            f"The objective picks a trial with {corr['picked_test']:.2f}% test accuracy; the best "
            f"trial on test has {corr['best_test']:.2f}% (regret {corr['regret']:.2f} points)."
        )
    if c.groups is not None:
        lines += [
            "",
            f"## Mean ± std per {grouping_label(c.group_by)} (trials that ran to the end; "
            "sample std, ddof=1)",
            "",
            markdown_table(groups_table(c.groups, c.group_by)),
        ]
    return "\n".join(lines)


def write_outputs(comparison: Comparison, out_dir: str | Path) -> list[Path]:
    """trials.csv / .parquet, history.parquet, groups.csv, summary.json under `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [
        out / "trials.csv",
        out / "trials.parquet",
        out / "history.parquet",
        out / "summary.json",
    ]
    comparison.ranked.to_csv(paths[0], index=False)
    comparison.ranked.to_parquet(paths[1], index=False)
    comparison.sweep.history.to_parquet(paths[2], index=False)
    paths[3].write_text(to_json(comparison.summary()) + "\n")
    if comparison.groups is not None:
        paths.append(out / "groups.csv")
        comparison.groups.to_csv(paths[-1], index=False)
    return paths


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """--experiment / --parent-run / --mlflow-uri, shared by compare, plots and report."""
    parser.add_argument("--experiment", help="MLflow experiment name (one per sweep)")
    parser.add_argument(
        "--parent-run", default=None, help="only the trials nested under this sweep run id"
    )
    parser.add_argument(
        "--mlflow-uri",
        "--tracking-uri",
        dest="tracking_uri",
        default=None,
        metavar="URI",
        help="MLflow store to read (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db in the current directory; never created when missing). "
        "--tracking-uri is an alias",
    )


def load_from_args(args: argparse.Namespace) -> Sweep:
    if not args.experiment and not args.parent_run:
        raise SystemExit("error: name the sweep with --experiment NAME (or --parent-run RUN_ID)")
    return load_sweep(
        args.experiment, parent_run_id=args.parent_run, tracking_uri=args.tracking_uri
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.compare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sweep_arguments(parser)
    parser.add_argument(
        "--out",
        default=None,
        help="folder for trials.csv/.parquet etc. (default: analysis-EXPERIMENT)",
    )
    parser.add_argument(
        "--group-by",
        action="append",
        default=None,
        metavar="PARAM",
        help="mean ± std per value of PARAM (repeatable; default: the searched "
        "params other than run.seed when seeds repeat)",
    )
    parser.add_argument(
        "--rank-by", default=OBJECTIVE, help=f"column to rank by, best first (default {OBJECTIVE})"
    )
    args = parser.parse_args(argv)
    try:
        sweep = load_from_args(args)
        comparison = compare(sweep, group_by=args.group_by, rank_by=args.rank_by)
    except (LookupError, KeyError, FileNotFoundError) as exc:
        print(f"compare: {exc}", file=sys.stderr)
        return 2
    print(format_text(comparison))
    out = Path(args.out) if args.out else Path(f"analysis-{sweep.experiment}")
    for path in write_outputs(comparison, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
