"""What the MLflow UI shows: metric values as logged (rounded, one unit per kind, the objective
first), run names, the experiment's description and its saved view. Pure functions, no MLflow
calls: `runs.py` and the sweep driver write what these return.

How MLflow 3.17's UI decides what it shows (read from its bundled UI, mlflow/server/js/build):
- The experiment page's view (GenAI "Overview/Traces" or "Model training" with the runs table)
  follows the browser's workflow switch: the URL parameter `workflowType=machine_learning`, else
  the browser's saved choice (localStorage `mlflow.workflowType`), default GenAI. The experiment
  tag `mlflow.experimentKind` is no longer read for it. No server-side setting exists, so every
  link dmx prints carries `?workflowType=machine_learning` (`experiment_url`); a bare
  `http://127.0.0.1:5000` needs one click on the sidebar's "Model training" switch, once per
  browser.
- Columns, sort order, expanded parent runs and charts of the runs page are the browser's own
  state, except for a *saved view*: an experiment tag `mlflow.sharedViewState.<id>` holding
  `{name, createdAt, updatedAt, state}` (state: the page's state as JSON), listed under "Views"
  and opened by `#/experiments/<id>/runs?viewStateShareKey=<id>`. dmx writes one per sweep
  (`saved_view`).
- Compare's parallel-coordinates plot starts on the FIRST metric the runs hold (in the order they
  were first logged) and the 3 first varying params: `mlflow_metrics` puts the objective first,
  and system metrics start after the first epoch's metrics (`runs.SystemMetrics`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

OBJECTIVE = "val_acc"  # the sweep objective (dmx.sweep.driver.METRIC): first everywhere
NOT_METRICS = ("epoch", "phase")
"""Keys of the loop's metrics dict that are not MLflow metrics: `epoch` is the step, `phase` a
tag (`dmx.phase`) and derivable from the param `dividemix.warmup_epochs`."""
FIRST_METRICS = (OBJECTIVE, "test_acc", "best_test_acc", "last10_test_acc")
CHART_METRICS = (
    *FIRST_METRICS,
    "test_acc_net1",
    "test_acc_net2",
    "auc_net1",
    "auc_net2",
    "precision_net1",
    "precision_net2",
    "recall_net1",
    "recall_net2",
    "labeled_net1",
    "labeled_net2",
    "lx_net1",
    "lx_net2",
    "lu_net1",
    "lu_net2",
    "lambda_u_eff",
    "lr",
)
"""The charts of the saved view, in this order (the metric table of docs/architecture.md)."""
PHASES = {0: "warmup", 1: "dividemix"}
SHORT_PARAM_NAMES = {
    "dividemix.lambda_u": "λu",
    "dividemix.T": "T",
    "dividemix.p_threshold": "p",
    "dividemix.alpha": "α",
    "run.seed": "seed",
}
VIEW_ID = "dmx-sweep"  # the saved view's id (one per experiment, rewritten on resume)
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
DESCRIPTION_TAG = "mlflow.note.content"  # MLflow's description of an experiment or a run


# --------------------------------------------------------------------------------------------
# Metric values: one unit per kind, rounded to what is meaningful
# --------------------------------------------------------------------------------------------
def metric_decimals(key: str) -> int | None:
    """Decimals kept at logging for metric `key` (None: 4 significant digits).

    Units (docs/architecture.md, "Metric names"): accuracies, precision, recall and the noise
    rate in % of samples, 2 decimals (0.01 points: one sample in 10 000); AUC in [0, 1], 4
    decimals; set sizes and event flags are counts; seconds with 2 decimals, images/s with 1;
    losses, the learning rate and λu_eff with 4 significant digits."""
    if key.startswith(("labeled_", "empty_", "skipped_")) or key == "dm_epoch":
        return 0
    if "acc" in key or key.startswith(("precision_", "recall_")) or key == "noise_rate":
        return 2
    if key.startswith("auc_"):
        return 4
    if key == "epoch_seconds":
        return 2
    if key == "images_per_second":
        return 1
    return None


def round_metric(key: str, value: float) -> float:
    """`value` rounded for metric `key` (`metric_decimals`); NaN and inf unchanged."""
    value = float(value)
    if not math.isfinite(value):
        return value
    decimals = metric_decimals(key)
    if decimals is None:
        return float(f"{value:.4g}")
    return float(round(value, decimals))


def mlflow_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    """The loop's per-epoch metrics as MLflow gets them: without `epoch` / `phase`, rounded, the
    objective and the test accuracies first (MLflow keeps the order in which a run's metrics
    first appear, and Compare's plots start on the first)."""
    ordered = [k for k in FIRST_METRICS if k in metrics]
    ordered += [k for k in metrics if k not in FIRST_METRICS and k not in NOT_METRICS]
    return {k: round_metric(k, metrics[k]) for k in ordered}


def phase_name(metrics: Mapping[str, float]) -> str | None:
    """ "warmup" / "dividemix" from the loop's `phase` value (None when absent)."""
    phase = metrics.get("phase")
    return None if phase is None else PHASES.get(int(phase), str(phase))


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------
def short_param(key: str) -> str:
    """`dividemix.lambda_u` -> `λu`; other keys by their last dotted part."""
    return SHORT_PARAM_NAMES.get(key, key.rsplit(".", 1)[-1])


def format_param(value: Any) -> str:
    """A param value in a run name: floats with 3 significant digits, others as they are."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def trial_run_name(params: Mapping[str, Any], searched: Sequence[str]) -> str:
    """`λu=25 T=0.5 p=0.5`: the trial's values of the searched keys, in their order (a searched
    `run.seed` shows as `seed=N`). Empty when nothing is searched."""
    return " ".join(f"{short_param(k)}={format_param(params[k])}" for k in searched if k in params)


# --------------------------------------------------------------------------------------------
# The experiment page
# --------------------------------------------------------------------------------------------
def experiment_url(base: str, experiment_id: str, *, view: str | None = VIEW_ID) -> str:
    """The runs page of an experiment in the "Model training" view (and the saved view)."""
    query = "workflowType=machine_learning" + (f"&viewStateShareKey={view}" if view else "")
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


def compare_url(base: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """MLflow's Compare page of `run_ids` (what "Compare" on selected runs opens), in the
    "Model training" view."""
    runs = json.dumps(list(run_ids), separators=(",", ":"))
    exps = json.dumps([experiment_id], separators=(",", ":"))
    query = f"runs={runs}&experiments={exps}&workflowType=machine_learning"
    return f"{base.rstrip('/')}/#/compare-runs?{query}"


def _column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # MLflow's column / sort key


def _line_chart(metric: str, section: str, uuid: str) -> dict[str, Any]:
    return {
        "uuid": uuid,
        "type": "LINE",
        "runsCountToCompare": 100,
        "metricSectionId": section,
        "deleted": False,
        "isGenerated": True,
        "displayName": metric,
        "metricKey": metric,
        "lineSmoothness": 0,
        "xAxisScaleType": "linear",
        "scaleType": "linear",
        "range": {},
        "xAxisKey": "step",
        "selectedXAxisMetricKey": "",
        "yAxisKey": "metric",
        "yAxisExpressions": [],
        "ignoreOutliers": False,
        "useGlobalXaxisKey": True,
        "useGlobalLineSmoothing": True,
    }


def view_state(
    *,
    searched: Sequence[str],
    metrics: Iterable[str],
    parent_run_id: str = "",
) -> dict[str, Any]:
    """The runs page's state dmx saves for a sweep: the trials listed under their (expanded)
    parent, sorted best objective first, with the objective, the test accuracy and the searched
    params as columns; charts: a parallel-coordinates plot of the searched params against the
    objective, then one line chart per metric, the objective first."""
    section = "dmx-model-metrics"
    charts: list[dict[str, Any]] = [
        {
            "uuid": "dmx-parallel",
            "type": "PARALLEL",
            "runsCountToCompare": 100,
            "metricSectionId": section,
            "deleted": False,
            "isGenerated": True,
            "displayName": f"{OBJECTIVE} against the searched params",
            "selectedParams": list(searched),
            "selectedMetrics": [OBJECTIVE],
            "showAllRuns": True,
        }
    ]
    ordered = [m for m in FIRST_METRICS if m in metrics or m == OBJECTIVE]
    ordered += [m for m in metrics if m not in ordered and not m.startswith("system/")]
    charts += [_line_chart(m, section, f"dmx-line-{i}") for i, m in enumerate(ordered)]
    return {
        "searchFilter": "",
        "orderByKey": _column("metrics", OBJECTIVE),
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        # The objective, the test accuracy and the searched params; MLflow's default Source,
        # Models and Dataset columns are left out so that these fit on the screen.
        "selectedColumns": [
            _column("metrics", OBJECTIVE),
            _column("metrics", "test_acc"),
            *(_column("params", k) for k in searched),
        ],
        "columnOrder": [],
        "columnWidths": {},
        "runsExpanded": {parent_run_id: True} if parent_run_id else {},
        "runsHiddenMode": "SHOW_ALL",
        "compareRunCharts": charts,
        "compareRunSections": [
            {
                "uuid": section,
                "name": "Model metrics",
                "display": True,
                "isReordered": True,  # keep this order; new metrics are appended
                "deleted": False,
                "isGenerated": True,
            },
            {
                "uuid": "dmx-system-metrics",
                "name": "System metrics",
                "display": True,
                "isReordered": False,
                "deleted": False,
                "isGenerated": True,
            },
        ],
        "viewMaximized": False,
        "runListHidden": False,
        "isAccordionReordered": False,
        "useGroupedValuesInCharts": True,
        "hideEmptyCharts": True,
        "groupBy": None,
        "groupsExpanded": {},
        "globalLineChartConfig": {"xAxisKey": "step", "lineSmoothness": 0},
    }


def saved_view(
    name: str, state: Mapping[str, Any], *, created_ms: int, view_id: str = VIEW_ID
) -> tuple[str, str]:
    """(experiment tag key, value) of a saved runs-page view named `name` (MLflow's envelope:
    name, createdAt, updatedAt in ms, state as a JSON string)."""
    envelope = {
        "name": name,
        "createdAt": int(created_ms),
        "updatedAt": int(created_ms),
        "state": json.dumps(dict(state), separators=(",", ":")),
    }
    return VIEW_TAG_PREFIX + view_id, json.dumps(envelope, separators=(",", ":"))


def sweep_description(
    *,
    name: str,
    preset: str,
    searched: Mapping[str, str],
    scheduler: str,
    num_samples: int,
    best: Mapping[str, Any] | None = None,
) -> str:
    """Markdown shown as the description of the sweep's experiment and parent run."""
    space = ", ".join(f"`{k}` ∈ {v}" for k, v in searched.items()) or "nothing"
    lines = [
        f"**dmx sweep `{name}`**: DivideMix, preset `{preset or 'none'}`, {num_samples} trials.",
        "",
        f"- Objective: `{OBJECTIVE}` (max), accuracy (%) on the held-out split of the NOISY "
        "training labels; `test_acc` is logged beside it, never used for selection.",
        f"- Search (Optuna TPE, the preset's values first): {space}.",
        f"- Early stopping: {scheduler}.",
        "- Runs: the parent run holds the sweep's definition; one nested run per trial, named by "
        "its searched values. Units: accuracy, precision, recall, noise rate in %; AUC in [0, 1].",
    ]
    if best:
        values = " ".join(f"{short_param(k)}={format_param(v)}" for k, v in best["params"].items())
        lines.append(
            f"- Best trial: `{best['trial_id']}` ({values}), {OBJECTIVE} "
            f"{best['metrics'].get(OBJECTIVE, float('nan')):.2f}%, test_acc "
            f"{best['metrics'].get('test_acc', float('nan')):.2f}%."
        )
    return "\n".join(lines)


__all__ = [
    "CHART_METRICS",
    "DESCRIPTION_TAG",
    "FIRST_METRICS",
    "NOT_METRICS",
    "OBJECTIVE",
    "VIEW_ID",
    "compare_url",
    "experiment_url",
    "metric_decimals",
    "mlflow_metrics",
    "phase_name",
    "round_metric",
    "saved_view",
    "short_param",
    "sweep_description",
    "trial_run_name",
    "view_state",
]
