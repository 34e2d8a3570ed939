"""Plots of a sweep (matplotlib, PNG): accuracy curves, objective vs params, Optuna parameter
importances, the division's quality per epoch, and the per-sample loss histogram with its GMM.

Every plotting function takes tables (from `analysis.runs`) or arrays and returns a matplotlib
`Figure` built without pyplot (no global state, no display needed); `save_figure` writes it.
`make_sweep_plots` draws them all for a `Sweep`, `log_plots_to_mlflow` uploads them (through
`dmx.tracking`) under `plots/` of the sweep's run.

    python -m analysis.plots --experiment NAME --out DIR [--trial ID] [--log-to-mlflow]
    python -m analysis.plots --run-dir RUN_DIR --out DIR      # loss histogram only
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.runs import OBJECTIVE, Sweep
from dmx import tracking
from dmx.divide import GMMFit, fit_gmm
from dmx.reporting import CLEAN_PROBS_FILE, CONFIG_FILE

DPI = 110
MAX_LEGEND = 12  # more trials than this: no per-trial legend, lines coloured by objective rank


def short_name(param: str) -> str:
    """`dividemix.lambda_u` -> `lambda_u`."""
    return param.rsplit(".", 1)[-1]


def trial_label(row: pd.Series, params: Sequence[str]) -> str:
    """`trial_id (lambda_u=25, T=0.5)`."""
    settings = ", ".join(f"{short_name(p)}={_fmt(row[p])}" for p in params if p in row)
    return f"{row['trial_id']} ({settings})" if settings else str(row["trial_id"])


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.3g}"
    return str(value)


def save_figure(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _note_figure(title: str, note: str) -> Figure:
    """A small figure that says why a plot could not be drawn (kept in reports so the gap shows)."""
    fig = Figure(figsize=(6.4, 1.6))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, note, ha="center", va="center", wrap=True, fontsize=10)
    return fig


def _trial_colors(trials: pd.DataFrame) -> dict[str, Any]:
    """run_id -> colour: the best-ranked trial darkest (viridis over the ranking)."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    n = max(len(trials) - 1, 1)
    return {rid: cmap(0.85 * i / n) for i, rid in enumerate(trials["run_id"])}


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _curves(
    ax, history: pd.DataFrame, trials: pd.DataFrame, metric: str, params: Sequence[str]
) -> bool:
    colors = _trial_colors(trials)
    drawn = False
    for _, row in trials.iterrows():
        h = history[(history["run_id"] == row["run_id"]) & (history["metric"] == metric)]
        if h.empty:
            continue
        h = h.sort_values("step")
        ax.plot(
            h["step"],
            h["value"],
            color=colors[row["run_id"]],
            lw=1.4,
            marker="o" if len(h) < 3 else None,  # a one-epoch trial is a point, not a line
            label=trial_label(row, params),
        )
        drawn = True
    return drawn


def accuracy_curves(history: pd.DataFrame, trials: pd.DataFrame, params: Sequence[str]) -> Figure:
    """Test and noisy-validation accuracy per epoch, one line per trial (best-ranked darkest)."""
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=False)
    for ax, metric, title in (
        (axes[0], "test_acc", "Test accuracy (clean labels)"),
        (axes[1], "val_acc", "Validation accuracy (noisy labels, the objective)"),
    ):
        if not _curves(ax, history, trials, metric, params):
            ax.text(
                0.5, 0.5, f"no `{metric}` logged", ha="center", va="center", transform=ax.transAxes
            )
        ax.set_title(title)
        ax.set_xlabel("epoch")
        _integer_x(ax)
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
    _legend(fig, axes[0], len(trials))
    fig.suptitle("Accuracy per epoch, every trial")
    return fig


def _legend(fig: Figure, ax, n: int) -> None:
    if n <= MAX_LEGEND:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncols=min(n, 3), fontsize=8)
    else:
        ax.text(
            0.01,
            0.01,
            f"{n} trials; darker = better objective",
            transform=ax.transAxes,
            fontsize=8,
            va="bottom",
        )


def objective_vs_params(
    trials: pd.DataFrame, params: Sequence[str], *, objective: str = OBJECTIVE
) -> Figure:
    """Objective (and final test accuracy) against each searched param, one panel per param."""
    params = [p for p in params if p in trials]
    if not params:
        return _note_figure("Objective vs parameters", "No parameter varies across the trials.")
    cols = min(len(params), 3)
    rows = math.ceil(len(params) / cols)
    fig = Figure(figsize=(4.4 * cols, 3.6 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, param in zip(axes, params, strict=False):
        values = trials[param]
        numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
        if numeric:
            x = values.astype(float).to_numpy()
            if pd.api.types.is_integer_dtype(values):
                _integer_x(ax)
        else:  # categorical: positions with the values as tick labels
            cats = sorted(values.astype(str).unique())
            x = values.astype(str).map({c: i for i, c in enumerate(cats)}).to_numpy(float)
            ax.set_xticks(range(len(cats)), cats)
        ax.scatter(
            x, trials[objective], s=36, color="tab:blue", label="noisy-val accuracy (objective)"
        )
        if "test_acc_final" in trials:
            ax.scatter(
                x,
                trials["test_acc_final"],
                s=36,
                facecolors="none",
                edgecolors="tab:red",
                label="test accuracy (final)",
            )
        ax.set_xlabel(param)
        ax.set_ylabel("accuracy at last epoch (%)")
        ax.set_title(short_name(param))
        ax.grid(alpha=0.3)
    for ax in axes[len(params) :]:
        ax.set_axis_off()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=9)
    fig.suptitle("Objective against each searched parameter (one point per trial)")
    return fig


# ---- Optuna parameter importances --------------------------------------------------------------
def _distribution(values: pd.Series):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    present = values.dropna()
    if pd.api.types.is_bool_dtype(present) or not pd.api.types.is_numeric_dtype(present):
        return CategoricalDistribution(sorted({_choice(v) for v in present}, key=str)), _choice
    if pd.api.types.is_integer_dtype(present):
        return IntDistribution(int(present.min()), int(present.max())), int
    return FloatDistribution(float(present.min()), float(present.max())), float


def _choice(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    return value if isinstance(value, (int, float, str)) else str(value)


def param_importances(
    trials: pd.DataFrame, params: Sequence[str], *, objective: str = OBJECTIVE, seed: int = 0
) -> tuple[dict[str, float] | None, str]:
    """Optuna's fANOVA importances of `params` for `objective`, from a study rebuilt from the runs
    (`optuna.create_study` + `add_trial(create_trial(...))`). Returns (importances or None, note);
    the note says why importances are missing (fewer than 2 finished trials, no variation)."""
    import optuna

    params = [p for p in params if p in trials and trials[p].astype(str).nunique() > 1]
    done = trials.dropna(subset=[objective])
    if not params:
        return None, "No parameter varies across the trials: nothing to attribute the objective to."
    if len(done) < 2 or done[objective].nunique() < 2:
        return None, (
            f"Need at least 2 trials with different `{objective}` values "
            f"(have {len(done)}); importances are undefined."
        )
    dists = {p: _distribution(done[p]) for p in params}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for _, row in done.iterrows():
        values = {p: conv(row[p]) for p, (_, conv) in dists.items() if not pd.isna(row[p])}
        if len(values) != len(dists):
            continue
        study.add_trial(
            optuna.trial.create_trial(
                params=values,
                distributions={p: d for p, (d, _) in dists.items()},
                value=float(row[objective]),
            )
        )
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError) as exc:
        return None, f"Optuna could not compute importances: {exc}"
    return {k: float(v) for k, v in imp.items()}, (
        f"fANOVA over {len(study.trials)} trials, objective `{objective}`"
    )


def importance_plot(importances: dict[str, float] | None, note: str) -> Figure:
    """Horizontal bars of `param_importances` (or a note saying why there are none)."""
    title = "Parameter importances (Optuna fANOVA, objective: noisy-val accuracy)"
    if not importances:
        return _note_figure(title, note)
    names = list(importances)[::-1]
    fig = Figure(figsize=(7, 0.5 * len(names) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    ax.barh(names, [importances[n] for n in names], color="tab:purple", label="importance")
    ax.set_xlabel("importance (fraction of objective variance explained, sums to 1)")
    ax.set_xlim(0, 1)
    ax.set_title(title, fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    return fig


# ---- division quality per epoch ---------------------------------------------------------------
def division_curves(history: pd.DataFrame, trials: pd.DataFrame, params: Sequence[str]) -> Figure:
    """Labelled-set size and clean-detection precision / recall / AUC per epoch (mean of the two
    nets' divisions), one line per trial. Warmup epochs have no division and show as gaps."""
    fig = Figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    panels = (
        ("labeled", "Labelled-set size", "samples (mean of the 2 nets' divisions)"),
        ("precision", "Clean-detection precision", "precision (%: labelled & clean / labelled)"),
        ("recall", "Clean-detection recall", "recall (%: labelled & clean / clean)"),
        ("auc", "Clean-detection ROC AUC", "AUC of clean probability vs truth"),
    )
    colors = _trial_colors(trials)
    for ax, (name, title, ylabel) in zip(axes, panels, strict=True):
        wanted = {f"{name}_net1", f"{name}_net2"}
        sub = history[history["metric"].isin(wanted)]
        for _, row in trials.iterrows():
            h = sub[sub["run_id"] == row["run_id"]]
            if h.empty:
                continue
            mean = h.groupby("step")["value"].mean()
            ax.plot(
                mean.index,
                mean.to_numpy(),
                color=colors[row["run_id"]],
                lw=1.4,
                marker="o" if len(mean) < 3 else None,
                label=trial_label(row, params),
            )
        if sub.empty:
            ax.text(
                0.5,
                0.5,
                f"no `{name}_net1/2` logged",
                ha="center",
                va="center",
                transform=ax.transAxes,
            )
        ax.set_title(title)
        ax.set_xlabel("epoch")
        _integer_x(ax)
        ax.set_xlim(left=-0.2)  # keep the warmup epochs (no division yet) in view
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    _legend(fig, axes[0], len(trials))
    fig.suptitle("Quality of the co-divide per epoch (against the true labels)")
    return fig


# ---- per-sample loss histogram with the GMM --------------------------------------------------
def _normal_pdf(x: np.ndarray, mean: float, std: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))


def gmm_threshold(gmm: GMMFit, p_threshold: float) -> float | None:
    """The smallest loss in [0, 1] at which the clean posterior drops to `p_threshold` (the
    division boundary in loss units), or None when it never crosses there (or the fit is the
    point mass of degenerate input: no boundary)."""
    if not np.all(gmm.stds > 0):
        return None
    grid = np.linspace(0.0, 1.0, 4001)
    dens = [
        w * _normal_pdf(grid, m, s)
        for m, s, w in zip(gmm.means, gmm.stds, gmm.weights, strict=True)
    ]
    post = dens[0] / np.maximum(dens[0] + dens[1], 1e-300)
    below = np.flatnonzero((post <= p_threshold) & (grid >= gmm.means[0]))
    return float(grid[below[0]]) if below.size else None


def loss_histogram(
    losses: Any,
    *,
    given_labels: Any = None,
    true_labels: Any = None,
    p_threshold: float = 0.5,
    seed: int = 0,
    ax=None,
    title: str = "Per-sample loss and the fitted 2-component GMM",
) -> Figure:
    """Histogram of per-sample normalised losses (N,) with the two GMM components and the
    division threshold; clean (given == true) and noisy samples are stacked in two colours when
    `given_labels` and `true_labels` (N,) are known."""
    x = np.asarray(losses, dtype=np.float64)
    if ax is None:
        fig = Figure(figsize=(7, 4.2), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    bins = np.linspace(0.0, max(1.0, float(x.max(initial=1.0))), 51)
    if given_labels is not None and true_labels is not None:
        noisy = np.asarray(given_labels) != np.asarray(true_labels)
        ax.hist(
            [x[~noisy], x[noisy]],
            bins=bins,
            stacked=True,
            density=True,
            alpha=0.6,
            color=["tab:green", "tab:red"],
            label=[f"clean label ({(~noisy).sum()})", f"wrong label ({noisy.sum()})"],
        )
    else:
        ax.hist(
            x, bins=bins, density=True, alpha=0.6, color="tab:gray", label=f"samples ({x.size})"
        )
    gmm = fit_gmm(x, seed=seed)  # the division's own GMM (same settings as training)
    grid = np.linspace(bins[0], bins[-1], 400)
    for k, (name, color) in enumerate(
        (("clean component", "darkgreen"), ("noisy component", "darkred"))
    ):
        m, s, w = gmm.means[k], gmm.stds[k], gmm.weights[k]
        if not s > 0:  # degenerate input: a point mass, no curve to draw
            continue
        ax.plot(
            grid,
            w * _normal_pdf(grid, m, s),
            color=color,
            lw=2,
            label=f"GMM {name} (mean {m:.2f}, weight {w:.2f})",
        )
    thr = gmm_threshold(gmm, p_threshold)
    if thr is not None:
        ax.axvline(
            thr,
            color="black",
            ls="--",
            lw=1.5,
            label=f"threshold: clean prob = {p_threshold:g} at loss {thr:.2f}",
        )
    ax.set_xlabel("normalised per-sample cross-entropy (min-max scaled to [0, 1])")
    ax.set_ylabel("density (fraction of samples per unit loss)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def loss_histograms_from_frame(
    frame: pd.DataFrame, *, p_threshold: float = 0.5, seed: int = 0, title: str = ""
) -> Figure:
    """One `loss_histogram` per net from a per-sample table with `loss_net1` / `loss_net2`
    (clean_probs.parquet as `dmx.train` writes it), given_label and true_label."""
    nets = [c for c in ("loss_net1", "loss_net2") if c in frame]
    if not nets:
        return _note_figure(
            "Per-sample loss histogram",
            "This table has no per-sample losses (loss_net1 / loss_net2).",
        )
    fig = Figure(figsize=(6.4 * len(nets), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(nets)))
    truth = "true_label" in frame and bool((frame["true_label"] >= 0).all())
    for ax, col in zip(axes, nets, strict=True):
        loss_histogram(
            frame[col].to_numpy(),
            given_labels=frame["given_label"].to_numpy() if truth else None,
            true_labels=frame["true_label"].to_numpy() if truth else None,
            p_threshold=p_threshold,
            seed=seed,
            ax=ax,
            title=f"net {col[-1]}",
        )
    fig.suptitle(title or "Per-sample loss at the end of training with the fitted GMM")
    return fig


def load_sample_losses(source: str | Path) -> pd.DataFrame:
    """The final per-sample losses of a run: its `clean_probs.parquet` (columns index,
    given_label, true_label, loss_net1, loss_net2, ...), from the run directory or the file."""
    source = Path(source)
    return pd.read_parquet(source / CLEAN_PROBS_FILE if source.is_dir() else source)


# ---- everything for a sweep ----------------------------------------------------------------
def make_sweep_plots(
    sweep: Sweep,
    out_dir: str | Path,
    *,
    sample_frame: pd.DataFrame | None = None,
    sample_title: str = "",
    p_threshold: float = 0.5,
) -> tuple[dict[str, Path], dict[str, str]]:
    """Write every sweep plot as PNG under `out_dir`; returns ({name: path}, {name: note})."""
    out_dir = Path(out_dir)
    trials, params = sweep.trials, sweep.searched
    importances, imp_note = param_importances(trials, params)
    figures = {
        "accuracy_curves": accuracy_curves(sweep.history, trials, params),
        "objective_vs_params": objective_vs_params(trials, params),
        "param_importances": importance_plot(importances, imp_note),
        "division_quality": division_curves(sweep.history, trials, params),
    }
    notes = {"param_importances": imp_note}
    if sample_frame is not None:
        figures["loss_histogram"] = loss_histograms_from_frame(
            sample_frame, p_threshold=p_threshold, title=sample_title
        )
    paths = {name: save_figure(fig, out_dir / f"{name}.png") for name, fig in figures.items()}
    return paths, notes


def log_plots_to_mlflow(sweep: Sweep, paths: Sequence[Path]) -> tuple[str, list[str]]:
    """Upload files under `plots/` of the sweep's parent run (of its best trial when the
    experiment has no sweep run); the run's status is left alone. Returns (run id, artifacts)."""
    target = sweep.parent_run_ids[0] if sweep.parent_run_ids else sweep.trials.iloc[0]["run_id"]
    return target, tracking.log_files(sweep.tracking_uri, target, list(paths), "plots")


def sample_table_for(
    sweep: Sweep, trial_id: str | None = None, *, candidates: int = 3
) -> tuple[pd.Series | None, pd.DataFrame | None]:
    """(trial row, clean_probs frame) of trial `trial_id`, or of the best-ranked trial among the
    first `candidates` that logged clean_probs.parquet; (None, None) when there is none."""
    rows = sweep.trials
    if trial_id is not None:
        rows = rows[rows["trial_id"].astype(str) == str(trial_id)]
        if rows.empty:
            raise LookupError(f"no trial {trial_id!r} in experiment {sweep.experiment!r}")
    for _, row in rows.head(candidates).iterrows():
        try:
            path = tracking.download_artifact(row["run_id"], CLEAN_PROBS_FILE, sweep.tracking_uri)
            return row, pd.read_parquet(path)
        except FileNotFoundError:
            continue
    return None, None


def trial_p_threshold(row: pd.Series | None, default: float = 0.5) -> float:
    value = None if row is None else row.get("dividemix.p_threshold")
    return default if value is None or pd.isna(value) else float(value)


def main(argv: list[str] | None = None) -> int:
    from analysis.compare import add_sweep_arguments, load_from_args

    parser = argparse.ArgumentParser(
        prog="python -m analysis.plots",
        description="Write the sweep plots (or one run directory's loss histogram) as PNG.",
    )
    add_sweep_arguments(parser)
    parser.add_argument("--out", required=True, help="folder for the PNG files")
    parser.add_argument(
        "--trial",
        default=None,
        help="trial id of the loss histogram "
        "(default: the best trial that logged clean_probs.parquet)",
    )
    parser.add_argument(
        "--run-dir",
        default=None,
        help="instead of MLflow: draw the loss histogram of this run directory",
    )
    parser.add_argument(
        "--log-to-mlflow",
        action="store_true",
        help="upload the plots under plots/ of the sweep's parent run",
    )
    args = parser.parse_args(argv)
    if args.run_dir:
        run_dir = Path(args.run_dir)
        frame = load_sample_losses(run_dir)
        thr = 0.5
        if (run_dir / CONFIG_FILE).is_file():
            thr = float(
                json.loads((run_dir / CONFIG_FILE).read_text()).get("dividemix.p_threshold", 0.5)
            )
        fig = loss_histograms_from_frame(
            frame, p_threshold=thr, title=f"{run_dir.name}: per-sample loss with the fitted GMM"
        )
        print(f"wrote {save_figure(fig, Path(args.out) / 'loss_histogram.png')}")
        return 0
    try:
        sweep = load_from_args(args)
        row, frame = sample_table_for(sweep, args.trial)
    except (LookupError, FileNotFoundError) as exc:
        print(f"plots: {exc}", file=sys.stderr)
        return 2
    title = "" if row is None else f"Per-sample loss at the end of trial {row['trial_id']}"
    paths, notes = make_sweep_plots(
        sweep, args.out, sample_frame=frame, sample_title=title, p_threshold=trial_p_threshold(row)
    )
    for name, path in paths.items():
        print(f"wrote {path}" + (f"  ({notes[name]})" if name in notes else ""))
    if args.log_to_mlflow:
        target, logged = log_plots_to_mlflow(sweep, list(paths.values()))
        print(f"logged {len(logged)} plots under plots/ of run {target}")
    return 0


__all__ = [
    "accuracy_curves",
    "division_curves",
    "gmm_threshold",
    "importance_plot",
    "load_sample_losses",
    "log_plots_to_mlflow",
    "loss_histogram",
    "loss_histograms_from_frame",
    "make_sweep_plots",
    "objective_vs_params",
    "param_importances",
    "sample_table_for",
    "save_figure",
]


if __name__ == "__main__":
    raise SystemExit(main())
