"""analysis/: read-back from a real (small) MLflow store, compare CLI, plots, HTML report.

The store is written through dmx.tracking exactly as a sweep writes it: a sweep parent run and
nested trial runs (3 settings x 2 seeds) with per-epoch metrics, plus a retried trial whose old
attempt logged epochs that the retry logged again (written with the raw client, since
dmx.tracking itself never repeats a step) and a failed trial.
"""

from __future__ import annotations

import math
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mlflow")

from analysis import compare as compare_cli  # noqa: E402
from analysis import plots, report  # noqa: E402
from analysis.runs import (  # noqa: E402
    dedup_history,
    default_grouping,
    group_summary,
    load_sweep,
    objective_test_correlation,
    parse_param,
)

EPOCHS = 6
WARMUP = 2
SETTINGS = [(0.0, 0.5), (25.0, 0.5), (50.0, 0.8)]  # (lambda_u, p_threshold)
SEEDS = [1, 2]
EXPERIMENT = "digits-sweep"


def _metrics(lambda_u: float, seed: int, epoch: int) -> dict[str, float]:
    """Deterministic fake curves: larger lambda_u is better; the division starts after warmup."""
    val = 40.0 + lambda_u / 5 + seed + 3 * epoch
    m = {
        "epoch": epoch,
        "phase": float(epoch >= WARMUP),
        "test_acc": val + 2.0,
        "val_acc": val,
        "epoch_seconds": 1.5,
    }
    for k in (1, 2):
        div = epoch >= WARMUP
        m[f"labeled_net{k}"] = 600.0 + 10 * epoch + k if div else math.nan
        m[f"auc_net{k}"] = 0.8 + 0.01 * epoch + 0.001 * k if div else math.nan
        m[f"precision_net{k}"] = 90.0 if div else math.nan  # % (docs/architecture.md)
        m[f"recall_net{k}"] = 70.0 + k if div else math.nan
    return m


def _clean_probs_frame(n: int = 300, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 10, n)
    flipped = rng.random(n) < 0.4
    given = np.where(flipped, (true + rng.integers(1, 10, n)) % 10, true)
    loss = np.clip(
        np.where(flipped, rng.normal(0.7, 0.1, (2, n)), rng.normal(0.1, 0.05, (2, n))), 0, 1
    )
    return pd.DataFrame(
        {
            "index": np.arange(n),
            "given_label": given,
            "true_label": true,
            "clean_prob_net1": np.where(flipped, 0.05, 0.95),
            "clean_prob_net2": np.where(flipped, 0.1, 0.9),
            "pred_label": true,
            "pred_prob_given": np.where(flipped, 0.05, 0.9),
            "loss_net1": loss[0],
            "loss_net2": loss[1],
        }
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from mlflow import MlflowClient

    from dmx import tracking
    from dmx.config import Config

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    base = Config().with_overrides({"run.epochs": EPOCHS, "data.dataset": "digits"})
    sweep = tracking.start_sweep_run(
        uri,
        EXPERIMENT,
        sweep_name="s1",
        definition={"sweep.search.dividemix.lambda_u": "0:50"},
        base_config=base.to_flat(),
    )
    exp_id = sweep.experiment_id
    run_ids = {}
    files = root / "files"
    files.mkdir()
    for i, ((lam, thr), seed) in enumerate([(s, seed) for s in SETTINGS for seed in SEEDS]):
        cfg = base.with_overrides(
            {"dividemix.lambda_u": lam, "dividemix.p_threshold": thr, "run.seed": seed}
        )
        trial = tracking.start_trial_run(
            uri, exp_id, trial_id=f"t{i}", parent_run_id=sweep.run_id, flat_config=cfg.to_flat()
        )
        for epoch in range(EPOCHS if (lam, seed) != (0.0, 1) else EPOCHS - 2):
            trial.log_metrics(_metrics(lam, seed, epoch), step=epoch)
        if (lam, seed) == (0.0, 1):  # stopped by ASHA: FINISHED, tagged by the driver's callback
            trial.set_tags({"dmx.stopped_early": "true"})
        if (lam, seed) == (50.0, 2):  # the best trial carries the per-sample file
            _clean_probs_frame().to_parquet(files / "clean_probs.parquet")
            trial.log_artifact(files / "clean_probs.parquet")
        trial.finish()
        run_ids[f"t{i}"] = trial.run_id
    # t1 was retried: its first attempt had logged epochs 3-4 with other values before dying;
    # the retry logged them again (the old values must lose: keep the last value per step).
    client = MlflowClient(uri)
    for epoch in (3, 4):
        client.log_metric(run_ids["t1"], "test_acc", 10.0, step=epoch, timestamp=1)
    # a failed trial: 3 epochs only
    cfg = base.with_overrides(
        {"dividemix.lambda_u": 25.0, "dividemix.p_threshold": 0.5, "run.seed": 3}
    )
    failed = tracking.start_trial_run(
        uri, exp_id, trial_id="t6", parent_run_id=sweep.run_id, flat_config=cfg.to_flat()
    )
    for epoch in range(3):
        failed.log_metrics(_metrics(25.0, 3, epoch), step=epoch)
    failed.finish("FAILED", reason="RuntimeError: out of memory")
    sweep.finish()
    run_ids["t6"] = failed.run_id
    return {"uri": uri, "run_ids": run_ids, "parent": sweep.run_id, "root": root}


@pytest.fixture(scope="module")
def sweep(store):
    return load_sweep(EXPERIMENT, tracking_uri=store["uri"])


def test_parse_param():
    assert parse_param("True") is True and parse_param("25.0") == 25.0
    assert parse_param("3") == 3 and isinstance(parse_param("3"), int)
    assert parse_param("[150]") == "[150]" and parse_param("cifar10") == "cifar10"


def test_dedup_keeps_last_value_per_step():
    h = pd.DataFrame(
        {
            "run_id": ["a"] * 4,
            "metric": ["m"] * 4,
            "step": [0, 1, 1, 2],
            "value": [1.0, 2.0, 3.0, 4.0],
            "timestamp": [10, 20, 30, 40],
        }
    )
    assert dedup_history(h)["value"].tolist() == [1.0, 3.0, 4.0]
    # out of order in the input: the later timestamp still wins
    assert dedup_history(h.iloc[::-1])["value"].tolist() == [1.0, 3.0, 4.0]


def test_trial_table_matches_what_was_logged(sweep, store):
    t = sweep.trials.set_index("trial_id")
    assert len(t) == 7 and "s1" not in t.index  # the sweep parent is not a trial
    assert sweep.parent_run_ids == [store["parent"]]
    assert set(sweep.searched) == {"dividemix.lambda_u", "dividemix.p_threshold", "run.seed"}
    assert t["dividemix.lambda_u"].dtype == "float64" and t["run.seed"].dtype == "Int64"
    assert t.loc["t0", "data.dataset"] == "digits"
    assert t.loc["t5", "dividemix.lambda_u"] == 50.0 and t.loc["t5", "run.seed"] == 2

    last = _metrics(50.0, 2, EPOCHS - 1)
    assert t.loc["t5", "val_acc_final"] == last["val_acc"]
    assert t.loc["t5", "test_acc_final"] == last["test_acc"]
    assert t.loc["t5", "test_acc_best"] == last["test_acc"]
    tests = [_metrics(50.0, 2, e)["test_acc"] for e in range(EPOCHS)]
    assert t.loc["t5", "test_acc_last10"] == pytest.approx(np.mean(tests))
    assert t.loc["t5", "auc_net1_final"] == pytest.approx(last["auc_net1"])
    assert t.loc["t5", "auc_final"] == pytest.approx((last["auc_net1"] + last["auc_net2"]) / 2)
    assert t.loc["t5", "recall_final"] == pytest.approx(71.5)  # %
    assert t.loc["t5", "labeled_final"] == pytest.approx(600 + 10 * (EPOCHS - 1) + 1.5)
    assert t.loc["t5", "epochs"] == EPOCHS and t.loc["t5", "status"] == "FINISHED"
    assert t.loc["t5", "train_seconds"] == pytest.approx(1.5 * EPOCHS)
    assert t.loc["t5", "wall_seconds"] >= 0
    assert t.loc["t6", "status"] == "FAILED" and t.loc["t6", "epochs"] == 3
    assert t.loc["t6", "outcome"] == "failed" and t.loc["t5", "outcome"] == "finished"
    assert t.loc["t0", "status"] == "FINISHED" and t.loc["t0", "outcome"] == "stopped early (ASHA)"
    # ranked by the objective: t5 (lambda_u 50, seed 2) first
    assert sweep.trials.iloc[0]["trial_id"] == "t5" and sweep.trials["rank"].tolist() == list(
        range(1, 8)
    )


def test_retried_trial_history_is_deduplicated(sweep):
    h = sweep.history
    t1 = h[(h["trial_id"] == "t1") & (h["metric"] == "test_acc")]
    assert t1["step"].tolist() == list(range(EPOCHS))  # one row per epoch
    assert (t1["value"] != 10.0).all()  # the retry's values, not the dead attempt's
    assert not h.duplicated(["run_id", "metric", "step"]).any()
    assert set(h.columns) >= {"run_id", "trial_id", "metric", "step", "value"}


def test_grouping_and_correlation(sweep):
    assert default_grouping(sweep) == ["dividemix.lambda_u", "dividemix.p_threshold"]
    g = group_summary(sweep.trials, ["dividemix.lambda_u"])
    row = g[g["dividemix.lambda_u"] == 50.0].iloc[0]
    vals = [_metrics(50.0, s, EPOCHS - 1)["val_acc"] for s in SEEDS]
    assert row["n"] == 2 and row["val_acc_final_mean"] == pytest.approx(np.mean(vals))
    assert row["val_acc_final_std"] == pytest.approx(np.std(vals, ddof=1))
    corr = objective_test_correlation(sweep.trials)
    assert corr["spearman"] == pytest.approx(1.0) and corr["regret"] == 0.0


def test_groups_average_only_finished_trials_and_name_the_others(sweep):
    """A failed seed (t6) and an ASHA-stopped one (t0) are flagged in their group, not averaged."""
    groups = compare_cli.compare(sweep).groups
    g = groups.set_index(["dividemix.lambda_u", "dividemix.p_threshold"])
    assert g.loc[(25.0, 0.5), "runs"] == 3 and g.loc[(25.0, 0.5), "n"] == 2
    assert g.loc[(25.0, 0.5), "not_counted"] == "seed 3 FAILED: RuntimeError: out of memory"
    vals = [_metrics(25.0, s, EPOCHS - 1)["val_acc"] for s in SEEDS]  # seeds 1, 2 only
    assert g.loc[(25.0, 0.5), "val_acc_final_mean"] == pytest.approx(np.mean(vals))
    assert g.loc[(25.0, 0.5), "val_acc_final_std"] == pytest.approx(np.std(vals, ddof=1))
    assert g.loc[(0.0, 0.5), "n"] == 1 and g.loc[(0.0, 0.5), "runs"] == 2
    assert g.loc[(0.0, 0.5), "not_counted"] == "seed 1 stopped early (ASHA)"
    assert g.loc[(50.0, 0.8), "not_counted"] == "" and g.loc[(50.0, 0.8), "n"] == 2
    # without `counted` every trial is averaged (the plain statistics), as before
    plain = group_summary(sweep.trials, ["dividemix.lambda_u"]).set_index("dividemix.lambda_u")
    assert plain.loc[25.0, "n"] == 3 and "not_counted" not in plain


def test_compare_cli(store, tmp_path, capsys):
    code = compare_cli.main(
        ["--experiment", EXPERIMENT, "--mlflow-uri", store["uri"], "--out", str(tmp_path)]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert (
        "| rank" in out
        and "Best setting: dividemix.lambda_u=50, dividemix.p_threshold=0.8 (best mean" in out
    )
    assert (
        "Spearman rank correlation" in out
        and "Mean ± std per dividemix.lambda_u, dividemix.p_threshold (trials that ran" in out
    )
    assert "(n = 7). Only 7 trials" in out  # a correlation over 7 trials comes with a caveat
    assert "| not averaged" in out and "seed 3 FAILED: RuntimeError: out of memory" in out
    assert "stopped early (ASHA)" in out and "| outcome" in out
    table = pd.read_parquet(tmp_path / "trials.parquet")
    assert table["trial_id"].iloc[0] == "t5" and len(table) == 7
    assert pd.read_csv(tmp_path / "trials.csv")["trial_id"].iloc[0] == "t5"
    assert (tmp_path / "groups.csv").is_file() and (tmp_path / "summary.json").is_file()
    assert compare_cli.main(["--experiment", "nope", "--tracking-uri", store["uri"]]) == 2


def _is_png(path: Path) -> bool:
    return path.stat().st_size > 2000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report_dir(store, tmp_path_factory):
    """One report run (plots + HTML, logged to MLflow), shared by the tests that inspect it."""
    out = tmp_path_factory.mktemp("report")
    args = ["--experiment", EXPERIMENT, "--tracking-uri", store["uri"], "--out", str(out)]
    assert report.main([*args, "--log-to-mlflow"]) == 0
    return out


def test_plots_are_nonempty_images(report_dir):
    paths = {p.stem: p for p in (report_dir / "plots").glob("*.png")}
    assert set(paths) == {
        "accuracy_curves",
        "objective_vs_params",
        "param_importances",
        "division_quality",
        "loss_histogram",
    }
    assert all(_is_png(p) for p in paths.values())


def test_sample_plots_from_arrays(tmp_path):
    frame = _clean_probs_frame()
    fig = plots.loss_histogram(
        frame["loss_net1"], given_labels=frame["given_label"], true_labels=frame["true_label"]
    )
    assert _is_png(plots.save_figure(fig, tmp_path / "h.png"))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any("threshold" in x for x in labels) and any("wrong label" in x for x in labels)
    fig = plots.importance_plot(None, "Need at least 2 trials")
    assert _is_png(plots.save_figure(fig, tmp_path / "n.png"))


def test_param_importances_degrade_gracefully(sweep):
    imp, note = plots.param_importances(sweep.trials, sweep.searched)
    assert set(imp) == set(sweep.searched) and sum(imp.values()) == pytest.approx(1.0)
    assert max(imp, key=imp.get) == "dividemix.lambda_u"
    one_done = sweep.trials.iloc[:2].copy()
    one_done.loc[one_done.index[1], "val_acc_final"] = np.nan  # e.g. failed before validating
    none, note = plots.param_importances(one_done, sweep.searched)
    assert none is None and "at least 2 trials" in note
    none, note = plots.param_importances(sweep.trials.iloc[:1], sweep.searched)
    assert none is None and "No parameter varies" in note
    none, note = plots.param_importances(sweep.trials, [])
    assert none is None and "No parameter varies" in note


def test_loss_gmm_threshold_separates_the_modes():
    from dmx.divide import fit_gmm  # the plots draw the division's own GMM

    frame = _clean_probs_frame()
    gmm = fit_gmm(frame["loss_net1"], seed=0)
    assert gmm.means[0] < 0.2 < 0.6 < gmm.means[1]
    thr = plots.gmm_threshold(gmm, 0.5)
    assert 0.2 < thr < 0.6


def test_report_is_self_contained_and_well_formed(store, report_dir):
    html = (report_dir / "report.html").read_text()

    class Check(HTMLParser):
        def __init__(self):
            super().__init__()
            self.stack, self.ids, self.external, self.images = [], set(), [], 0

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag not in ("img", "meta", "br", "hr", "col", "link", "input"):
                self.stack.append(tag)
            if "id" in a:
                self.ids.add(a["id"])
            for key in ("src", "href"):
                v = a.get(key) or ""
                if v and not v.startswith(("data:", "#")):
                    self.external.append(v)
            if tag == "img":
                self.images += a.get("src", "").startswith("data:image/png;base64,")
            assert tag not in ("script", "link", "iframe")

        def handle_endtag(self, tag):
            assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
            self.stack.pop()

    check = Check()
    check.feed(html)
    check.close()
    assert html.startswith("<!DOCTYPE html>") and check.stack == []
    assert check.external == [] and "http://" not in html and "https://" not in html
    assert {"summary", "trials", "groups", "plots", "label-issues"} <= check.ids
    assert check.images >= 5 + 20  # 4 sweep plots, the loss histogram, 20 thumbnails
    assert html.count('class="thumb"') == 20  # the top suspects' digits, read from the data
    assert "t5" in html and "precision@" in html
    assert "Which class pairs are confused" in html and "<th>given_class</th>" in html
    assert "<th>pred_class</th>" in html and "<th>truly_wrong</th>" in html
    assert "Spearman(objective, test), n = 7" in html and "Only 7 trials" in html
    assert "agree well" not in html  # no verdict from 7 trials
    assert "1 stopped early (ASHA)" in html and "5 finished" in html
    # plots and the report were logged to the sweep's parent run
    from mlflow import MlflowClient

    client = MlflowClient(store["uri"])
    names = {a.path for a in client.list_artifacts(store["parent"], "plots")}
    assert "plots/accuracy_curves.png" in names and "plots/report.html" in names
    assert client.get_run(store["parent"]).info.status == "FINISHED"  # not reopened


def test_label_issues_from_mlflow_run(store, tmp_path):
    from dmx.cli.label_issues import run_label_issues

    table, summary, paths = run_label_issues(
        store["run_ids"]["t5"], top_k=10, out=tmp_path / "li", tracking_uri=store["uri"]
    )
    assert summary["precision_at_k"] == 1.0 and len(table) == 10 and paths[0].is_file()
    with pytest.raises(FileNotFoundError):
        run_label_issues(store["run_ids"]["t0"], tracking_uri=store["uri"])  # no artifact


def test_plots_cli_loss_histogram_from_run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    _clean_probs_frame().to_parquet(run / "clean_probs.parquet")
    (run / "config.json").write_text('{"dividemix.p_threshold": 0.6}')
    assert plots.main(["--run-dir", str(run), "--out", str(tmp_path / "png")]) == 0
    assert _is_png(tmp_path / "png" / "loss_histogram.png")


def test_readers_pointed_at_nothing_create_nothing_and_say_where_they_looked(
    tmp_path, capsys, monkeypatch
):
    from dmx.cli import main as dmx_main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert compare_cli.main(["--experiment", EXPERIMENT]) == 2
    err = capsys.readouterr().err
    assert f"No MLflow store at sqlite:///{tmp_path}/mlflow.db" in err and "--mlflow-uri" in err
    missing = tmp_path / "other" / "m.db"
    assert (
        report.main(["--experiment", "x", "--tracking-uri", f"sqlite:///{missing}", "--out", "r"])
        == 2
    )
    assert str(missing) in capsys.readouterr().err
    assert dmx_main(["label-issues", "0123456789abcdef0123456789abcdef"]) == 2
    assert "No MLflow store" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no mlflow.db, no folders
