"""dmx.tracking against a throwaway sqlite MLflow store (no Ray, no training)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from dmx import tracking
from dmx.config import Config
from dmx.tracking import ui


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
    definition = {"sweep.search.dividemix.lambda_u": "0:150", "sweep.num_samples": 3}
    parent = tracking.start_sweep_run(
        uri, "sweep-x", sweep_name="sweep-x", definition=definition, base_config=flat
    )
    again = tracking.start_sweep_run(
        uri, "sweep-x", sweep_name="sweep-x", definition=definition, base_config=flat
    )
    assert again.run_id == parent.run_id
    # The parent holds the sweep's definition, not a trial's config (that is an artifact).
    parent_run = MlflowClient(uri).get_run(parent.run_id)
    assert parent_run.data.params == {k: str(v) for k, v in definition.items()}
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(parent.run_id)}
    assert tracking.BASE_CONFIG_FILE in artifacts

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


def _fake_data(tmp_path=None):
    """What MlflowReporter.start reads of PreparedData: the noisy labels (their file for the
    dataset input, their parquet copy for a standalone run)."""
    import numpy as np

    folder = Path(tmp_path or tempfile.mkdtemp())
    labels = folder / "cifar10-asym-0.4-seed0-abcd1234.parquet"
    labels.write_bytes(b"PAR1")
    return SimpleNamespace(
        noisy=SimpleNamespace(
            path=labels,
            sha256="ab" * 32,
            noisy_labels=np.zeros(50, dtype=np.int64),
            params={"mode": "asym", "rate": 0.4, "seed": 0, "num_classes": 10},
            realised_rate=0.2,
            save_parquet=lambda dest: dest.write_bytes(b"PAR1"),
        )
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


# ---- what the MLflow UI shows ------------------------------------------------------------------
def test_mlflow_metrics_drop_epoch_and_phase_round_and_put_the_objective_first():
    loop = {
        "epoch": 3.0,
        "lr": 0.0200000001,
        "noise_rate": 20.123456,
        "phase": 1.0,
        "labeled_net1": 4123.0,
        "auc_net1": 0.5389238394711238,
        "precision_net1": 91.23456,
        "lx_net1": 0.123456789,
        "test_acc": 28.000000000000004,
        "val_acc": 30.333333333,
        "epoch_seconds": 12.3456,
        "images_per_second": 1234.567,
        "auc_net2": float("nan"),
    }
    logged = ui.mlflow_metrics(loop)
    assert "epoch" not in logged and "phase" not in logged
    assert list(logged)[:2] == ["val_acc", "test_acc"]  # the objective first
    assert logged["test_acc"] == 28.0 and logged["val_acc"] == 30.33
    assert logged["auc_net1"] == 0.5389 and logged["precision_net1"] == 91.23
    assert logged["noise_rate"] == 20.12 and logged["labeled_net1"] == 4123.0
    assert logged["lx_net1"] == 0.1235 and logged["lr"] == 0.02
    assert logged["epoch_seconds"] == 12.35 and logged["images_per_second"] == 1234.6
    assert logged["auc_net2"] != logged["auc_net2"]  # NaN stays NaN (warmup epochs)
    assert ui.phase_name(loop) == "dividemix" and ui.phase_name({"phase": 0.0}) == "warmup"


def test_trial_runs_are_named_by_what_differs():
    params = {
        "dividemix.lambda_u": 25.0,
        "dividemix.T": 0.5,
        "dividemix.p_threshold": 0.5,
        "run.seed": 3,
        "dividemix.alpha": 4.0,
    }
    searched = ("dividemix.lambda_u", "dividemix.T", "dividemix.p_threshold")
    assert ui.trial_run_name(params, searched) == "λu=25 T=0.5 p=0.5"
    assert ui.trial_run_name({**params, "dividemix.lambda_u": 12.71234}, searched).startswith(
        "λu=12.7 "
    )
    assert ui.trial_run_name(params, (*searched, "run.seed")).endswith(" seed=3")
    assert ui.trial_run_name(params, ()) == ""


def test_the_saved_view_is_what_the_mlflow_ui_reads():
    state = ui.view_state(
        searched=("dividemix.lambda_u", "dividemix.T"),
        metrics=ui.CHART_METRICS,
        parent_run_id="p123",
    )
    key, value = ui.saved_view("dmx sweep", state, created_ms=1_700_000_000_000)
    assert key == "mlflow.sharedViewState.dmx-sweep"
    envelope = json.loads(value)  # MLflow's envelope: name, createdAt (number), state (string)
    assert envelope["name"] == "dmx sweep" and envelope["createdAt"] == 1_700_000_000_000
    assert isinstance(envelope["state"], str) and len(value) < 20_000  # MLflow's size limit
    decoded = json.loads(envelope["state"])
    assert decoded["orderByKey"] == "metrics.`val_acc`" and decoded["orderByAsc"] is False
    assert decoded["selectedColumns"][:4] == [
        "metrics.`val_acc`",
        "metrics.`test_acc`",
        "params.`dividemix.lambda_u`",
        "params.`dividemix.T`",
    ]
    assert decoded["runsExpanded"] == {"p123": True}  # the trials listed under the parent
    charts = decoded["compareRunCharts"]
    assert charts[0]["type"] == "PARALLEL" and charts[0]["selectedMetrics"] == ["val_acc"]
    assert charts[1]["type"] == "LINE" and charts[1]["metricKey"] == "val_acc"
    url = ui.experiment_url("http://127.0.0.1:5000/", "7")
    assert url == (
        "http://127.0.0.1:5000/#/experiments/7/runs?workflowType=machine_learning"
        "&viewStateShareKey=dmx-sweep"
    )


def test_a_trial_reporter_references_the_labels_and_logs_the_phase_as_a_tag(uri, tmp_path):
    exp = tracking.get_or_create_experiment(MlflowClient(uri), "refs", uri)
    logger = tracking.start_trial_run(
        uri, exp, trial_id="t1", parent_run_id="p", flat_config={"a": 1}, run_name="λu=25"
    )
    reporter = tracking.MlflowReporter(logger, copy_labels=False, system_metrics=False)
    state = SimpleNamespace(mlflow_run_id="", epoch=0, metrics_history=[])
    data = _fake_data(tmp_path)
    reporter.start(Config(), data, state)
    reporter.epoch_end(0, {"epoch": 0.0, "lr": 0.02, "phase": 0.0, "val_acc": 10.0}, state)
    reporter.start(Config(), data, state)  # a retry: the input is not logged twice
    reporter.finish()
    client = MlflowClient(uri)
    run = client.get_run(logger.run_id)
    assert run.info.run_name == "λu=25"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.json"}  # no copy
    inputs = run.inputs.dataset_inputs
    assert len(inputs) == 1
    dataset = inputs[0].dataset
    assert dataset.digest == "ab" * 8 and dataset.source_type == "local"
    assert json.loads(dataset.source)["uri"] == data.noisy.path.resolve().as_uri()
    assert json.loads(dataset.profile)["noise_rate_percent"] == 20.0
    assert inputs[0].tags[0].key == "mlflow.data.context"
    assert "epoch" not in run.data.metrics and "phase" not in run.data.metrics
    assert run.data.tags[tracking.PHASE_TAG] == "warmup"
    assert run.data.tags[tracking.LABELS_SHA_TAG] == data.noisy.sha256  # provenance of the labels


def test_a_trial_restarted_from_scratch_gets_a_new_run(uri):
    """resume_sweep(restart_errored=True) restarts an errored trial from epoch 0: its run of the
    earlier driver session is set aside (KILLED, trial tag renamed) and the trial's lookup opens a
    new run; a retry within the new session keeps its run."""
    exp = tracking.get_or_create_experiment(MlflowClient(uri), "restart", uri)
    old = tracking.start_trial_run(
        uri, exp, trial_id="t1", parent_run_id="p", flat_config={},
        tags={tracking.SESSION_TAG: "old"},
    )  # fmt: skip
    old.log_metrics({"test_acc": 10.0}, step=0)
    assert tracking.supersede_trial_run(uri, exp, "t1", session="new")
    client = MlflowClient(uri)
    gone = client.get_run(old.run_id)
    assert gone.info.status == "KILLED" and gone.data.tags[tracking.TRIAL_TAG] == "t1~superseded"
    new = tracking.start_trial_run(
        uri, exp, trial_id="t1", parent_run_id="p", flat_config={},
        tags={tracking.SESSION_TAG: "new"},
    )  # fmt: skip
    assert new.run_id != old.run_id and client.get_metric_history(new.run_id, "test_acc") == []
    # a retry of the restarted trial in the same session: nothing set aside
    assert not tracking.supersede_trial_run(uri, exp, "t1", session="new")
    assert tracking.trial_run_id(uri, exp, "t1") == new.run_id


def test_system_metrics_are_logged_for_a_run_written_by_id(uri, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.2")
    exp = tracking.get_or_create_experiment(MlflowClient(uri), "sys", uri)
    logger = tracking.start_trial_run(uri, exp, trial_id="t", parent_run_id="p", flat_config={})
    system = tracking.SystemMetrics(uri, logger.run_id)
    assert system.start()
    deadline = time.time() + 20
    client = MlflowClient(uri)
    while time.time() < deadline:
        keys = set(client.get_run(logger.run_id).data.metrics)
        if any(k.startswith("system/cpu") for k in keys):
            break
        time.sleep(0.2)
    system.stop()
    logger.finish()
    keys = set(client.get_run(logger.run_id).data.metrics)
    assert (
        "system/cpu_utilization_percentage" in keys
        and "system/system_memory_usage_megabytes" in keys
    )
    monkeypatch.setenv("DMX_SYSTEM_METRICS", "0")
    assert not tracking.SystemMetrics(uri, logger.run_id).start()


def test_readers_never_create_a_store(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        tracking.read_client(None)
    message = str(err.value)
    assert str(tmp_path / "mlflow.db") in message and "--mlflow-uri" in message
    assert "the default" in message
    with pytest.raises(FileNotFoundError, match="MLFLOW_TRACKING_URI"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere.db")
        tracking.download_artifact("0" * 32, "clean_probs.parquet")
    assert not list(tmp_path.iterdir())  # nothing was created
