"""dmx.sweep: the search-space parser (fast, no Ray) and one real local sweep (3 trials x 3 epochs
on a tiny CIFAR-format fixture, Ray on 2 CPUs, MLflow in a temporary sqlite store)."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
from mlflow import MlflowClient
from ray import tune

from dmx import sweep as dmx_sweep
from dmx import tracking
from dmx.cli import main as dmx_main
from dmx.presets import get_preset
from tests.fixtures import write_cifar_fixture

BASE = get_preset("cifar10-asym-0.4")


# ---- search space ---------------------------------------------------------------------------
def test_default_space_is_the_paper_ranges():
    space = dmx_sweep.build_search_space(BASE)
    assert {k: (d.low, d.high) for k, d in space.items()} == {
        "dividemix.lambda_u": (0.0, 150.0),
        "dividemix.T": (0.2, 1.0),
        "dividemix.p_threshold": (0.3, 0.9),
    }
    # The preset's own setting is evaluated first.
    assert dmx_sweep.preset_point(BASE, space) == {
        "dividemix.lambda_u": 0.0,
        "dividemix.T": 0.5,
        "dividemix.p_threshold": 0.5,
    }


def test_extra_dimensions_and_overrides():
    space = dmx_sweep.build_search_space(
        BASE,
        [
            "dividemix.alpha=0.5:8:log",
            "optim.batch_size=32,64",
            "dividemix.lambda_u=0:50",
            "dividemix.rampup_length=4:32",
            "dividemix.loss_history_window=1:5",
        ],
    )
    assert space["dividemix.alpha"].log and space["dividemix.alpha"].low == 0.5
    assert space["optim.batch_size"].choices == (32, 64)
    assert space["dividemix.lambda_u"].high == 50.0  # a later spec replaces the default
    window = space["dividemix.loss_history_window"]
    assert window.integer and type(window.distribution()).__name__ == "IntDistribution"
    only = dmx_sweep.build_search_space(BASE, ["dividemix.T=0.3:0.7"], defaults=False)
    assert list(only) == ["dividemix.T"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("dividemix.T=1.0:0.2", "inverted"),
        ("dividemix.T=0.5:0.5", "inverted"),
        ("dividemix.alpha=0:8:log", "LOW > 0"),
        ("dividemix.lamda_u=0:1", "Did you mean dividemix.lambda_u"),
        ("dividemix.T", "expected KEY=LOW:HIGH"),
        ("dividemix.T=0.2:1.0:cubic", "expected KEY=LOW:HIGH"),
        ("dividemix.p_threshold=0.3:1.5", "must be in"),
        ("dividemix.loss_history_window=1.5:3", "integers"),
        ("optim.batch_size=64,64", "two different"),
    ],
)
def test_bad_dimensions_are_clear_errors(spec, message):
    with pytest.raises(dmx_sweep.SearchSpaceError, match=message):
        dmx_sweep.build_search_space(BASE, [spec])


def test_preset_outside_the_ranges_is_not_forced_in():
    space = dmx_sweep.build_search_space(BASE, ["dividemix.lambda_u=10:50"])
    with pytest.warns(UserWarning, match="outside the search ranges"):
        assert dmx_sweep.preset_point(BASE, space) is None


def test_asha_clock_starts_after_warmup():
    assert [dmx_sweep.dm_epoch(e, 2) for e in range(5)] == [0, 0, 1, 2, 3]
    assert [dmx_sweep.dm_epoch(e, 0) for e in range(2)] == [1, 2]


def test_best_trial_skips_failed_and_non_finite_trials():
    from types import SimpleNamespace as R

    results = [
        R(error=RuntimeError("NaN at epoch 1"), metrics={"val_acc": 90.0}),  # failed after epoch 0
        R(error=None, metrics={"val_acc": float("nan")}),
        R(error=None, metrics={"val_acc": 40.0, "trial_id": "a"}),
        R(error=None, metrics={"val_acc": 55.0, "trial_id": "b"}),
        R(error=None, metrics={}),  # never reported
    ]
    assert dmx_sweep.best_result(results).metrics["trial_id"] == "b"
    assert dmx_sweep.best_result(results[:2]) is None


# ---- a real sweep -----------------------------------------------------------------------------
def tiny_config(root: Path):
    """cifar10-asym-0.4 at test scale: small CNN, 3 epochs of which 1 warmup, tiny batches."""
    return BASE.with_overrides(
        {
            "data.root": str(root),
            "noise.cache_dir": str(root / "noise"),
            "model.name": "small_cnn",
            "run.epochs": 3,
            "dividemix.warmup_epochs": 1,
            "optim.batch_size": 32,
            "optim.warmup_batch_size": 64,
            "run.device": "cpu",
        }
    )


@pytest.fixture()
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_sweep_end_to_end(tmp_path, local_ray):
    root = write_cifar_fixture(tmp_path / "data", n_train=300, n_test=100)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = dmx_sweep.run_sweep(
        tiny_config(root),
        name="tiny",
        storage_path=tmp_path / "results",
        num_samples=3,
        max_concurrent=2,
        cpus_per_trial=1,
        grace_period=1,
        seed=7,
        mlflow_uri=uri,
        verbose=0,
    )
    assert not result.interrupted and result.num_trials == 3 and result.num_errors == 0
    # Optuna's suggestions lie inside the ranges; the paper's setting came first.
    space = dmx_sweep.build_search_space(BASE)
    configs = [r.config for r in result.result_grid]
    for config in configs:
        for key, dim in space.items():
            assert dim.contains(config[key]), (key, config[key])
    assert {"dividemix.lambda_u": 0.0, "dividemix.T": 0.5, "dividemix.p_threshold": 0.5} in configs
    # A best result, chosen on val_acc, reported with its params and checkpoint.
    assert set(result.best_params) == set(space)
    assert 0.0 <= result.best_metrics["val_acc"] <= 100.0 and "test_acc" in result.best_metrics
    assert Path(result.best_checkpoint, "ckpt-0003.pt").is_file() or result.best_checkpoint

    # Checkpoints on disk: at most run.keep_checkpoints (2) per trial, each a verified TrainState.
    from dmx.state import load_latest_checkpoint

    trial_dirs = sorted((tmp_path / "results" / "tiny").glob("trial_*"))
    assert len(trial_dirs) == 3
    for trial_dir in trial_dirs:
        ckpts = sorted(trial_dir.glob("checkpoint_*"))
        assert 1 <= len(ckpts) <= 2
        state = load_latest_checkpoint(ckpts[-1])
        assert state is not None and state.mlflow_run_id and state.epoch >= 2

    # MLflow: one experiment, a parent run and three nested trial runs with per-epoch metrics.
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "sweep"]
    children = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "trial"]
    assert len(parents) == 1 and len(children) == 3
    assert parents[0].info.status == "FINISHED"
    assert "best_trial_val_acc" in parents[0].data.metrics
    ids = {r.data.tags[tracking.TRIAL_TAG] for r in children}
    assert ids == {r.metrics["trial_id"] for r in result.result_grid}
    for run in children:
        assert run.data.tags[tracking.PARENT_TAG] == parents[0].info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.tags["dmx.preset"] == "cifar10-asym-0.4" and run.data.tags["dmx.node"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert steps == list(range(len(steps))) and len(steps) >= 2  # pruned trials stop early
        assert client.get_metric_history(run.info.run_id, "phase")[0].value == 0.0
        assert float(run.data.params["run.epochs"]) == 3
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "noisy_labels.parquet"} <= artifacts
        # Every trial has its per-sample report: logged by the trial at its end, or, when ASHA
        # stopped it, computed by the driver from its last checkpoint.
        assert "clean_probs.parquet" in artifacts
        stopped = run.data.tags["dmx.stopped_early"] == "true"
        assert stopped == (len(steps) < 3) == ("dmx.clean_probs_from" in run.data.tags)
    # Every trial trained on the one noisy-label file made by the driver.
    assert len({r.data.params["noise.label_file"] for r in children}) == 1

    # A trial stopped by ASHA: Tune ends its process at a report, so the driver's callback computes
    # its per-sample report from its last checkpoint in a Ray task and logs it to the ended run.
    # Played here on a finished trial (ASHA's choices depend on timing): the file the driver logs
    # must equal the one the trial logged for the same final state.
    finished = next(r for r in children if r.data.tags["dmx.stopped_early"] == "false")
    trial_id = finished.data.tags[tracking.TRIAL_TAG]
    own = pd.read_parquet(
        client.download_artifacts(finished.info.run_id, "clean_probs.parquet", str(tmp_path / "a"))
    )
    ckpt = sorted((tmp_path / "results" / "tiny" / f"trial_{trial_id}").glob("checkpoint_*"))[-1]
    callback = dmx_sweep.MlflowStatusCallback(uri, exp.experiment_id, epochs=4)  # "stopped" at 3
    callback.on_trial_complete(
        0,
        [],
        SimpleNamespace(
            trial_id=trial_id,
            last_result={"epoch": 2},
            checkpoint=tune.Checkpoint.from_directory(ckpt),
        ),
    )
    callback.on_experiment_end([])
    run = client.get_run(finished.info.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["dmx.stopped_early"] == "true"
    assert run.data.tags["dmx.clean_probs_from"] == f"last checkpoint ({ckpt.name})"
    logged = pd.read_parquet(
        client.download_artifacts(finished.info.run_id, "clean_probs.parquet", str(tmp_path / "b"))
    )
    assert logged.equals(own) and len(own) == 300 - 15

    # By hand: `dmx label-issues` on a trial's checkpoint folder computes the same file first
    # (here on 2 threads instead of the trial's 1: equal up to float summation order).
    assert dmx_main(["label-issues", str(ckpt), "--top", "3"]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(ckpt / "clean_probs.parquet"), own, rtol=1e-4)


# ---- the sweep command line -------------------------------------------------------------------
def test_sweep_cli_builds_the_base_config(tmp_path):
    from dmx.cli import sweep as sweep_cli

    parser = argparse.ArgumentParser()
    sweep_cli.add_arguments(parser, preset="cifar10-asym-0.4")
    args = parser.parse_args(
        [
            "--smoke-test",
            "--data-dir",
            str(tmp_path),
            "--epochs",
            "5",
            "--set",
            "dividemix.alpha=2",
            "--seed",
            "3",
        ]
    )
    cfg = sweep_cli.base_config(args)
    assert cfg.preset == "cifar10-asym-0.4" and cfg.noise.mode == "asym"
    assert cfg.model.name == "small_cnn" and cfg.data.subset == 2000  # smoke test
    assert cfg.run.epochs == 5 and cfg.dividemix.alpha == 2.0 and cfg.run.seed == 3  # flags win
    assert cfg.data.root == str(tmp_path.resolve()) and not cfg.data.download


def test_sweep_cli_reports_bad_input_before_starting(tmp_path, capsys):
    from dmx.cli import sweep as sweep_cli

    common = ["--data-dir", str(tmp_path), "--storage-path", str(tmp_path / "r"), "--no-mlflow"]
    assert sweep_cli.main("cifar10-asym-0.4", ["--search", "dividemix.T=1:0.2", *common]) == 2
    assert "inverted" in capsys.readouterr().err
    assert sweep_cli.main("cifar10-asym-0.4", ["--resume", *common]) == 2
    assert "--resume needs --name" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
