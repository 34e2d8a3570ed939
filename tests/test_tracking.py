"""dmx.tracking against a throwaway sqlite MLflow store (no Ray, no training)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from dmx import tracking
from dmx.config import Config


@pytest.fixture()
def uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tracking.check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")


def test_resolve_tracking_uri_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert (
        tracking.resolve_tracking_uri("sqlite:///sub/x.db")
        == f"sqlite:///{tmp_path.resolve()}/sub/x.db"
    )
    assert tracking.resolve_tracking_uri("sqlite:////abs/x.db") == "sqlite:////abs/x.db"
    assert tracking.resolve_tracking_uri("http://host:5000") == "http://host:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking.resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/env.db"
    assert tracking.resolve_tracking_uri("sqlite:///explicit.db").endswith("/explicit.db")


def test_unreachable_store_names_the_uri(tmp_path):
    with pytest.raises(tracking.TrackingError, match=r"http://127\.0\.0\.1:9"):
        tracking.check_tracking_uri("http://127.0.0.1:9", timeout=2)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(tracking.TrackingError, match="mlflow.db"):
        tracking.check_tracking_uri(f"sqlite:///{blocker}/mlflow.db")


def test_params_are_strings_within_mlflow_limits():
    values = tracking.param_values({"a": [1, 2], "b": 0.5, "c": "x" * 7000, "d": True})
    assert values["a"] == "[1, 2]" and values["b"] == "0.5" and values["d"] == "True"
    assert len(values["c"]) == tracking.MAX_PARAM_CHARS


def test_trial_run_is_resumed_without_duplicate_steps(uri):
    flat = Config().to_flat()
    parent = tracking.start_sweep_run(uri, "sweep-x", sweep_name="sweep-x", base_config=flat)
    again = tracking.start_sweep_run(uri, "sweep-x", sweep_name="sweep-x", base_config=flat)
    assert again.run_id == parent.run_id

    first = tracking.start_trial_run(
        uri, parent.experiment_id, trial_id="t_00000", parent_run_id=parent.run_id, flat_config=flat
    )
    for epoch in range(4):
        first.log_metrics({"val_acc": float(epoch), "phase": 0.0}, step=epoch)
    # A retry restored from the epoch-2 checkpoint re-runs epochs 2 and 3, then goes on.
    retry = tracking.start_trial_run(
        uri, parent.experiment_id, trial_id="t_00000", parent_run_id=parent.run_id, flat_config=flat
    )
    assert retry.run_id == first.run_id
    assert retry.last_step("val_acc") == 3
    written = [retry.log_metrics({"val_acc": 10.0 + e, "phase": 1.0}, step=e) for e in range(2, 6)]
    assert written == [0, 0, 2, 2]
    # By the id stored in the TrainState, even without the tag lookup:
    by_id = tracking.start_trial_run(
        uri,
        parent.experiment_id,
        trial_id="t_00000",
        parent_run_id=parent.run_id,
        flat_config=flat,
        run_id=first.run_id,
    )
    assert by_id.run_id == first.run_id

    client = MlflowClient(uri)
    steps = [m.step for m in client.get_metric_history(first.run_id, "val_acc")]
    assert steps == [0, 1, 2, 3, 4, 5]
    run = client.get_run(first.run_id)
    assert run.data.tags[tracking.PARENT_TAG] == parent.run_id
    assert run.data.tags[tracking.ROLE_TAG] == "trial"
    assert run.data.params["dividemix.lambda_u"] == "25.0"
    assert len(client.search_runs([parent.experiment_id])) == 2  # parent + one trial

    assert tracking.end_trial_run(uri, parent.experiment_id, "t_00000", "FAILED", reason="boom")
    run = client.get_run(first.run_id)
    assert run.info.status == "FAILED" and run.data.tags["dmx.failure_reason"] == "boom"
    assert not tracking.end_trial_run(uri, parent.experiment_id, "never-started", "FINISHED")


def test_sqlite_artifacts_live_next_to_the_database(uri, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / "..")  # artifacts must not follow the working directory
    client = MlflowClient(uri)
    exp_id = tracking.get_or_create_experiment(client, "arts", uri)
    assert client.get_experiment(exp_id).artifact_location == (tmp_path / "mlartifacts").as_uri()


def test_train_reporter_resumes_by_run_dir_and_state(uri, tmp_path):
    cfg = Config(preset="p")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(cfg.to_json())
    (run_dir / "labels.parquet").write_bytes(b"PAR1")
    data = SimpleNamespace(noisy=SimpleNamespace(path=run_dir / "labels.parquet"))
    state = SimpleNamespace(mlflow_run_id="")
    rep = tracking.train_reporter(cfg, run_dir=run_dir, tracking_uri=uri, state=None)
    rep.start(cfg, data, state)
    assert state.mlflow_run_id == rep.run_id
    rep.epoch_end(0, {"test_acc": 10.0}, state)
    rep.fail(KeyboardInterrupt())

    # --resume before the state carried the id (found by the run-dir tag), then with it.
    resumed = tracking.train_reporter(
        cfg.with_overrides({"run.epochs": 5}),
        run_dir=run_dir,
        tracking_uri=uri,
        state=SimpleNamespace(mlflow_run_id=""),
    )
    assert resumed.run_id == rep.run_id
    resumed.epoch_end(0, {"test_acc": 99.0}, state)  # already logged: skipped
    resumed.epoch_end(1, {"test_acc": 20.0}, state)
    resumed.finish(state)

    client = MlflowClient(uri)
    run = client.get_run(rep.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["dmx.role"] == "train" and run.data.tags["dmx.preset"] == "p"
    assert run.data.tags["dmx.resumed_with.run.epochs"] == "5"
    assert [(m.step, m.value) for m in client.get_metric_history(rep.run_id, "test_acc")] == [
        (0, 10.0),
        (1, 20.0),
    ]
    names = {a.path for a in client.list_artifacts(rep.run_id)}
    assert {"config.json", "noisy_labels.parquet"} <= names

    other = tracking.train_reporter(cfg, run_dir=tmp_path / "other", tracking_uri=uri)
    assert other.run_id != rep.run_id
