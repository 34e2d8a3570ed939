"""`dmx label-issues`: rank the training samples of a finished run by how likely their label is
wrong, and write the ranking as OUT.parquet + OUT.csv, with the confused class pairs in
OUT_pairs.csv; OUT is `label_issues` in the run's folder (never inside Ray's checkpoint folders).

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
import pyarrow as pa

from dmx.files import atomic_write_bytes, write_parquet_atomic
from dmx.label_issues import confused_pairs, summarize_ranking, table_from_clean_probs
from dmx.reporting import CHECKPOINT_DIR, CLEAN_PROBS_FILE, CONFIG_FILE
from dmx.sample_images import class_names


def run_folder(source: str | Path) -> Path | None:
    """The folder a source's outputs go to: the run itself, never Ray's checkpoint folders. A run
    directory is itself; its `checkpoints/` folder or a sweep trial's `checkpoint_*` folder gives
    the run (trial) folder holding it; a file gives its folder; an MLflow run id None."""
    path = Path(source).expanduser()
    if path.is_file():
        return path.parent
    if not path.is_dir():
        return None
    if path.name == CHECKPOINT_DIR or path.name.startswith("checkpoint_"):
        return path.parent
    return path


def load_clean_probs(source: str | Path, *, tracking_uri: str | None = None) -> pd.DataFrame:
    """clean_probs.parquet as a DataFrame from a run directory, the file itself, a checkpoint
    folder (computed from its newest checkpoint first, written next to the run), or an MLflow run
    (`RUN_ID` or `runs:/RUN_ID`; the artifact `clean_probs.parquet` is downloaded)."""
    path = Path(source).expanduser()
    if path.is_dir():
        file = path / CLEAN_PROBS_FILE
        if not file.is_file():
            file = _clean_probs_from_checkpoint(path)
        return pd.read_parquet(file)
    if path.is_file():
        return pd.read_parquet(path)
    run_id = _run_id(source)
    from dmx.tracking import download_artifact  # MLflow: only for a run-id source

    try:
        return pd.read_parquet(download_artifact(run_id, CLEAN_PROBS_FILE, tracking_uri))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{run_id!r} is not a run directory, and {exc}") from None


def _run_id(source: str | Path) -> str:
    run_id = str(source).removeprefix("runs:/").strip("/")
    if not run_id or "/" in run_id or "\\" in run_id:
        raise FileNotFoundError(
            f"{source} is neither a run directory, a parquet file, nor an MLflow run id."
        )
    return run_id


def _clean_probs_from_checkpoint(path: Path) -> Path:
    """A run or checkpoint folder without clean_probs.parquet (a run stopped before its end, a
    sweep trial stopped early): compute the file from its newest checkpoint, NEXT TO the run (the
    run directory, or the trial folder holding Ray's checkpoint_* folder; an existing one there
    is reused)."""
    from dmx.state import list_checkpoints  # torch only on this path

    out = (run_folder(path) or path) / CLEAN_PROBS_FILE
    for folder in (path, path / CHECKPOINT_DIR):
        if list_checkpoints(folder):
            if out.is_file() and out.stat().st_mtime >= _newest_mtime(folder):
                return out  # computed from this checkpoint before
            from dmx.samples import sample_report_from_checkpoint

            print(
                f"{path} has no {CLEAN_PROBS_FILE}: computing {out} from the newest checkpoint "
                f"in {folder}",
                file=sys.stderr,
            )
            return sample_report_from_checkpoint(folder, out)
    raise FileNotFoundError(
        f"{path} has neither {CLEAN_PROBS_FILE} nor a checkpoint to compute it from. Pass a "
        "`dmx train` run directory, a sweep trial's checkpoint_* folder, or the parquet file."
    )


def _newest_mtime(folder: Path) -> float:
    return max((f.stat().st_mtime for f in folder.glob("ckpt-*.pt")), default=0.0)


def run_config(source: str | Path, *, tracking_uri: str | None = None) -> dict[str, Any]:
    """The flat config of the run behind `source` ({} when none is found): RUN_DIR/config.json,
    the newest checkpoint's config (a sweep trial), or an MLflow run's params (as strings)."""
    folder = run_folder(source)
    if folder is not None:
        for candidate in (folder / CONFIG_FILE, Path(source).expanduser() / CONFIG_FILE):
            try:
                return dict(json.loads(candidate.read_text()))
            except (OSError, ValueError, TypeError):
                continue
        path = Path(source).expanduser()
        for ckpt in (path, path / CHECKPOINT_DIR):
            if ckpt.is_dir() and any(ckpt.glob("ckpt-*.pt")):
                from dmx.state import load_latest_checkpoint

                state = load_latest_checkpoint(ckpt)
                return dict(state.config) if state is not None else {}
        return {}
    from dmx.tracking import read_client

    try:
        client, _ = read_client(tracking_uri)
        return dict(client.get_run(_run_id(source)).data.params)
    except Exception:  # noqa: BLE001 - names are a convenience: the ranking stands without
        return {}


def output_stem(source: str | Path, out: str | Path | None = None) -> Path:
    """OUT without suffix: `--out`, else `label_issues` in the run's folder (`run_folder`), else
    (an MLflow run id) `./label_issues-RUNID12`."""
    if out is not None:
        out = Path(out)
        return out.with_suffix("") if out.suffix in (".parquet", ".csv") else out
    folder = run_folder(source)
    if folder is not None:
        return folder / "label_issues"
    return Path(f"label_issues-{_run_id(source)[:12]}")


def run_label_issues(
    source: str | Path,
    *,
    top_k: int | None = None,
    out: str | Path | None = None,
    tracking_uri: str | None = None,
    p_threshold: float | None = None,
) -> tuple[pd.DataFrame, dict[str, Any], list[Path]]:
    """Rank the samples of a finished run and write OUT.parquet, OUT.csv and OUT_pairs.csv.

    `source` is a run directory, a clean_probs.parquet file, a checkpoint folder or an MLflow run
    id. The written table holds the first `top_k` rows of the ranking (all rows when None), with
    class names beside the class indices when the run's dataset is known; OUT_pairs.csv is
    `confused_pairs` of the suspects. The summary is computed on the whole ranking with K =
    top_k (or the flagged count) and holds the 5 most confused pairs under "pairs". Returns
    (table written, summary, [parquet, csv, pairs csv]). `p_threshold` None takes the run's own
    `dividemix.p_threshold`, else 0.5. Outputs go next to the run (`output_stem`).
    """
    frame = load_clean_probs(source, tracking_uri=tracking_uri)
    config = run_config(source, tracking_uri=tracking_uri)
    if p_threshold is None:
        p_threshold = float(config.get("dividemix.p_threshold", 0.5))
    names = class_names(str(config.get("data.dataset", "")))
    table = table_from_clean_probs(frame, p_threshold=p_threshold, class_names=names)
    summary: dict[str, Any] = summarize_ranking(table, top_k=top_k)
    pairs = confused_pairs(table, top_k=top_k)
    summary["pairs"] = pairs.head(5).to_dict("records")
    if top_k is not None:
        table = table.iloc[: int(top_k)].reset_index(drop=True)
    stem = output_stem(source, out)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [
        stem.with_name(stem.name + ".parquet"),
        stem.with_name(stem.name + ".csv"),
        stem.with_name(stem.name + "_pairs.csv"),
    ]
    write_parquet_atomic(pa.Table.from_pandas(table, preserve_index=False), paths[0])
    atomic_write_bytes(paths[1], table.to_csv(index=False).encode())
    atomic_write_bytes(paths[2], pairs.to_csv(index=False).encode())
    return table, summary, paths


def format_summary(summary: dict[str, Any], paths: Sequence[Path] = ()) -> str:
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
    pairs = summary.get("pairs") or []
    if pairs:
        lines.append("most confused pairs among the suspects (given -> predicted: count):")
        for pair in pairs:
            given = pair.get("given_class") or pair["given_label"]
            pred = pair.get("pred_class") or pair["pred_label"]
            line = f"  {given} ({pair['given_label']}) -> {pred} ({pair['pred_label']}): "
            line += f"{pair['count']} ({pair['share']:.1f}%)"
            if "truly_wrong" in pair:
                line += f", {pair['truly_wrong']} truly wrong"
            lines.append(line)
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
        help="output stem (.parquet/.csv/_pairs.csv added; default: label_issues in the run's "
        "folder: RUN_DIR, or the trial folder of a checkpoint_* folder; ./label_issues-RUNID for "
        "an MLflow run id)",
    )
    p.add_argument(
        "--mlflow-uri",
        "--tracking-uri",
        dest="tracking_uri",
        default=None,
        metavar="URI",
        help="MLflow store of a run-id SOURCE (default: $MLFLOW_TRACKING_URI, else "
        "./mlflow.db; never created when missing); --tracking-uri is an alias",
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


__all__ = [
    "add_cli",
    "format_summary",
    "load_clean_probs",
    "output_stem",
    "run_cli",
    "run_config",
    "run_folder",
    "run_label_issues",
]
