"""A sweep driver killed mid-sweep (SIGKILL, like a preempted head node) and resumed with
`--resume`: every trial finishes, interrupted trials continue from their checkpoints, and MLflow
holds exactly one run per trial with no repeated steps."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from dmx import tracking
from dmx.state import load_latest_checkpoint
from tests.fixtures import write_cifar_fixture

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3


def _driver(args: list[str], *, marker: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "DMX_TEST_MARKER": marker, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(REPO / "sweeps" / "cifar_asym.py"), *args],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )


def _marked_pids(marker: str) -> list[int]:
    """Processes started by this test (the driver and the Ray processes it spawned): they carry
    our marker in their environment."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if f"DMX_TEST_MARKER={marker}".encode() in (proc / "environ").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _kill_marked(marker: str) -> None:
    for _ in range(20):
        pids = _marked_pids(marker)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)


@pytest.mark.slow
def test_killed_sweep_resumes_every_trial_without_duplicates(tmp_path):
    root = write_cifar_fixture(tmp_path / "data", n_train=300, n_test=100)
    results, uri = tmp_path / "results", f"sqlite:///{tmp_path}/mlflow.db"
    common = ["--storage-path", str(results), "--name", "resumable", "--mlflow-uri", uri, "--quiet"]
    first = [
        "--data-dir", str(root), "--model", "small_cnn", "--epochs", str(EPOCHS),
        "--set", "dividemix.warmup_epochs=1", "--set", "optim.batch_size=32",
        "--set", "optim.warmup_batch_size=64", "--set", "run.device=cpu",
        "--num-samples", "3", "--max-concurrent", "2", "--cpus-per-trial", "1",
        "--grace-period", "10",  # >= the last epoch: no early stopping, all trials finish
        *common,
    ]
    marker = uuid.uuid4().hex
    sweep_dir = results / "resumable"
    try:
        proc = _driver(first, marker=marker, log=tmp_path / "first.log")
        deadline = time.time() + 400
        # Kill once a trial has checkpointed two of its three epochs.
        while not list(sweep_dir.glob("trial_*/checkpoint_000001")):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within 400 s"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _kill_marked(marker)
        before = {p.parent.name: p.name for p in sorted(sweep_dir.glob("trial_*/checkpoint_*"))}
        assert before, "no trial had checkpointed"

        resumed = _driver(["--resume", *common], marker=marker, log=tmp_path / "resume.log")
        assert resumed.wait(timeout=600) == 0, (tmp_path / "resume.log").read_text()[-5000:]
    finally:
        _kill_marked(marker)

    log = (tmp_path / "resume.log").read_text()
    assert "best trial" in log and "trials: 3, errored: 0" in log, log[-3000:]

    # Tune: three trials, each with a final checkpoint of all epochs whose history has no repeats.
    trial_dirs = sorted(sweep_dir.glob("trial_*"))
    assert len(trial_dirs) == 3
    for trial_dir in trial_dirs:
        state = load_latest_checkpoint(sorted(trial_dir.glob("checkpoint_*"))[-1])
        assert state.epoch == EPOCHS
        assert [int(h["epoch"]) for h in state.metrics_history] == list(range(EPOCHS))

    # MLflow: one parent, exactly one run per trial, every step once.
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("resumable")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "sweep"]
    children = [r for r in runs if r.data.tags.get(tracking.ROLE_TAG) == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [r.data.tags[tracking.TRIAL_TAG] for r in children]
    assert sorted(trial_ids) == sorted(d.name.removeprefix("trial_") for d in trial_dirs)
    restored = []
    for run in children:
        assert run.info.status == "FINISHED"
        for key in ("val_acc", "test_acc", "phase", "epoch"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(EPOCHS)), (key, steps)
        if "dmx.restored_from_epoch" in run.data.tags:
            restored.append(int(run.data.tags["dmx.restored_from_epoch"]))
    # Interrupted trials continued from their checkpoints (not from epoch 0).
    assert restored and min(restored) >= 1, restored
