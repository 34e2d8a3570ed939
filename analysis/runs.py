"""Read a sweep back from MLflow into tidy pandas tables.

The MLflow layout is the contract of docs/architecture.md: one experiment per sweep, a parent run
tagged `dmx.role=sweep`, one nested run per trial tagged `dmx.role=trial` and `dmx.trial_id`,
params = the flat config (`dividemix.lambda_u`, ...), metrics per epoch with step = epoch.

`load_sweep` returns a `Sweep` with two tables:

- `trials`: one row per trial run. Identity columns (run_id, trial_id, run_name, status, ...),
  one column per flat param under its dotted key (typed: bool / int / float / str), and per-trial
  summaries of the metric histories (see `SUMMARY_COLUMNS`).
- `history`: long table (run_id, trial_id, metric, step, value, timestamp), one row per run,
  metric and step. A retried trial that logged an epoch twice keeps the LAST value logged for it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from mlflow import MlflowClient

from dmx.tracking import (
    CELL_TAG,
    CONFIG_TAG,
    FAILURE_TAG,
    GRID_TAG,
    PARENT_TAG,
    POINT_ELSEWHERE,
    PRESET_TAG,
    ROLE_TAG,
    SEED_TAG,
    STOPPED_TAG,
    TRIAL_TAG,
    read_client,
)

MIN_TRIALS_FOR_CORRELATION = 10
"""Below this many trials a rank correlation is mostly noise: shown with n and a caveat."""
OBJECTIVE = "val_acc_final"
"""The sweep objective column: noisy-validation accuracy (%) at the trial's last epoch."""
SEED_PARAM = "run.seed"
IDENTITY_COLUMNS = [
    "run_id",
    "trial_id",
    "run_name",
    "role",
    "status",
    "failure_reason",
    "parent_run_id",
    "preset",
    "cell",
    "seed",
    "config_id",
    "stopped_early",
    "start_time",
]
"""The columns of `Sweep.trials` that are not params or metric summaries (`outcome` and `rank`
are added after `status` and in front)."""

SUMMARY_COLUMNS = {
    "test_acc_final": "test accuracy (%) at the last epoch",
    "test_acc_best": "best test accuracy (%) over epochs",
    "test_acc_last10": "mean test accuracy (%) of the last (up to) 10 epochs",
    "val_acc_final": "noisy-validation accuracy (%) at the last epoch (the sweep objective)",
    "val_acc_best": "best noisy-validation accuracy (%) over epochs",
    "auc_final": "clean-detection ROC AUC at the end, mean of the two nets",
    "precision_final": "clean-detection precision (%) at the end, mean of the two nets",
    "recall_final": "clean-detection recall (%) at the end, mean of the two nets",
    "auc_net1_final": "... and per net (auc/precision/recall _net1/_net2 _final)",
    "labeled_final": "labelled-set size at the end, mean of the two nets' divisions",
    "epochs": "epochs run (largest logged step + 1)",
    "wall_seconds": "run wall time (end - start; last metric time for unfinished runs)",
    "train_seconds": "sum of epoch_seconds over the deduplicated epochs",
}

_INT = re.compile(r"^[+-]?\d+$")


# ---- small pure helpers ----------------------------------------------------------------------
def parse_param(text: str | None) -> Any:
    """An MLflow param string back to a Python value: True/False, int, float, None, else str.

    Lists (e.g. `[150]`) stay strings so that a table cell holds one scalar.
    """
    if text is None:
        return None
    s = str(text).strip()
    if s in ("True", "true"):
        return True
    if s in ("False", "false"):
        return False
    if s in ("None", "null"):
        return None
    if _INT.match(s):
        return int(s)
    try:
        value = float(s)
    except ValueError:
        return str(text)
    return value


def _typed_column(values: pd.Series) -> pd.Series:
    """One dtype per param column: bool, int64 (nullable), float64 or object (strings)."""
    present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not present:
        return values
    if all(isinstance(v, bool) for v in present):
        return values.astype("boolean")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return values.astype("Int64")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return values.astype("float64")
    return values.map(lambda v: v if v is None else str(v)).astype(object)


def dedup_history(history: pd.DataFrame) -> pd.DataFrame:
    """Keep one row per (run_id, metric, step): the last logged (latest timestamp; among equal
    timestamps the later row). Sorted by run_id, metric, step."""
    if history.empty:
        return history
    order = history.reset_index(drop=True)
    order["_row"] = np.arange(len(order))
    order = order.sort_values(["run_id", "metric", "step", "timestamp", "_row"], kind="stable")
    order = order.drop_duplicates(["run_id", "metric", "step"], keep="last")
    return order.drop(columns="_row").reset_index(drop=True)


def _finite(series: pd.Series) -> pd.Series:
    return series[np.isfinite(series.to_numpy(dtype=np.float64))]


def summarize_history(history: pd.DataFrame) -> pd.DataFrame:
    """Per-run summary columns (`SUMMARY_COLUMNS`) from a deduplicated long history.

    `final` is the last finite value (warmup epochs log nan clean-detection metrics)."""
    rows = []
    for run_id, run_hist in history.groupby("run_id", sort=False):
        per_metric = {m: g.sort_values("step") for m, g in run_hist.groupby("metric")}
        row: dict[str, Any] = {"run_id": run_id}

        def values(metric: str, per_metric: dict = per_metric) -> pd.Series:
            g = per_metric.get(metric)
            return pd.Series(dtype=float) if g is None else _finite(g["value"])

        def last(metric: str) -> float:
            v = values(metric)
            return float(v.iloc[-1]) if len(v) else float("nan")

        test = values("test_acc")
        row["test_acc_final"] = float(test.iloc[-1]) if len(test) else float("nan")
        row["test_acc_best"] = float(test.max()) if len(test) else float("nan")
        row["test_acc_last10"] = float(test.iloc[-10:].mean()) if len(test) else float("nan")
        val = values("val_acc")
        row["val_acc_final"] = float(val.iloc[-1]) if len(val) else float("nan")
        row["val_acc_best"] = float(val.max()) if len(val) else float("nan")
        for name in ("auc", "precision", "recall", "labeled"):
            per_net = [last(f"{name}_net{k}") for k in (1, 2)]
            row[f"{name}_net1_final"], row[f"{name}_net2_final"] = per_net
            finite = [v for v in per_net if math.isfinite(v)]
            row[f"{name}_final"] = float(np.mean(finite)) if finite else float("nan")
        row["epochs"] = int(run_hist["step"].max()) + 1
        secs = values("epoch_seconds")
        row["train_seconds"] = float(secs.sum()) if len(secs) else float("nan")
        row["_last_timestamp"] = int(run_hist["timestamp"].max())
        rows.append(row)
    return pd.DataFrame(rows)


def varying_params(trials: pd.DataFrame, params: Iterable[str]) -> list[str]:
    """The params that take more than one value across the trials (the searched ones)."""
    return [p for p in params if p in trials and trials[p].astype(str).nunique(dropna=False) > 1]


# ---- MLflow read-back -------------------------------------------------------------------------
@dataclass
class Sweep:
    """A sweep read back from MLflow (see the module docstring for the two tables)."""

    experiment: str
    experiment_id: str
    tracking_uri: str
    trials: pd.DataFrame
    history: pd.DataFrame
    params: list[str]
    """All flat param keys (columns of `trials`)."""
    searched: list[str]
    """Params that vary across trials (the search space, plus the seed when seeds repeat)."""
    parent_run_ids: list[str] = field(default_factory=list)
    """Runs tagged dmx.role=sweep in the experiment (where sweep-level plots are logged)."""
    sweep_tags: dict[str, str] = field(default_factory=dict)
    """Tags of the sweep run (the latest started one when there are several), e.g. dmx.grid."""

    @property
    def is_grid(self) -> bool:
        """A paper grid (`sweeps/paper.py`): the sweep run says so, or trials carry a cell."""
        tagged = self.sweep_tags.get(GRID_TAG, "").lower() == "true"
        return tagged or bool(self.trials["cell"].notna().any())


def _client(tracking_uri: str | None) -> tuple[MlflowClient, str]:
    """The store's client; the same default store as the writer, never created by reading
    (FileNotFoundError naming the store when it does not exist)."""
    return read_client(tracking_uri)


def _search_all(client, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string=filter_string, max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def load_sweep(
    experiment: str | None = None,
    *,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
    metrics: Sequence[str] | None = None,
    allow_empty: bool = False,
) -> Sweep:
    """Read every trial of an experiment (or of one sweep parent run) into a `Sweep`.

    Args:
        experiment: MLflow experiment name (one experiment per sweep). May be None when
            `parent_run_id` is given.
        parent_run_id: restrict to the nested runs of this sweep run.
        tracking_uri: MLflow tracking URI (default: MLFLOW_TRACKING_URI, else ./mlflow.db); a
            store that does not exist is a FileNotFoundError, never created.
        metrics: metric keys whose per-epoch history to read (default: every logged metric).
        allow_empty: return a `Sweep` with no trial rows (a sweep whose trials have not started)
            instead of raising.

    Trial runs are every run that is not a sweep parent (dmx.role=trial, or =train for
    standalone runs logged into the same experiment). Raises LookupError when nothing is found.
    """
    client, uri = _client(tracking_uri)
    if experiment is None and parent_run_id is None:
        raise ValueError("name an experiment or a sweep parent run.")
    if parent_run_id is not None:
        parent = client.get_run(parent_run_id)
        exp = client.get_experiment(parent.info.experiment_id)
    else:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            names = sorted(e.name for e in client.search_experiments())
            raise LookupError(
                f"No MLflow experiment named {experiment!r} in the store {uri}. Known: "
                f"{', '.join(names) or 'none'}. {POINT_ELSEWHERE}"
            )
    runs = _search_all(client, exp.experiment_id, "")
    sweep_runs = [r for r in runs if r.data.tags.get(ROLE_TAG) == "sweep"]
    parents = [r.info.run_id for r in sweep_runs]
    if parent_run_id is not None:
        runs = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent_run_id]
        parents = [parent_run_id]
        sweep_runs = [parent]
    runs = [r for r in runs if r.data.tags.get(ROLE_TAG) != "sweep"]
    if not runs and not allow_empty:
        raise LookupError(f"Experiment {exp.name!r} in the store {uri} holds no trial runs yet.")
    latest = max(sweep_runs, key=lambda r: r.info.start_time or 0, default=None)

    hist_rows = []
    for run in runs:
        keys = run.data.metrics.keys() if metrics is None else metrics
        for key in keys:
            for m in client.get_metric_history(run.info.run_id, key):
                hist_rows.append(
                    (run.info.run_id, key, int(m.step), float(m.value), int(m.timestamp))
                )
    history = dedup_history(
        pd.DataFrame(hist_rows, columns=["run_id", "metric", "step", "value", "timestamp"])
    )

    param_keys = sorted({k for r in runs for k in r.data.params})
    base = []
    for run in runs:
        tags = run.data.tags
        seed = tags.get(SEED_TAG, run.data.params.get(SEED_PARAM))
        base.append(
            {
                "run_id": run.info.run_id,
                "trial_id": tags.get(TRIAL_TAG, run.info.run_name),
                "run_name": run.info.run_name,
                "role": tags.get(ROLE_TAG, ""),
                "status": run.info.status,
                "failure_reason": tags.get(FAILURE_TAG),
                "parent_run_id": tags.get(PARENT_TAG),
                "preset": tags.get(PRESET_TAG),
                "cell": tags.get(CELL_TAG),  # a paper-grid trial's cell (its preset)
                "seed": parse_param(seed) if seed is not None else None,
                "config_id": tags.get(CONFIG_TAG),  # shared by a configuration's seeds
                # ASHA-stopped trials end FINISHED but carry this tag (dmx.sweep)
                "stopped_early": tags.get(STOPPED_TAG, "false") == "true",
                "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
                "_start_ms": run.info.start_time,
                "_end_ms": run.info.end_time,
                **{k: parse_param(run.data.params.get(k)) for k in param_keys},
            }
        )
    # A param named like an identity column (the flat config's `preset`) is one column: the
    # param's value, as the row dicts hold it.
    columns = dict.fromkeys([*IDENTITY_COLUMNS, "_start_ms", "_end_ms", *param_keys])
    trials = pd.DataFrame(base, columns=list(columns))
    trials["seed"] = trials["seed"].astype("Int64")
    for key in param_keys:
        trials[key] = _typed_column(trials[key])
    summary = (
        summarize_history(history)
        if not history.empty
        else pd.DataFrame({"run_id": pd.Series([], dtype=object)})
    )
    trials = trials.merge(summary, on="run_id", how="left")
    for col in SUMMARY_COLUMNS:
        if col not in trials and col != "auc_net1_final":
            trials[col] = np.nan
    end = trials["_end_ms"].where(trials["_end_ms"].notna(), trials.get("_last_timestamp"))
    trials["wall_seconds"] = ((end - trials["_start_ms"]) / 1000.0).astype("float64")
    trials["epochs"] = trials["epochs"].astype("Int64")  # nullable: a run may hold no metric yet
    trials = trials.drop(columns=[c for c in trials if c.startswith("_")])
    outcomes = [outcome(row) for _, row in trials.iterrows()]
    trials.insert(
        trials.columns.get_loc("status") + 1, "outcome", pd.Series(outcomes, dtype=object)
    )
    trial_ids = trials.set_index("run_id")["trial_id"]
    history.insert(1, "trial_id", history["run_id"].map(trial_ids))
    return Sweep(
        experiment=exp.name,
        experiment_id=exp.experiment_id,
        tracking_uri=uri,
        trials=rank_trials(trials),
        history=history,
        params=param_keys,
        searched=varying_params(trials, param_keys),
        parent_run_ids=parents,
        sweep_tags=dict(latest.data.tags) if latest is not None else {},
    )


def outcome(row: pd.Series) -> str:
    """How a trial ended, in words: "stopped early (ASHA)" for a FINISHED run that ASHA stopped
    (MLflow has no such status), else its status in lower case (finished, failed, killed,
    running)."""
    if row.get("stopped_early") and row.get("status") == "FINISHED":
        return "stopped early (ASHA)"
    return str(row.get("status", "")).lower()


def correlation_caveat(n: int) -> str:
    """ "" for `n` >= MIN_TRIALS_FOR_CORRELATION, else why a rank correlation over `n` trials
    says little (a Spearman of 1.00 over 3 trials happens by chance one time in six)."""
    if n >= MIN_TRIALS_FOR_CORRELATION:
        return ""
    chance = f" (with {n} trials a perfect ranking happens by chance 1 time in {math.factorial(n)})"
    return (
        f"Only {n} trials: a rank correlation over fewer than {MIN_TRIALS_FOR_CORRELATION} "
        f"trials says little{chance if 2 <= n <= 6 else ''}; run more trials before trusting it."
    )


# ---- comparisons -----------------------------------------------------------------------------
def rank_trials(trials: pd.DataFrame, *, by: str = OBJECTIVE) -> pd.DataFrame:
    """Trials sorted best-first by `by` (descending, nan last), with a 1-based `rank` column."""
    out = trials.sort_values(
        [by, "test_acc_last10"], ascending=False, na_position="last", kind="stable"
    )
    out = out.reset_index(drop=True)
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    if "rank" in trials:  # re-ranking an already ranked table
        out = out.loc[:, ~out.columns.duplicated()]
        out["rank"] = np.arange(1, len(out) + 1)
    return out


def objective_test_correlation(
    trials: pd.DataFrame, *, objective: str = OBJECTIVE, test: str = "test_acc_final"
) -> dict[str, float]:
    """Does the noisy-validation objective pick what the test set would have?

    Returns spearman (rank correlation across trials with both values; nan with < 3 trials or
    no variation), n, the test accuracy of the trial the objective picks, the best test accuracy
    of any trial, and their difference (regret, in accuracy points).
    """
    both = trials[[objective, test]].apply(pd.to_numeric, errors="coerce").dropna()
    out: dict[str, float] = {"n": int(len(both)), "spearman": float("nan")}
    if len(both) >= 3 and both[objective].nunique() > 1 and both[test].nunique() > 1:
        out["spearman"] = float(both[objective].corr(both[test], method="spearman"))
    if len(both):
        picked = both.loc[both[objective].idxmax(), test]
        out.update(picked_test=float(picked), best_test=float(both[test].max()))
        out["regret"] = out["best_test"] - out["picked_test"]
    return out


EPOCHS_PARAM = "run.epochs"
ACTIVE_STATUSES = ("RUNNING", "SCHEDULED")
"""MLflow statuses of a run that has not ended."""


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _all_epochs(row: pd.Series) -> bool:
    """The run logged every epoch of its `run.epochs` (true when that param is unknown)."""
    planned, done = row.get(EPOCHS_PARAM), row.get("epochs")
    return _missing(planned) or (not _missing(done) and int(done) >= int(planned))


def ran_to_the_end(trials: pd.DataFrame) -> pd.Series:
    """Per trial: FINISHED, not stopped early by ASHA, and every epoch of `run.epochs` logged. A
    failed, killed, running, stopped or incomplete trial ended mid-way: its final numbers would
    skew a mean."""
    complete = pd.Series([_all_epochs(row) for _, row in trials.iterrows()], index=trials.index)
    finished = (trials["status"] == "FINISHED") & ~trials["stopped_early"].astype(bool)
    return finished & complete.astype(bool)


def seed_label(row: pd.Series) -> str:
    """`seed 3` (the dmx.seed tag, else run.seed), else `trial t6`."""
    seed = row.get("seed")
    if _missing(seed):
        seed = row.get(SEED_PARAM)
    return f"trial {row.get('trial_id')}" if _missing(seed) else f"seed {seed}"


def not_counted_text(row: pd.Series) -> str:
    """Why a trial is left out of a mean: `seed 124 FAILED: reason`, `seed 2 running (6 of 12
    epochs done)`, `seed 5 stopped early (ASHA)`, `seed 7 incomplete: finished after 8 of 12
    epochs`."""
    status = str(row.get("status", ""))
    label = seed_label(row)
    planned, done = row.get(EPOCHS_PARAM), row.get("epochs")
    of = "" if _missing(planned) else f" of {int(planned)}"
    done = 0 if _missing(done) else int(done)
    if status in ("FAILED", "KILLED"):
        reason = row.get("failure_reason")
        return f"{label} {status}" + (f": {reason}" if isinstance(reason, str) and reason else "")
    if status in ACTIVE_STATUSES:
        return f"{label} running ({done}{of} epochs done)"
    if status == "FINISHED" and not row.get("stopped_early") and not _all_epochs(row):
        return f"{label} incomplete: finished after {done}{of} epochs"
    return f"{label} {row.get('outcome') or status.lower()}"


def group_summary(
    trials: pd.DataFrame,
    by: Sequence[str],
    *,
    columns: Sequence[str] = ("val_acc_final", "test_acc_final", "test_acc_last10", "auc_final"),
    counted: pd.Series | None = None,
) -> pd.DataFrame:
    """Mean, sample std (ddof=1) and count of `columns` per value of the params `by` (e.g. over
    seeds), sorted by the mean of the first column, best first. Column names: `<col>_mean`,
    `<col>_std`, `n`.

    `counted` (bool per trial, e.g. `ran_to_the_end(trials)`): the statistics and `n` use only
    the counted trials, and two more columns say what was left out: `runs` (all trials of the
    group) and `not_counted` (`seed 124 FAILED: reason; seed 2 running`, "" when none) — a
    failed seed is flagged, never averaged in silently. A group with no counted trial keeps its
    row (nan means, n = 0)."""
    missing = [b for b in by if b not in trials]
    if missing:
        raise KeyError(f"cannot group by {missing}: not a param of these trials")
    cols = [c for c in columns if c in trials]
    keys = list(by)
    mask = pd.Series(True, index=trials.index) if counted is None else counted.astype(bool)
    if "seed" in trials:  # name left-out trials in seed order
        trials = trials.sort_values("seed", kind="stable", na_position="last")
        mask = mask.reindex(trials.index)
    frame = trials[cols].where(mask, np.nan)  # left-out trials: nan, which mean / std skip
    frame[keys] = trials[keys]
    frame["_n"] = mask.astype(int)
    frame["_text"] = [
        "" if keep else not_counted_text(row)
        for keep, (_, row) in zip(mask, trials.iterrows(), strict=True)
    ]
    grouped = frame.groupby(keys, dropna=False)
    stats = grouped[cols].agg(["mean", "std"])
    stats.columns = [f"{c}_{s}" for c, s in stats.columns]
    stats["n"] = grouped["_n"].sum().astype(int)
    if counted is not None:
        stats["runs"] = grouped.size()
        stats["not_counted"] = grouped["_text"].agg(lambda t: "; ".join(x for x in t if x))
    stats = stats.reset_index()
    if cols:
        stats = stats.sort_values(f"{cols[0]}_mean", ascending=False, na_position="last")
    return stats.reset_index(drop=True)


def default_grouping(sweep: Sweep) -> list[str]:
    """How a sweep's trials group into configurations, or [] (nothing repeats).

    - A paper grid's trials (tagged `dmx.cell`): by `cell`, one group per cell over its seeds.
    - Trials tagged `dmx.config_id` (a configuration run with N seeds by Ray Tune's Repeater):
      by `config_id`, plus the searched params other than the seed that are constant within
      every configuration (so the table names each configuration's setting).
    - Else, when the seed varies and some setting repeats: by the searched params other than the
      seed."""
    rest = [p for p in sweep.searched if p != SEED_PARAM]
    trials = sweep.trials
    if trials["cell"].notna().any():
        return ["cell"]
    if "config_id" in trials and trials["config_id"].notna().any():
        per_config = trials.groupby("config_id", dropna=False)
        constant = [p for p in rest if (per_config[p].nunique(dropna=False) <= 1).all()]
        return ["config_id", *constant]
    if SEED_PARAM not in sweep.searched or not rest:
        return []
    repeats = trials.groupby(rest, dropna=False).size().max()
    return rest if repeats > 1 else []


def best_setting(
    trials: pd.DataFrame, params: Sequence[str], groups: pd.DataFrame | None = None
) -> dict[str, Any]:
    """The setting to use (JSON-friendly): the first row of `groups` (best mean objective over
    seeds) when given, else the searched-param values of the top-ranked trial."""
    if groups is not None and len(groups):
        top = groups.iloc[0]
        return {p: _plain(top[p]) for p in groups.columns if "." in p}
    if trials.empty:
        return {}
    top = trials.iloc[0]
    return {p: _plain(top[p]) for p in params if p in top}


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if value is pd.NA:
        return None
    return value


def format_value(value: Any, digits: int = 3) -> str:
    """A table cell: floats with 2 decimals (>= 1) or `digits` significant digits, nan blank."""
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.{digits}g}"
    return "" if value is None or value is pd.NA else str(value)


def format_mean_std(mean: Any, std: Any) -> str:
    """`66.50 ± 0.71` (2 decimals for values >= 1, else 3); a missing std (n = 1) shows `–`."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    decimals = 2 if abs(mean) >= 1 else 3
    missing = std is None or (isinstance(std, float) and math.isnan(std))
    return f"{mean:.{decimals}f} ± " + ("–" if missing else f"{std:.{decimals}f}")


def format_cell(column: str, value: Any) -> str:
    """`format_value`, except params (dotted columns) keep their plain value: 50, 0.8, 1e-05."""
    if "." in column and isinstance(value, (float, np.floating)) and not math.isnan(value):
        return f"{value:g}"
    return format_value(value)


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, default=_plain, sort_keys=True)


__all__ = [
    "ACTIVE_STATUSES",
    "EPOCHS_PARAM",
    "GRID_TAG",
    "IDENTITY_COLUMNS",
    "MIN_TRIALS_FOR_CORRELATION",
    "OBJECTIVE",
    "SUMMARY_COLUMNS",
    "correlation_caveat",
    "outcome",
    "Sweep",
    "best_setting",
    "dedup_history",
    "default_grouping",
    "group_summary",
    "load_sweep",
    "not_counted_text",
    "objective_test_correlation",
    "parse_param",
    "rank_trials",
    "ran_to_the_end",
    "seed_label",
    "summarize_history",
    "varying_params",
]
