"""analysis.paper_table, the report's "Paper table" section, and compare's grouping of seeds.

The MLflow stores are written with the raw MlflowClient exactly as the paper grid's contract
says a grid looks (a sweep run tagged dmx.grid / dmx.grid_cells / dmx.grid_seeds, one trial run
per (cell, seed) tagged dmx.cell / dmx.seed, metrics with step = epoch): no Ray, no training.
Expected numbers are computed here by hand from the logged histories (statistics.stdev is the
sample std, ddof=1).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mlflow")

from analysis import compare as compare_cli  # noqa: E402
from analysis import paper_table, report  # noqa: E402
from analysis.runs import load_sweep  # noqa: E402
from dmx.paper import PAPER_RESULTS  # noqa: E402
from dmx.tracking import CELL_TAG, SEED_TAG  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 12  # more than 10: "last 10" is not "all epochs"
SEEDS = (123, 124)
GRID = "paper-cifar"
REAL = "paper-real"
REPEATS = "asym-seeds"
CIFAR_CELLS = [
    "cifar10-sym-0.5",  # 2 seeds finished
    "cifar100-sym-0.9",  # 2 seeds finished (seed 124 after a failed first attempt)
    "cifar10-asym-0.4",  # seed 124 FAILED
    "cifar10-sym-0.9",  # seed 123 running, seed 124 finished 8 of 12 epochs
    "cifar10-sym-0.2",  # not started
]
FAIL_REASON = "NonFiniteLossError: Non-finite loss at epoch 4 (lx)"


def _curve(cell: str, seed: int, epochs: int = EPOCHS) -> list[float]:
    """A test-accuracy history (%) that rises, peaks and falls a little: best != last, and the
    last 10 epochs != all epochs. Rounded to 2 decimals, as dmx logs accuracy."""
    rng = np.random.default_rng([len(cell), seed])
    base = 40.0 + 3 * CIFAR_CELLS.index(cell) if cell in CIFAR_CELLS else 50.0
    e = np.arange(epochs)
    values = base + 4 * e - 0.25 * e**2 + rng.normal(0, 0.5, epochs) + (seed - 123)
    return [round(float(v), 2) for v in values]


class Writer:
    """MLflow runs as the paper grid writes them, through the raw client."""

    def __init__(self, uri: str):
        from mlflow import MlflowClient

        self.client = MlflowClient(uri)
        self.clock = 1_700_000_000_000

    def tick(self) -> int:
        self.clock += 1000
        return self.clock

    def experiment(self, name: str, *, cells: list[str] | None, seeds: int | None) -> tuple:
        exp_id = self.client.create_experiment(name)
        tags = {"dmx.role": "sweep"}
        if cells is not None:
            tags |= {"dmx.grid": "true", "dmx.grid_cells": ",".join(cells)}
            tags["dmx.grid_seeds"] = str(seeds)
        parent = self.client.create_run(exp_id, start_time=self.tick(), tags=tags, run_name=name)
        return exp_id, parent.info.run_id

    def trial(
        self,
        exp_id: str,
        parent: str,
        *,
        params: dict,
        tags: dict,
        history: dict[str, list[float]],
        status: str = "FINISHED",
        reason: str | None = None,
    ) -> str:
        from mlflow.entities import Metric, Param

        tags = {"dmx.role": "trial", "mlflow.parentRunId": parent, **tags}
        run = self.client.create_run(exp_id, start_time=self.tick(), tags=tags)
        rid = run.info.run_id
        metrics = [
            Metric(key, value, self.tick(), step)
            for key, values in history.items()
            for step, value in enumerate(values)
            if value is not None
        ]
        params = [Param(k, str(v)) for k, v in params.items()]
        self.client.log_batch(rid, metrics=metrics, params=params)
        if reason is not None:
            self.client.set_tag(rid, "dmx.failure_reason", reason)
        if status != "RUNNING":
            self.client.set_terminated(rid, status, end_time=self.tick())
        return rid


def _cifar_history(cell: str, seed: int, epochs: int) -> dict[str, list[float]]:
    test = _curve(cell, seed)[:epochs]
    return {
        "test_acc": test,
        # the running summaries the trial also logs (not what the table reads)
        "best_test_acc": [max(test[: e + 1]) for e in range(epochs)],
        "last10_test_acc": [statistics.mean(test[max(0, e - 9) : e + 1]) for e in range(epochs)],
        "epoch_seconds": [1.0] * epochs,
    }


def _grid_trial(w, exp_id, parent, cell, seed, *, epochs=EPOCHS, **kwargs) -> str:
    dataset = cell.split("-")[0]
    return w.trial(
        exp_id,
        parent,
        params={"run.epochs": EPOCHS, "run.seed": seed, "data.dataset": dataset},
        tags={
            CELL_TAG: cell,
            SEED_TAG: str(seed),
            "dmx.preset": cell,
            "dmx.trial_id": f"{cell}-s{seed}",
        },
        history=_cifar_history(cell, seed, epochs),
        **kwargs,
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    w = Writer(uri)

    # ---- a CIFAR grid, part-way through ----------------------------------------------------
    exp, parent = w.experiment(GRID, cells=CIFAR_CELLS, seeds=len(SEEDS))
    for seed in SEEDS:
        _grid_trial(w, exp, parent, "cifar10-sym-0.5", seed)
    _grid_trial(w, exp, parent, "cifar100-sym-0.9", 123)
    _grid_trial(  # a first attempt of seed 124 that died; the grid ran the seed again
        w, exp, parent, "cifar100-sym-0.9", 124, epochs=3, status="FAILED", reason="lost node"
    )
    _grid_trial(w, exp, parent, "cifar100-sym-0.9", 124)
    _grid_trial(w, exp, parent, "cifar10-asym-0.4", 123)
    _grid_trial(
        w, exp, parent, "cifar10-asym-0.4", 124, epochs=5, status="FAILED", reason=FAIL_REASON
    )
    _grid_trial(w, exp, parent, "cifar10-sym-0.9", 123, epochs=6, status="RUNNING")
    _grid_trial(w, exp, parent, "cifar10-sym-0.9", 124, epochs=8)  # FINISHED after 8 of 12

    # ---- Clothing1M and WebVision cells -----------------------------------------------------
    exp, parent = w.experiment(REAL, cells=["clothing1m", "webvision-50"], seeds=2)
    real = {}
    for seed in (1, 2):
        test = _curve("clothing1m", seed, 3)
        final = [None, None, 70.0 + seed]  # the best-val ensemble: not the last test_acc
        real["clothing1m", seed] = final[-1]
        w.trial(
            exp,
            parent,
            params={"run.epochs": 3, "run.seed": seed, "data.dataset": "clothing1m"},
            tags={CELL_TAG: "clothing1m", SEED_TAG: str(seed), "dmx.preset": "clothing1m"},
            history={"test_acc": test, "final_test_acc": final, "final_test_top5": [None] * 3},
        )
        wv = {
            "test_acc": [60.0, 70.0, 75.0 + seed],
            "test_top5": [80.0, 85.0, 90.0 + seed],
            "imagenet_acc": [55.0, 65.0, 72.0 + seed],
            "imagenet_top5": [75.0, 85.0, 89.0 + seed],
            "final_test_acc": [None, None, 75.0 + seed],
            "final_test_top5": [None, None, 90.0 + seed],
        }
        real["webvision-50", seed] = {k: v[-1] for k, v in wv.items()}
        w.trial(
            exp,
            parent,
            params={"run.epochs": 3, "run.seed": seed, "data.dataset": "webvision"},
            tags={CELL_TAG: "webvision-50", SEED_TAG: str(seed), "dmx.preset": "webvision-50"},
            history=wv,
        )

    # ---- a search whose configurations run with 2 seeds each (Ray Tune's Repeater) ----------
    exp, parent = w.experiment(REPEATS, cells=None, seeds=None)
    repeats = {}
    for config, lam in (("c1", 25.0), ("c2", 50.0)):
        for seed in (1, 2, 3):
            if config == "c1" and seed == 3:
                continue
            val = [40.0 + lam / 10 + seed * (1 + lam / 50) + e for e in range(4)]
            test = [v + 1.5 for v in val]
            failed = config == "c2" and seed == 3
            repeats[config, seed] = (val[-1], test[-1])
            w.trial(
                exp,
                parent,
                params={"dividemix.lambda_u": lam, "run.seed": seed, "run.epochs": 4},
                tags={"dmx.config_id": config, "dmx.trial_id": f"{config}_{seed}"},
                history={
                    "val_acc": val[: 2 if failed else 4],
                    "test_acc": test[: 2 if failed else 4],
                },
                status="FAILED" if failed else "FINISHED",
                reason="RuntimeError: CUDA out of memory" if failed else None,
            )
    return {"uri": uri, "root": root, "real": real, "repeats": repeats}


@pytest.fixture(scope="module")
def grid(store):
    return paper_table.load_paper_table(GRID, tracking_uri=store["uri"])


def _row(table, cell: str, measure: str) -> pd.Series:
    rows = table.rows
    return rows[(rows["cell"] == cell) & (rows["measure"] == measure)].iloc[0]


def test_best_and_last10_mean_std_are_the_hand_computed_ones(grid):
    for cell in ("cifar10-sym-0.5", "cifar100-sym-0.9"):
        curves = [_curve(cell, s) for s in SEEDS]
        best = [max(c) for c in curves]
        last10 = [sum(c[-10:]) / 10 for c in curves]
        assert len(curves[0]) == EPOCHS and max(curves[0]) != curves[0][-1]
        for measure, per_seed in (("best", best), ("last", last10)):
            row = _row(grid, cell, measure)
            assert row["mean"] == pytest.approx(sum(per_seed) / 2)
            assert row["std"] == pytest.approx(statistics.stdev(per_seed))  # ddof=1
            assert row["std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2**0.5)
            assert row["n"] == 2 and row["n_expected"] == 2
            # the paper column is dmx.paper's number, with its source, and the difference
            paper = getattr(PAPER_RESULTS[cell], measure)
            assert row["paper"] == paper and row["paper_source"] == PAPER_RESULTS[cell].source
            assert row["diff"] == pytest.approx(sum(per_seed) / 2 - paper)
    clean = _row(grid, "cifar10-sym-0.5", "best")
    assert clean["status"] == "done" and clean["note"] == ""
    # seed 124's failed first attempt is superseded by its rerun, and said so
    assert "seed 124: 2 runs, the latest counted" in grid.notes["cifar100-sym-0.9"]
    assert _row(grid, "cifar100-sym-0.9", "best")["status"] == "done"


def test_a_failed_seed_is_reported_and_not_averaged(grid):
    row = _row(grid, "cifar10-asym-0.4", "best")
    only = max(_curve("cifar10-asym-0.4", 123))
    assert row["n"] == 1 and row["mean"] == pytest.approx(only) and np.isnan(row["std"])
    assert row["status"] == "failed"
    assert grid.notes["cifar10-asym-0.4"] == f"n=1 of 2, seed 124 FAILED: {FAIL_REASON}"
    seeds = grid.seeds.set_index(["cell", "seed"])
    assert not seeds.loc[("cifar10-asym-0.4", 124), "counted"]


def test_running_incomplete_and_not_started_cells_are_marked(grid):
    running = _row(grid, "cifar10-sym-0.9", "best")
    assert running["status"] == "running, incomplete" and running["n"] == 0
    note = grid.notes["cifar10-sym-0.9"]
    assert note.startswith("n=0 of 2, ")
    assert "seed 123 running (6 of 12 epochs done)" in note
    assert "seed 124 incomplete: finished after 8 of 12 epochs" in note
    idle = _row(grid, "cifar10-sym-0.2", "last")
    assert idle["status"] == "not started" and idle["n"] == 0 and np.isnan(idle["mean"])
    assert idle["paper"] == PAPER_RESULTS["cifar10-sym-0.2"].last  # still beside the paper
    assert grid.cells == CIFAR_CELLS  # the grid's order, every cell listed


def test_markdown_output_and_files(store, tmp_path, capsys):
    args = ["--experiment", GRID, "--mlflow-uri", store["uri"], "--out", str(tmp_path)]
    assert paper_table.main(args) == 0
    out = capsys.readouterr().out
    md = (tmp_path / "paper_table.md").read_text()
    assert md in out and md.startswith(f"# Paper table: {GRID}")
    assert "5 cells × 2 seeds: 5 of 10 seed runs finished every epoch" in md
    assert "(cells: 2 done, 1 running, 1 failed, 1 incomplete, 1 not started)" in md
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| cell"))
    assert [h.strip() for h in header.strip("|").split("|")] == [
        "cell",
        "number",
        "dmx (mean ± std)",
        "n",
        "paper",
        "Δ",
        "status",
        "paper source",
    ]
    row = _row(
        paper_table.load_paper_table(GRID, tracking_uri=store["uri"]), "cifar10-sym-0.5", "best"
    )
    line = next(line for line in lines if line.startswith("| cifar10-sym-0.5"))
    assert f"{row['mean']:.2f} ± {row['std']:.2f}" in line and "2 of 2" in line
    assert " 94.6 |" in line and f"{row['diff']:+.2f}" in line and "Table 1, row DivideMix" in line
    assert f"- cifar10-asym-0.4: n=1 of 2, seed 124 FAILED: {FAIL_REASON}" in md
    assert "- cifar10-sym-0.2: not started (no run yet)" in md
    csv = pd.read_csv(tmp_path / "paper_table.csv")
    assert list(csv.columns) == paper_table.ROW_COLUMNS and len(csv) == 2 * len(CIFAR_CELLS)
    seeds = pd.read_csv(tmp_path / "paper_table_seeds.csv")
    assert len(seeds) == 8 and seeds["counted"].sum() == 5  # one row per (cell, seed) run
    assert paper_table.main(["--experiment", REPEATS, "--mlflow-uri", store["uri"]]) == 2
    assert "not a paper grid" in capsys.readouterr().err


def test_a_grid_with_no_trial_yet_lists_every_cell(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    Writer(uri).experiment("fresh", cells=["cifar10-sym-0.5", "clothing1m"], seeds=3)
    table = paper_table.load_paper_table("fresh", tracking_uri=uri)
    assert table.cells == ["cifar10-sym-0.5", "clothing1m"] and table.expected_seeds == 3
    assert set(table.rows["status"]) == {"not started"}
    assert table.rows["measure"].tolist() == ["best", "last", "top1"]  # each cell's numbers
    assert "0 of 6 seed runs" in paper_table.format_markdown(table)


def test_clothing1m_and_webvision_read_their_own_metrics(store):
    table = paper_table.load_paper_table(REAL, tracking_uri=store["uri"])
    real = store["real"]
    c = _row(table, "clothing1m", "top1")
    finals = [real["clothing1m", s] for s in (1, 2)]  # the best-val ensemble, not test_acc
    assert c["mean"] == pytest.approx(statistics.mean(finals))
    assert c["std"] == pytest.approx(statistics.stdev(finals)) and c["n"] == 2
    assert c["paper"] == PAPER_RESULTS["clothing1m"].top1 and c["status"] == "done"
    assert table.rows[table.rows["cell"] == "clothing1m"]["measure"].tolist() == ["top1"]
    wv = PAPER_RESULTS["webvision-50"]
    for measure, metric in (
        ("top1", "final_test_acc"),
        ("top5", "final_test_top5"),
        ("ilsvrc_top1", "imagenet_acc"),
        ("ilsvrc_top5", "imagenet_top5"),
    ):
        row = _row(table, "webvision-50", measure)
        values = [real["webvision-50", s][metric] for s in (1, 2)]
        assert row["mean"] == pytest.approx(statistics.mean(values)), measure
        assert row["paper"] == getattr(wv, measure) and row["paper_source"] == wv.source
        assert row["diff"] == pytest.approx(statistics.mean(values) - getattr(wv, measure))
    md = paper_table.format_markdown(table)
    assert " 74.76 |" in md and " 90.84 |" in md and "ILSVRC12 top-5" in md


def test_html_report_has_the_paper_table_section(store, tmp_path):
    sweep = load_sweep(GRID, tracking_uri=store["uri"])
    assert sweep.is_grid
    html_path, _ = report.build_report(sweep, tmp_path)
    html = html_path.read_text()
    assert '<section id="paper-table"><h2>Paper table</h2>' in html
    # the same table as the markdown: every display cell appears in the page
    table = paper_table.paper_table(sweep)
    shown = paper_table.display_frame(table)
    for value in shown.to_numpy().ravel():
        assert f">{value}<" in html.replace("&amp;", "&"), value
    assert f"seed 124 FAILED: {FAIL_REASON}" in html
    assert (tmp_path / "paper_table.md").is_file() and (tmp_path / "paper_table.csv").is_file()
    # not a grid: no such section
    other, _ = report.build_report(load_sweep(REPEATS, tracking_uri=store["uri"]), tmp_path / "o")
    assert 'id="paper-table"' not in other.read_text()


def test_compare_groups_repeater_seeds_by_config_id(store, tmp_path, capsys):
    sweep = load_sweep(REPEATS, tracking_uri=store["uri"])
    comparison = compare_cli.compare(sweep)
    assert comparison.group_by == ["config_id", "dividemix.lambda_u"]
    groups = comparison.groups.set_index("config_id")
    for config in ("c1", "c2"):
        vals = [store["repeats"][config, s][0] for s in (1, 2)]  # seed 3 of c2 FAILED
        tests = [store["repeats"][config, s][1] for s in (1, 2)]
        g = groups.loc[config]
        assert g["n"] == 2
        assert g["val_acc_final_mean"] == pytest.approx(statistics.mean(vals))
        assert g["val_acc_final_std"] == pytest.approx(statistics.stdev(vals))
        assert g["test_acc_final_mean"] == pytest.approx(statistics.mean(tests))
        assert g["test_acc_final_std"] == pytest.approx(statistics.stdev(tests))
    assert groups.loc["c2", "runs"] == 3 and groups.loc["c1", "runs"] == 2
    assert groups.loc["c2", "not_counted"] == "seed 3 FAILED: RuntimeError: CUDA out of memory"
    assert groups.loc["c1", "not_counted"] == ""
    assert comparison.groups["config_id"].tolist() == ["c2", "c1"]  # best mean objective first
    assert comparison.best == {"dividemix.lambda_u": 50.0}
    assert (
        compare_cli.main(
            ["--experiment", REPEATS, "--mlflow-uri", store["uri"], "--out", str(tmp_path)]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Mean ± std per configuration (dmx.config_id" in out
    assert "seed 3 FAILED: RuntimeError: CUDA out of memory" in out and "| not averaged" in out
    g2 = groups.loc["c2"]
    mean_std = f"{g2['val_acc_final_mean']:.2f} ± {g2['val_acc_final_std']:.2f}"
    assert mean_std in out


def test_compare_groups_a_grid_by_cell_with_the_same_exclusions(store):
    """compare (and the report's seeds section) on a grid: one group per cell, and what it
    leaves out agrees with the paper table (an incomplete seed is not "ran to the end")."""
    comparison = compare_cli.compare(load_sweep(GRID, tracking_uri=store["uri"]))
    assert comparison.group_by == ["cell"]
    groups = comparison.groups.set_index("cell")
    table = paper_table.load_paper_table(GRID, tracking_uri=store["uri"])
    for cell in groups.index:
        assert groups.loc[cell, "n"] == _row(table, cell, "best")["n"], cell
    assert groups.loc["cifar10-sym-0.9", "not_counted"] == (
        "seed 123 running (6 of 12 epochs done); seed 124 incomplete: finished after 8 of 12 epochs"
    )
    last10 = groups.loc["cifar10-sym-0.5", "test_acc_last10_mean"]
    assert last10 == pytest.approx(_row(table, "cifar10-sym-0.5", "last")["mean"])
    assert "cell" in compare_cli.display_columns(comparison)


def test_script_path_and_module_both_run(store, tmp_path):
    """`python analysis/paper_table.py` (the issue's spelling) and `python -m analysis.paper_table`
    both run, in this test's environment (`analysis` importable as `pip install -e .` installs
    it): the script spelling puts analysis/ first on sys.path and nothing in it shadows an
    import."""
    for command in (
        [sys.executable, "analysis/paper_table.py"],
        [sys.executable, "-m", "analysis.paper_table"],
    ):
        done = subprocess.run(
            [*command, "--experiment", REAL, "--mlflow-uri", store["uri"], "--out", str(tmp_path)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "# Paper table: paper-real" in done.stdout and "webvision-50" in done.stdout


def test_pyproject_installs_analysis_with_dmx():
    """`pip install .` packages analysis/ beside dmx/: what setuptools finds with pyproject's
    include list (the Docker image, which installs dmx/ alone first, still finds only dmx)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    from setuptools import find_packages

    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    found = find_packages(where=str(REPO), include=include)
    assert "analysis" in found and "dmx" in found and "dmx.tracking" in found
    assert not any(p.startswith(("tests", "sweeps", "scripts")) for p in found)


def test_readme_preset_table_shows_the_papers_numbers_and_source():
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Presets (the paper's settings)", 1)[1].split("\n### ", 1)[0]
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in section.splitlines()
        if line.startswith("| `")
    }
    for name, result in PAPER_RESULTS.items():
        line = rows[name]
        assert line.rstrip().endswith(f"| {result.table} |"), name
        decimals = 1 if result.best is not None else 2  # as the paper prints them
        for value in result.numbers().values():
            assert f"{value:.{decimals}f}" in line, (name, value)
