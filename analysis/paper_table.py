"""The paper's results table from a paper grid, beside the paper's own numbers.

    python analysis/paper_table.py --experiment NAME [--mlflow-uri URI] [--out DIR]
    python -m analysis.paper_table --experiment NAME ...

A paper grid (`sweeps/paper.py --table cifar|clothing1m|webvision`) is one MLflow experiment: a
sweep run tagged `dmx.grid=true`, `dmx.grid_cells` (comma-separated preset names) and
`dmx.grid_seeds` (N), and one trial run per (cell, seed), tagged `dmx.cell` and `dmx.seed`.
Per seed this reads what the paper reports (Li, Socher, Hoi, ICLR 2020, section 4.1):

- CIFAR (Tables 1, 2): the best test accuracy over all epochs, and the mean test accuracy of the
  last 10 epochs (of the `test_acc` history; fewer when a run has fewer epochs);
- Clothing1M (Table 3): `final_test_acc`, the test accuracy of the ensemble of the two nets'
  best clean-validation checkpoints;
- WebVision (Table 4): top-1 / top-5 on the WebVision validation set and on ILSVRC12 at the last
  epoch (`final_test_acc` / `final_test_top5`, else `test_acc` / `test_top5`; `imagenet_acc`,
  `imagenet_top5`).

Per cell and number: mean ± sample std (ddof=1, as "mean ± std over runs" is usually meant) over
the seeds that FINISHED every epoch of `run.epochs`, n, the paper's number with its table / row
(`dmx.paper`), and the difference dmx − paper. A seed that failed, was killed, is still running
or finished fewer epochs is named in the cell's note ("n=1 of 2, seed 124 FAILED: reason") and
never averaged in; cells the grid names without runs yet are listed as "not started".

Writes DIR/paper_table.md (what it prints), DIR/paper_table.csv (one row per cell and number)
and DIR/paper_table_seeds.csv (one row per seed run: the numbers the means come from). The HTML
report (`analysis.report`) shows the same table for a grid through `paper_table()`.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.compare import add_sweep_arguments, markdown_table
from analysis.runs import (
    ACTIVE_STATUSES,
    EPOCHS_PARAM,
    Sweep,
    format_mean_std,
    load_sweep,
    not_counted_text,
    ran_to_the_end,
    seed_label,
)
from dmx.paper import PAPER_RESULTS, paper_result
from dmx.tracking import GRID_CELLS_TAG, GRID_SEEDS_TAG

STATUS_WORDS = ("done", "running", "failed", "incomplete", "not started")
"""A cell's status: done (every seed finished every epoch), else the comma-joined words that
apply: running (a seed runs, or fewer seeds have runs than the grid's dmx.grid_seeds), failed (a
seed FAILED or was KILLED), incomplete (a seed FINISHED before run.epochs), not started."""


@dataclass(frozen=True)
class Measure:
    """One number of the paper's tables and where a dmx run holds it."""

    key: str
    """The `dmx.paper.PaperResult` field it is compared with (best, last, top1, ...)."""
    label: str
    """The row label in the table."""
    source: tuple[str, ...]
    """`trials:<column>` (a `Sweep.trials` summary) or metric names whose LAST finite value
    counts, the first one a run logged wins."""


MEASURES: dict[str, tuple[Measure, ...]] = {
    "cifar": (
        Measure("best", "best", ("trials:test_acc_best",)),
        Measure("last", "last 10 (mean)", ("trials:test_acc_last10",)),
    ),
    "clothing1m": (Measure("top1", "top-1 (best-val ensemble)", ("final_test_acc",)),),
    "webvision": (
        Measure("top1", "WebVision top-1", ("final_test_acc", "test_acc")),
        Measure("top5", "WebVision top-5", ("final_test_top5", "test_top5")),
        Measure("ilsvrc_top1", "ILSVRC12 top-1", ("imagenet_acc",)),
        Measure("ilsvrc_top5", "ILSVRC12 top-5", ("imagenet_top5",)),
    ),
}
"""What is read per cell kind. Datasets other than Clothing1M and WebVision (CIFAR and any
synthetic-noise variant) are read the CIFAR way: best and last-10 of `test_acc`."""

ROW_COLUMNS = [
    "cell",
    "kind",
    "measure",
    "metric",
    "mean",
    "std",
    "n",
    "n_expected",
    "values",
    "paper",
    "diff",
    "paper_source",
    "status",
    "note",
]
"""Columns of `PaperTable.rows` (and paper_table.csv)."""
MEASURE_KEYS = list(dict.fromkeys(m.key for ms in MEASURES.values() for m in ms))
SEED_COLUMNS = [
    *("cell", "seed", "run_id", "trial_id", "status", "outcome", "failure_reason", "epochs"),
    *("epochs_planned", "complete", "counted", "not_counted", "runs_of_seed", "kind"),
    *MEASURE_KEYS,
]
"""Columns of `PaperTable.seeds` (and paper_table_seeds.csv): one row per (cell, seed)."""


@dataclass
class PaperTable:
    """A paper grid's results: `rows` one per (cell, number), `seeds` one per seed run."""

    experiment: str
    tracking_uri: str
    cells: list[str]
    expected_seeds: int | None
    """The grid's `dmx.grid_seeds` (else the most seeds any cell has)."""
    rows: pd.DataFrame
    seeds: pd.DataFrame
    notes: dict[str, str] = field(default_factory=dict)
    """Per cell, what is not averaged and why; only cells with something to say."""

    def status_counts(self) -> dict[str, int]:
        """Cells per status word, in STATUS_WORDS order (a cell may count under two: "running,
        failed"); words no cell has are left out."""
        per_cell = self.rows.drop_duplicates("cell")["status"].str.split(", ")
        counts = {w: int(sum(w in words for words in per_cell)) for w in STATUS_WORDS}
        return {w: n for w, n in counts.items() if n}


def cell_kind(cell: str, dataset: str | None) -> str:
    """`cifar`, `clothing1m` or `webvision`: from the paper's entry, else the runs' dataset."""
    result = paper_result(cell)
    name = result.dataset if result is not None else (dataset or "")
    return name if name in MEASURES else "cifar"


def last_values(history: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per run (index run_id) the last finite value (highest step) of each of `metrics`."""
    if history.empty:
        return pd.DataFrame(columns=metrics)
    h = history[history["metric"].isin(metrics)]
    h = h[np.isfinite(h["value"].to_numpy(dtype=np.float64))]
    last = h.sort_values("step").groupby(["run_id", "metric"])["value"].last().unstack()
    return last.reindex(columns=metrics)


def _read(measure: Measure, trial: pd.Series, last: pd.DataFrame) -> float:
    for source in measure.source:
        if source.startswith("trials:"):
            value = trial.get(source.split(":", 1)[1])
        elif trial["run_id"] in last.index:
            value = last.at[trial["run_id"], source]
        else:
            value = None
        if value is not None and value is not pd.NA and math.isfinite(float(value)):
            return float(value)
    return float("nan")


def _is_missing(value) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _seed_table(sweep: Sweep) -> pd.DataFrame:
    """One row per (cell, seed): the latest started run of each (an older attempt of the same
    seed is superseded), its status, completeness and every measure of its cell's kind."""
    trials = sweep.trials
    trials = trials[trials["cell"].notna()].copy()
    if trials.empty:
        return pd.DataFrame(columns=SEED_COLUMNS)
    trials = trials.sort_values("start_time", kind="stable")
    runs_per_seed = trials.groupby(["cell", "seed"], dropna=False)["run_id"].transform("size")
    trials["runs_of_seed"] = runs_per_seed
    trials = trials.drop_duplicates(["cell", "seed"], keep="last")
    metric_names = sorted(
        {s for ms in MEASURES.values() for m in ms for s in m.source if ":" not in s}
    )
    last = last_values(sweep.history, metric_names)
    if EPOCHS_PARAM not in trials:
        trials[EPOCHS_PARAM] = pd.NA
    trials["epochs_planned"] = trials[EPOCHS_PARAM].astype("Int64")
    trials["counted"] = ran_to_the_end(trials)
    trials["complete"] = trials["counted"] | (
        (trials["status"] != "FINISHED") | trials["stopped_early"].astype(bool)
    )  # false only for a run that FINISHED before its last epoch
    trials["not_counted"] = [
        "" if counted else not_counted_text(row)
        for counted, (_, row) in zip(trials["counted"], trials.iterrows(), strict=True)
    ]
    dataset = trials["data.dataset"] if "data.dataset" in trials else pd.Series(None, trials.index)
    trials["kind"] = [cell_kind(c, d) for c, d in zip(trials["cell"], dataset, strict=True)]
    for key in MEASURE_KEYS:
        trials[key] = np.nan
    for index, row in trials.iterrows():
        for measure in MEASURES[row["kind"]]:
            trials.at[index, measure.key] = _read(measure, row, last)
    return trials[SEED_COLUMNS].sort_values(["cell", "seed"]).reset_index(drop=True)


def _cell_order(grid_cells: list[str], seen: list[str]) -> list[str]:
    """The grid's own order, then other cells in the paper's order, then by name."""
    paper_order = {name: i for i, name in enumerate(PAPER_RESULTS)}
    rest = sorted(set(seen) - set(grid_cells), key=lambda c: (paper_order.get(c, 1e9), c))
    return [*grid_cells, *rest]


def _fmt(value: float, decimals: int = 2, *, sign: bool = False) -> str:
    if _is_missing(value):
        return ""
    return f"{value:+.{decimals}f}" if sign else f"{value:.{decimals}f}"


def paper_table(sweep: Sweep) -> PaperTable:
    """The table of a paper grid read back by `load_sweep` (also with no trial run yet)."""
    tags = sweep.sweep_tags
    grid_cells = [c.strip() for c in tags.get(GRID_CELLS_TAG, "").split(",") if c.strip()]
    seeds = _seed_table(sweep)
    cells = _cell_order(grid_cells, list(seeds["cell"].unique()))
    try:
        expected = int(tags[GRID_SEEDS_TAG])
    except (KeyError, ValueError):
        per_cell = seeds.groupby("cell")["seed"].nunique()
        expected = int(per_cell.max()) if len(per_cell) else None

    rows, notes = [], {}
    for cell in cells:
        runs = seeds[seeds["cell"] == cell]
        result = paper_result(cell)
        kind = runs["kind"].iloc[0] if len(runs) else cell_kind(cell, None)
        counted = runs[runs["counted"].astype(bool)]
        flags = []
        if runs.empty:
            flags.append("not started")
        elif (runs["status"].isin(ACTIVE_STATUSES)).any() or (expected and len(runs) < expected):
            flags.append("running")
        if (runs["status"].isin(("FAILED", "KILLED"))).any():
            flags.append("failed")
        if ((runs["status"] == "FINISHED") & ~runs["complete"].astype(bool)).any():
            flags.append("incomplete")
        status = ", ".join(flags) or "done"

        issues = [t for t in runs["not_counted"] if t]
        if expected and 0 < len(runs) < expected:
            missing = expected - len(runs)
            issues.append(f"{missing} seed{'s' * (missing > 1)} not started")
        issues += [
            f"{seed_label(r)}: {int(r['runs_of_seed'])} runs, the latest counted"
            for _, r in runs.iterrows()
            if r["runs_of_seed"] > 1
        ]
        for measure in MEASURES[kind]:
            lacking = counted[counted[measure.key].isna()]
            issues += [
                f"{seed_label(r)} logged no {measure.source[0]}" for _, r in lacking.iterrows()
            ]
        of = f" of {expected}" if expected else ""
        if issues:
            notes[cell] = f"n={len(counted)}{of}, " + "; ".join(issues)
        elif runs.empty:
            notes[cell] = "not started (no run yet)"

        for measure in MEASURES[kind]:
            values = counted[measure.key].dropna()
            mean = float(values.mean()) if len(values) else float("nan")
            std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            paper = result.numbers().get(measure.key) if result is not None else None
            paper = float("nan") if paper is None else paper
            rows.append(
                {
                    "cell": cell,
                    "kind": kind,
                    "measure": measure.key,
                    "metric": measure.label,
                    "mean": mean,
                    "std": std,
                    "n": int(len(values)),
                    "n_expected": expected,
                    "values": ";".join(_fmt(v) for v in values),
                    "paper": paper,
                    "diff": mean - paper,
                    "paper_source": result.source if result else "",
                    "status": status,
                    "note": notes.get(cell, ""),
                }
            )
    frame = pd.DataFrame(rows, columns=ROW_COLUMNS)
    return PaperTable(
        experiment=sweep.experiment,
        tracking_uri=sweep.tracking_uri,
        cells=cells,
        expected_seeds=expected,
        rows=frame.astype({"n": int}),
        seeds=seeds,
        notes=notes,
    )


RIGHT_ALIGNED = ("dmx (mean ± std)", "n", "paper", "Δ")
"""Columns of `display_frame` that hold numbers (as text): right-aligned in both renderings."""


def display_frame(table: PaperTable) -> pd.DataFrame:
    """The table as printed (strings): cell, number, dmx mean ± std, n, paper, Δ, status,
    source. The cell and its status and source are shown on its first row only."""
    rows = table.rows
    of = f" of {table.expected_seeds}" if table.expected_seeds else ""
    first = ~rows["cell"].duplicated()
    out = pd.DataFrame(
        {
            "cell": rows["cell"].where(first, ""),
            "number": rows["metric"],
            "dmx (mean ± std)": [
                format_mean_std(m, s) if n else ""
                for m, s, n in zip(rows["mean"], rows["std"], rows["n"], strict=True)
            ],
            "n": [f"{n}{of}" for n in rows["n"]],
            "paper": [
                _fmt(p, 1 if kind == "cifar" else 2) or "—"  # as the paper prints them
                for p, kind in zip(rows["paper"], rows["kind"], strict=True)
            ],
            "Δ": [_fmt(d, sign=True) for d in rows["diff"]],
            "status": rows["status"].where(first, ""),
            "paper source": rows["paper_source"].where(first, ""),
        }
    )
    return out.reset_index(drop=True)


def headline(table: PaperTable) -> str:
    """One sentence: how much of the grid has run."""
    seeds = table.seeds
    done = int(seeds["counted"].sum()) if len(seeds) else 0
    per = f" × {table.expected_seeds} seeds" if table.expected_seeds else ""
    total = len(table.cells) * table.expected_seeds if table.expected_seeds else len(seeds)
    counts = ", ".join(f"{v} {k}" for k, v in table.status_counts().items())
    return (
        f"{len(table.cells)} cells{per}: {done} of {total} seed runs finished every epoch "
        f"(cells: {counts})."
    )


EXPLANATION = (
    "Test accuracy in %. dmx: mean ± sample std (ddof=1) over the seeds that finished every "
    "epoch, n of the grid's seeds; a failed, killed, running or incomplete seed is named below, "
    "never averaged in. CIFAR: best over all epochs and mean of the last 10 epochs; Clothing1M: "
    "the ensemble of the best clean-validation checkpoints; WebVision: at the last epoch. "
    "Δ = dmx − paper, in points. Paper: Li, Socher, Hoi, ICLR 2020 (DivideMix)."
)


def format_markdown(table: PaperTable) -> str:
    lines = [
        f"# Paper table: {table.experiment}",
        "",
        headline(table),
        "",
        markdown_table(display_frame(table), right=RIGHT_ALIGNED),
        "",
        EXPLANATION,
    ]
    if table.notes:
        lines += ["", "Notes (what is not averaged, and why):", ""]
        lines += [f"- {cell}: {note}" for cell, note in table.notes.items()]
    return "\n".join(lines) + "\n"


def write_outputs(table: PaperTable, out_dir: str | Path) -> list[Path]:
    """paper_table.md, paper_table.csv (numbers per cell) and paper_table_seeds.csv."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "paper_table.md", out / "paper_table.csv", out / "paper_table_seeds.csv"]
    paths[0].write_text(format_markdown(table), encoding="utf-8")
    table.rows.to_csv(paths[1], index=False)
    table.seeds.to_csv(paths[2], index=False)
    return paths


def load_paper_table(
    experiment: str | None = None,
    *,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
) -> PaperTable:
    """Read a paper grid's experiment and build its table (LookupError when it is no grid)."""
    sweep = load_sweep(
        experiment, parent_run_id=parent_run_id, tracking_uri=tracking_uri, allow_empty=True
    )
    if not sweep.is_grid:
        raise LookupError(
            f"Experiment {sweep.experiment!r} is not a paper grid: its sweep run has no "
            f"dmx.grid=true tag and no trial carries dmx.cell (run one with sweeps/paper.py)."
        )
    return paper_table(sweep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python analysis/paper_table.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_sweep_arguments(parser)
    parser.add_argument(
        "--out",
        default=None,
        help="folder for paper_table.md / .csv / _seeds.csv (default: analysis-EXPERIMENT)",
    )
    args = parser.parse_args(argv)
    if not args.experiment and not args.parent_run:
        parser.error("name the grid with --experiment NAME (or --parent-run RUN_ID)")
    try:
        table = load_paper_table(
            args.experiment, parent_run_id=args.parent_run, tracking_uri=args.tracking_uri
        )
    except (LookupError, KeyError, FileNotFoundError) as exc:
        print(f"paper_table: {exc}", file=sys.stderr)
        return 2
    print(format_markdown(table), end="")
    out = Path(args.out) if args.out else Path(f"analysis-{table.experiment}")
    for path in write_outputs(table, out):
        print(f"wrote {path}")
    return 0


__all__ = [
    "MEASURES",
    "Measure",
    "PaperTable",
    "display_frame",
    "format_markdown",
    "load_paper_table",
    "main",
    "paper_table",
    "write_outputs",
]

if __name__ == "__main__":
    raise SystemExit(main())
