"""dmx.tracking against a throwaway sqlite MLflow store (no Ray, no training)."""

from __future__ import annotations

import os
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


def _fake_data():
    """What MlflowReporter.start reads of PreparedData: the noisy labels' parquet copy."""
    return SimpleNamespace(
        noisy=SimpleNamespace(save_parquet=lambda dest: dest.write_bytes(b"PAR1"))
    )


def _train_runs(uri):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("dmx-train")
    return client.search_runs([exp.experiment_id]) if exp else []


def test_train_reporter_resumes_by_the_checkpoints_run_id_only(uri, tmp_path):
    cfg = Config(preset="p")
    run_dir = tmp_path / "run"
    data = _fake_data()
    state = SimpleNamespace(mlflow_run_id="", epoch=0)
    rep = tracking.train_reporter(run_dir=run_dir, tracking_uri=uri, state=None)
    assert rep.run_id == "" and _train_runs(uri) == []  # opened when the loop starts, not before
    rep.start(cfg, data, state)
    assert state.mlflow_run_id == rep.run_id  # so the first checkpoint names its run
    rep.epoch_end(0, {"test_acc": 10.0}, state)
    rep.fail(KeyboardInterrupt())
    client = MlflowClient(uri)
    assert client.get_run(rep.run_id).data.tags["dmx.failure_reason"].startswith("interrupted")

    # --resume of its checkpoint (the TrainState carries the id): the same run goes on. The
    # checkpoint holds epoch 1, which the kill kept from MLflow (the checkpoint is written first).
    history = [{"epoch": 0.0, "test_acc": 99.0}, {"epoch": 1.0, "test_acc": 20.0}]
    saved = SimpleNamespace(mlflow_run_id=rep.run_id, epoch=2, metrics_history=history)
    resumed = tracking.train_reporter(run_dir=run_dir, tracking_uri=uri, state=saved)
    resumed.start(cfg.with_overrides({"run.epochs": 5}), data, saved)
    assert resumed.run_id == rep.run_id
    resumed.epoch_end(1, {"test_acc": 98.0}, saved)  # already logged: skipped
    resumed.epoch_end(2, {"test_acc": 30.0}, saved)
    resumed.finish(saved)

    run = client.get_run(rep.run_id)
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert "dmx.failure_reason" not in tags  # finished after the resume: not "interrupted"
    assert tags["dmx.previous_failure_reason"].startswith("interrupted")
    assert tags["dmx.restored_from_epoch"] == "2"
    assert tags["dmx.role"] == "train" and tags["dmx.preset"] == "p"
    assert tags["dmx.run_dir"] == str(run_dir.resolve())  # information, never searched
    assert tags["dmx.resumed_with.run.epochs"] == "5"
    assert [(m.step, m.value) for m in client.get_metric_history(rep.run_id, "test_acc")] == [
        (0, 10.0),  # logged live; the state's 99.0 for it is not logged twice
        (1, 20.0),  # from the resumed state
        (2, 30.0),
    ]
    names = {a.path for a in client.list_artifacts(rep.run_id)}
    assert {"config.json", "noisy_labels.parquet"} <= names

    # `rm -rf RUN_DIR` and a new run there: same folder, same tag, but a NEW MLflow run. So is a
    # checkpoint without an id (--no-mlflow), and one naming a run this store does not hold.
    fresh_state = SimpleNamespace(mlflow_run_id="", epoch=0)
    fresh = tracking.train_reporter(run_dir=run_dir, tracking_uri=uri, state=None)
    fresh.start(cfg, data, fresh_state)
    fresh.epoch_end(0, {"test_acc": 55.0}, fresh_state)
    fresh.finish(fresh_state)
    unnamed = SimpleNamespace(mlflow_run_id="", epoch=1)
    no_id = tracking.train_reporter(run_dir=run_dir, tracking_uri=uri, state=unnamed)
    no_id.start(cfg, data, unnamed)
    elsewhere = SimpleNamespace(mlflow_run_id="0123456789abcdef0123456789abcdef", epoch=1)
    foreign = tracking.train_reporter(run_dir=run_dir, tracking_uri=uri, state=elsewhere)
    with pytest.warns(UserWarning, match="does not hold"):
        foreign.start(cfg, data, elsewhere)
    ids = [rep.run_id, fresh.run_id, no_id.run_id, foreign.run_id]
    assert len(set(ids)) == 4 and elsewhere.mlflow_run_id == foreign.run_id
    assert [(m.step, m.value) for m in client.get_metric_history(fresh.run_id, "test_acc")] == [
        (0, 55.0)
    ]
    assert client.get_metric_history(rep.run_id, "test_acc")[0].value == 10.0  # old run untouched
    assert client.get_run(fresh.run_id).data.tags["dmx.run_dir"] == str(run_dir.resolve())

    # Without a run directory: a new run each time too.
    other = tracking.train_reporter(tracking_uri=uri)
    other.start(cfg, data, SimpleNamespace(mlflow_run_id="", epoch=0))
    assert other.run_id not in ids


def test_train_reporter_failing_before_the_loop_leaves_no_run(uri, tmp_path):
    rep = tracking.train_reporter(run_dir=tmp_path / "run", tracking_uri=uri)
    rep.fail(ValueError("data.subset=5000 is larger than the digits training set"))
    rep.finish()
    assert _train_runs(uri) == []


def test_train_reporter_with_a_non_utf8_run_dir(uri, tmp_path):
    run_dir = tmp_path / os.fsdecode(b"bad-\xff-run")  # what Python makes of such an argv
    state = SimpleNamespace(mlflow_run_id="", epoch=0)
    rep = tracking.train_reporter(run_dir=run_dir, tracking_uri=uri)
    rep.start(Config(), _fake_data(), state)
    rep.finish(state)
    run = MlflowClient(uri).get_run(rep.run_id)
    assert run.data.tags["dmx.run_dir"] == f"{tmp_path.resolve()}/bad-\\xff-run"
    assert run.info.run_name == "bad-\\xff-run" and run.info.status == "FINISHED"


def test_a_ctrl_c_during_a_store_write_lands_after_it():
    # A write cut by Ctrl-C halfway left an sqlite transaction open that this very process then
    # waited on when it marked the run KILLED (the interrupted `dmx train` hung).
    import os
    import signal

    from dmx.tracking.store import retry

    done = []

    def write():
        os.kill(os.getpid(), signal.SIGINT)  # arrives in the middle of the "write"
        done.append("whole")
        return 1

    # Python's own Ctrl-C handler (an earlier test in this process may have left Ray Tune's).
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            retry(write)
        assert done == ["whole"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
        assert retry(lambda: 2) == 2  # and nothing pending afterwards
    finally:
        signal.signal(signal.SIGINT, before)
