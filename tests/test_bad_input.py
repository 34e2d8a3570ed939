"""Bad input at the edges (sweep CLI, trials, resume paths): one clear message naming the problem
and the fix, and nothing left half-made (no sweep folder, no RUNNING MLflow run, no file that runs
code).

Cases already proven elsewhere (not repeated here):
- missing dataset folder, truncated dataset file, label-count mismatch, unknown dataset:
  tests/test_data.py, tests/test_train.py
- noise-label file of the wrong length / class range, asymmetric noise on a dataset without a
  transition, a failed label write leaving no file, a damaged cached label file:
  tests/test_labels.py (every built-in dataset has a transition, so there is no CLI-level case)
- noise rate, p_threshold, T, lambda_u, alpha, lr, epochs, batch size out of range:
  tests/test_config.py; unknown preset / model: tests/test_cli.py, tests/test_models.py
- a search space with an inverted / empty range at the parser: tests/test_sweep.py
- an unreachable MLflow server at check_tracking_uri: tests/test_tracking.py
- CUDA asked for without CUDA, NaN loss in fit(), empty labelled / unlabelled sets:
  tests/test_train.py; `dmx train --resume` of a folder without checkpoints: tests/test_cli.py
- malicious pickles at the loaders: tests/test_state.py (checkpoint), tests/test_data.py (CIFAR),
  tests/test_noise.py (CIFAR-N)
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from dmx import tracking
from dmx.cli import main as dmx_main
from dmx.cli.sweep import main as sweep_main
from dmx.labels import write_noisy_labels
from dmx.prepare import prepare_data
from dmx.presets import get_preset
from dmx.state import list_checkpoints, load_latest_checkpoint
from dmx.sweep import checks as sweep_checks
from dmx.sweep import driver as sweep_driver
from dmx.train import fit
from tests.fixtures import poisoned_model_source, write_cifar_fixture

REPO = Path(__file__).resolve().parents[1]


def _closed_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sweep_args(tmp_path: Path, *extra: str) -> list[str]:
    return [
        "--data-dir",
        str(tmp_path / "data"),
        "--storage-path",
        str(tmp_path / "results"),
        "--name",
        "bad",
        "--mlflow-uri",
        f"sqlite:///{tmp_path}/mlflow.db",
        "--quiet",
        *extra,
    ]


def _nothing_made(tmp_path: Path) -> None:
    import ray

    assert not ray.is_initialized(), "Ray was started for a sweep that could not run"
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
    db = tmp_path / "mlflow.db"
    if db.exists():  # the store may have been checked, but holds no run
        client = MlflowClient(f"sqlite:///{db}")
        exps = [e.experiment_id for e in client.search_experiments()]
        assert not client.search_runs(exps)


# ---- the sweep command line: fails before anything starts -------------------------------------
def test_unreachable_ray_address_fails_fast_with_the_address(tmp_path, capsys):
    address = f"127.0.0.1:{_closed_port()}"
    start = time.perf_counter()
    code = sweep_main("cifar10-asym-0.4", _sweep_args(tmp_path, "--address", address))
    elapsed = time.perf_counter() - start
    err = capsys.readouterr().err
    assert code == 2 and address in err and "ray start --head" in err, err
    assert elapsed < 30, f"took {elapsed:.0f} s"  # ray.init alone retries for minutes
    _nothing_made(tmp_path)


def test_unreachable_mlflow_server_fails_before_any_trial(tmp_path, capsys):
    uri = f"http://127.0.0.1:{_closed_port()}"
    args = _sweep_args(tmp_path)
    args[args.index("--mlflow-uri") + 1] = uri
    code = sweep_main("cifar10-asym-0.4", args)
    err = capsys.readouterr().err
    assert code == 2 and uri in err and "--mlflow-uri" in err, err
    _nothing_made(tmp_path)


def test_inverted_search_range_is_refused_before_anything_starts(tmp_path, capsys):
    code = sweep_main("cifar10-asym-0.4", _sweep_args(tmp_path, "--search", "dividemix.T=1.0:0.2"))
    err = capsys.readouterr().err
    assert code == 2 and "dividemix.T=1.0:0.2" in err and "LOW < HIGH" in err, err
    _nothing_made(tmp_path)


def test_resume_of_a_folder_without_a_sweep(tmp_path, capsys):
    (tmp_path / "results" / "bad").mkdir(parents=True)
    (tmp_path / "results" / "bad" / "notes.txt").write_text("not a sweep")
    code = sweep_main("cifar10-asym-0.4", ["--resume", *_sweep_args(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "No dmx sweep to resume" in err and "STORAGE_PATH/NAME" in err, err
    code = sweep_main("cifar10-asym-0.4", ["--resume", "--storage-path", str(tmp_path / "x")])
    assert code == 2 and "--resume needs --name" in capsys.readouterr().err
    import ray

    assert not ray.is_initialized()


def test_local_ray_dashboard_listens_on_localhost_only(monkeypatch):
    import ray

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    sweep_checks.init_ray(None)
    assert seen.get("dashboard_host") == "127.0.0.1" or seen.get("include_dashboard") is False


# ---- data and labels --------------------------------------------------------------------------
def test_class_absent_from_the_noisy_labels_is_warned_and_trains(tmp_path):
    cfg = get_preset("digits-sym-0.5").with_overrides(
        {
            "noise.cache_dir": str(tmp_path / "noise"),
            "run.epochs": 2,
            "dividemix.warmup_epochs": 1,
            "run.device": "cpu",
        }
    )
    noisy = prepare_data(cfg).noisy
    labels = noisy.noisy_labels.copy()
    labels[labels == 3] = 4  # nobody is labelled "3" any more
    path = tmp_path / "no-threes.parquet"
    write_noisy_labels(
        path, true_labels=noisy.true_labels, noisy_labels=labels, params={"mode": "edited"}
    )
    with pytest.warns(UserWarning, match=r"Classes \[3\] never occur.*data.subset"):
        state = fit(cfg.with_overrides({"noise.label_file": str(path)}))
    assert state.epoch == 2 and np.isfinite(state.metrics_history[-1]["test_acc"])


# ---- nothing we load runs code -----------------------------------------------------------------
class _Evil:
    """Unpickling this runs `touch PWNED` in the current folder."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_in_the_data_folder_is_refused_by_dmx_train(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = write_cifar_fixture(tmp_path / "data", n_train=50, n_test=10)
    target = root / "cifar-10-batches-py" / "data_batch_2"
    target.write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}, protocol=2))
    code = dmx_main(
        [
            "train",
            "--preset",
            "cifar10-asym-0.4",
            "--data-dir",
            str(root),
            "--out",
            str(tmp_path / "run"),
            "--no-mlflow",
            "--quiet",
            "--epochs",
            "1",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "data_batch_2" in err and "posix.system" in err, err
    assert not (tmp_path / "PWNED").exists()
    assert not list_checkpoints(tmp_path / "run" / "checkpoints")


def _plant_evil_checkpoint(path: Path) -> None:
    data = pickle.dumps({"config": {}, "epoch": 1, "payload": _Evil()})
    path.write_bytes(data)  # with a VALID checksum: the checksum is no defence against tampering
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")


def test_malicious_checkpoint_is_refused_by_dmx_train_resume(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    _plant_evil_checkpoint(ckpts / "ckpt-0001.pt")
    code = dmx_main(["train", "--out", str(tmp_path / "run"), "--resume", "--no-mlflow", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "ckpt-0001.pt" in err and "refused" in err, err
    assert not (tmp_path / "PWNED").exists()


# ---- inside a sweep: a NaN loss, then a tampered checkpoint on resume --------------------------
# Finite during warmup epoch 0 (3 training batches of 64 per net), NaN in epoch 1.
POISONED = poisoned_model_source(nan_after=4)


@pytest.fixture()
def ray_with_poisoned_model(tmp_path, monkeypatch):
    import ray

    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "nanmodels.py").write_text(POISONED)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "mods"), str(REPO)]))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    monkeypatch.setenv("NAN_BUILDS", str(tmp_path / "builds.txt"))
    ray.init(num_cpus=1, include_dashboard=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_nan_in_a_trial_fails_it_cleanly_and_a_tampered_checkpoint_is_refused_on_resume(
    tmp_path, monkeypatch, ray_with_poisoned_model
):
    monkeypatch.chdir(tmp_path)
    root = write_cifar_fixture(tmp_path / "data", n_train=200, n_test=50)
    cfg = get_preset("cifar10-asym-0.4").with_overrides(
        {
            "data.root": str(root),
            "noise.cache_dir": str(root / "noise"),
            "model.name": "nanmodels:make",
            "run.epochs": 3,
            "dividemix.warmup_epochs": 1,
            "optim.batch_size": 32,
            "optim.warmup_batch_size": 64,
            "run.device": "cpu",
            "data.val_fraction": 0.05,
        }
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = sweep_driver.run_sweep(
        cfg,
        sweep_driver.SweepOptions(
            name="nan",
            storage_path=tmp_path / "results",
            num_samples=1,
            max_failures=1,
            grace_period=100,
        ),
        mlflow_uri=uri,
        verbose=0,
    )
    assert result.num_errors == 1
    # Tune granted a retry; it failed at once (the NaN is deterministic) without building or
    # training the nets again: only the first attempt's two nets were ever built.
    assert (tmp_path / "builds.txt").read_text().count("built") == 2
    # The failed trial's epoch-0 result is no "best trial".
    assert result.best_trial_id == "" and result.best_metrics == {}

    # The error names the epoch and the loss term; MLflow says FAILED with that reason.
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("nan")
    (run,) = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get(tracking.ROLE_TAG) == "trial"
    ]
    reason = run.data.tags["dmx.failure_reason"]
    assert run.info.status == "FAILED", run.info.status
    assert "Non-finite loss at epoch 1" in reason and "Lx (first at batch" in reason, reason
    assert "Lower optim.lr" in reason
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_acc")] == [0]

    # The last good checkpoint (end of epoch 0) is intact.
    trial_dir = next((tmp_path / "results" / "nan").glob("trial_*"))
    (ckpt_dir,) = sorted(trial_dir.glob("checkpoint_*"))
    assert load_latest_checkpoint(ckpt_dir).epoch == 1

    # Someone swaps that checkpoint for a pickle that runs code (with a matching checksum) and
    # resumes the sweep: the trial refuses it, nothing runs, the run ends FAILED saying why.
    (ckpt,) = ckpt_dir.glob("ckpt-*.pt")
    _plant_evil_checkpoint(ckpt)
    resumed = sweep_driver.resume_sweep(tmp_path / "results" / "nan")
    assert resumed.num_errors == 1
    assert not list(tmp_path.rglob("PWNED")) and not list(Path("/tmp").glob("ray/**/PWNED"))
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FAILED"
    reason = run.data.tags["dmx.failure_reason"]
    assert "refused" in reason and "nothing from it was run" in reason, reason
    parents = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get(tracking.ROLE_TAG) == "sweep"
    ]
    assert all(r.info.status != "RUNNING" for r in parents)
    spec = json.loads((tmp_path / "results" / "nan" / sweep_driver.SPEC_FILE).read_text())
    assert spec["name"] == "nan"


def test_nan_in_dmx_train_ends_its_mlflow_run_failed_with_the_reason(tmp_path, monkeypatch, capsys):
    (tmp_path / "mods").mkdir()
    # NaN after one warmup batch per net (optim.warmup_batch_size=2000 below).
    (tmp_path / "mods" / "nandigits.py").write_text(poisoned_model_source(nan_after=1))
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_dir = tmp_path / "run"
    code = dmx_main(
        [
            "train",
            "--preset",
            "digits-sym-0.5",
            "--model",
            "nandigits:make",
            "--epochs",
            "3",
            "--set",
            "dividemix.warmup_epochs=1",
            "--set",
            "optim.warmup_batch_size=2000",
            "--set",
            f"noise.cache_dir={tmp_path / 'noise'}",
            "--out",
            str(run_dir),
            "--mlflow-uri",
            uri,
            "--quiet",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Non-finite loss at epoch 1" in err and "Lower optim.lr" in err, err
    assert load_latest_checkpoint(run_dir / "checkpoints").epoch == 1  # epoch 0, intact
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("dmx-train")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FAILED"
    assert "NonFiniteLossError: Non-finite loss at epoch 1" in run.data.tags["dmx.failure_reason"]
