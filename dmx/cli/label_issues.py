"""`dmx label-issues`: rank the training samples of a finished run by how likely their label is
wrong, and write the ranking as OUT.parquet + OUT.csv.

The ranking is `dmx.label_issues` (pure, arrays in); this module finds its input: the run's
`clean_probs.parquet` in a run directory, the file itself, an MLflow run's artifact, or (for a
run stopped before its end) computed from the newest checkpoint of a run or checkpoint folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dmx.label_issues import summarize_ranking, table_from_clean_probs
from dmx.reporting import CLEAN_PROBS_FILE, CONFIG_FILE


def load_clean_probs(source: str | Path, *, tracking_uri: str | None = None) -> pd.DataFrame:
    """clean_probs.parquet as a DataFrame from a run directory, the file itself, or an MLflow run
    (`RUN_ID` or `runs:/RUN_ID`; the artifact `clean_probs.parquet` is downloaded)."""
    path = Path(source).expanduser()
    if path.is_dir():
        file = path / CLEAN_PROBS_FILE
        if not file.is_file():
            file = _clean_probs_from_checkpoint(path)
        return pd.read_parquet(file)
    if path.is_file():
        return pd.read_parquet(path)
    run_id = str(source).removeprefix("runs:/").strip("/")
    if not run_id or "/" in run_id or "\\" in run_id:
        raise FileNotFoundError(
            f"{source} is neither a run directory, a parquet file, nor an MLflow run id."
        )
    from dmx.tracking import download_artifact  # MLflow: only for a run-id source

    try:
        return pd.read_parquet(download_artifact(run_id, CLEAN_PROBS_FILE, tracking_uri))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{run_id!r} is not a run directory, and {exc}") from None


def _clean_probs_from_checkpoint(path: Path) -> Path:
    """A run or checkpoint folder without clean_probs.parquet (a run stopped before its end, a
    sweep trial stopped early): compute the file from its newest checkpoint, next to it."""
    from dmx.state import list_checkpoints  # torch only on this path

    for folder in (path, path / "checkpoints"):
        if list_checkpoints(folder):
            from dmx.samples import sample_report_from_checkpoint

            print(
                f"{path} has no {CLEAN_PROBS_FILE}: computing it from the newest checkpoint in "
                f"{folder}",
                file=sys.stderr,
            )
            return sample_report_from_checkpoint(folder, path / CLEAN_PROBS_FILE)
    raise FileNotFoundError(
        f"{path} has neither {CLEAN_PROBS_FILE} nor a checkpoint to compute it from. Pass a "
        "`dmx train` run directory, a sweep trial's checkpoint_* folder, or the parquet file."
    )


def _run_p_threshold(source: str | Path, default: float = 0.5) -> float:
    """The run's own dividemix.p_threshold from RUN_DIR/config.json, else `default`."""
    config = Path(source).expanduser() / CONFIG_FILE
    try:
        return float(json.loads(config.read_text()).get("dividemix.p_threshold", default))
    except (OSError, ValueError, TypeError, AttributeError):
        return default


def _default_out(source: str | Path) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path / "label_issues.parquet"
    if path.is_file():
        return path.with_name("label_issues.parquet")
    return Path(f"label_issues-{str(source).removeprefix('runs:/').strip('/')[:12]}.parquet")


def run_label_issues(
    source: str | Path,
    *,
    top_k: int | None = None,
    out: str | Path | None = None,
    tracking_uri: str | None = None,
    p_threshold: float | None = None,
) -> tuple[pd.DataFrame, dict[str, float], list[Path]]:
    """Rank the samples of a finished run and write OUT.parquet and OUT.csv.

    `source` is a run directory, a clean_probs.parquet file, or an MLflow run id. The written
    table holds the first `top_k` rows of the ranking (all rows when None); the summary is
    computed on the whole ranking with K = top_k (or the flagged count). Returns (table written,
    summary, [parquet path, csv path]). `p_threshold` None takes the run's own
    `dividemix.p_threshold` from RUN_DIR/config.json when there is one, else 0.5.
    """
    if p_threshold is None:
        p_threshold = _run_p_threshold(source)
    table = table_from_clean_probs(
        load_clean_probs(source, tracking_uri=tracking_uri), p_threshold=p_threshold
    )
    summary = summarize_ranking(table, top_k=top_k)
    if top_k is not None:
        table = table.iloc[: int(top_k)].reset_index(drop=True)
    out_path = Path(out) if out is not None else _default_out(source)
    stem = out_path.with_suffix("") if out_path.suffix in (".parquet", ".csv") else out_path
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_name(stem.name + ".parquet"), stem.with_name(stem.name + ".csv")]
    table.to_parquet(paths[0], index=False)
    table.to_csv(paths[1], index=False)
    return table, summary, paths


def format_summary(summary: dict[str, float], paths: Sequence[Path] = ()) -> str:
    """Human-readable lines for a `summarize_ranking` dict."""
    lines = [
        f"{summary['n']} samples ranked; {summary['flagged']} flagged "
        f"(mean clean probability below the threshold)."
    ]
    if "num_wrong" in summary:
        k = summary["k"]
        lines += [
            f"true labels known: {summary['num_wrong']} wrong "
            f"({100 * summary['noise_rate']:.1f}%).",
            f"precision@{k} {summary['precision_at_k']:.3f}  "
            f"recall@{k} {summary['recall_at_k']:.3f}",
            f"precision@{summary['num_wrong']} (= recall there) "
            f"{summary['precision_at_num_wrong']:.3f}  average precision "
            f"{summary['average_precision']:.3f}  AUC {summary['auc']:.3f}",
        ]
    lines += [f"wrote {p}" for p in paths]
    return "\n".join(lines)


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register `label-issues` on an argparse subparsers object; the handler is `run_cli`."""
    p = subparsers.add_parser(
        "label-issues",
        help="rank the training samples of a finished run by how likely their label is wrong",
        description=(
            "Rank the samples of a finished run by 1 - mean clean probability of the two nets "
            "(ties: ensemble confidence in another label) and write OUT.parquet + OUT.csv. "
            "With true labels known, print precision@K, recall and average precision."
        ),
    )
    p.add_argument(
        "source",
        help="run directory, clean_probs.parquet, an MLflow run id, or a checkpoint folder (e.g. "
        "a sweep trial's checkpoint_*: clean_probs.parquet is computed from it first)",
    )
    p.add_argument(
        "--top",
        type=int,
        default=None,
        metavar="K",
        help="keep the K most suspect samples (default: all, ranked)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="output stem (.parquet/.csv added; default RUN_DIR/label_issues)",
    )
    p.add_argument(
        "--tracking-uri",
        "--mlflow-uri",
        dest="tracking_uri",
        default=None,
        metavar="URI",
        help="MLflow URI for a run-id SOURCE (default: $MLFLOW_TRACKING_URI)",
    )
    p.add_argument(
        "--p-threshold",
        type=float,
        default=None,
        metavar="P",
        help="flag samples whose mean clean probability is below P (default: the run's "
        "dividemix.p_threshold from RUN_DIR/config.json, else 0.5)",
    )
    p.set_defaults(func=run_cli)
    return p


def run_cli(args: argparse.Namespace) -> int:
    """Handler of `dmx label-issues`: writes the files, prints the summary, returns 0 (2 on a
    missing source)."""
    try:
        _, summary, paths = run_label_issues(
            args.source,
            top_k=args.top,
            out=args.out,
            tracking_uri=args.tracking_uri,
            p_threshold=args.p_threshold,
        )
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # RuntimeError: CheckpointError
        print(f"dmx label-issues: {exc}", file=sys.stderr)
        return 2
    print(format_summary(summary, paths))
    return 0


__all__ = ["add_cli", "format_summary", "load_clean_probs", "run_cli", "run_label_issues"]
