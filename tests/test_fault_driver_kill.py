"""The sweep driver SIGKILLed (like a preempted head node) and resumed with `--resume`.

Two trials run at a time and the driver dies once a trial has checkpointed its first epoch, so
the third trial is suggested by the RESTORED searcher. After `--resume`:
- exactly num_samples trials, all finished, no suggestion repeated (the paper's setting,
  evaluated first, is evaluated once): the Optuna searcher continued;
- every trial that had a checkpoint when the driver died resumes from exactly that checkpoint
  (its first epoch after the restore is the checkpoint's epoch), none from epoch 0, no epoch twice;
- MLflow: one FINISHED parent, exactly one FINISHED run per trial, each step logged once.
"""

from __future__ import annotations

import json
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

EPOCHS = 3
SAMPLES = 3
SEARCHED = ("dividemix.lambda_u", "dividemix.T", "dividemix.p_threshold")
REPO = Path(__file__).resolve().parents[1]


def _driver(args: list[str], *, marker: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "DMX_TEST_MARKER": marker, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(REPO / "sweeps" / "cifar_asym.py"), *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
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


def _rows(trial_dir: Path) -> list[dict]:
    path = trial_dir / "result.json"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.slow
def test_killed_driver_resumes_the_searcher_and_each_trial_from_its_checkpoint(tmp_path):
    root = write_cifar_fixture(tmp_path / "data", n_train=200, n_test=50)
    results, uri = tmp_path / "results", f"sqlite:///{tmp_path}/mlflow.db"
    common = ["--storage-path", str(results), "--name", "driver", "--mlflow-uri", uri, "--quiet"]
    first = [
        "--data-dir",
        str(root),
        "--model",
        "small_cnn",
        "--epochs",
        str(EPOCHS),
        "--set",
        "dividemix.warmup_epochs=1",
        "--set",
        "optim.batch_size=32",
        "--set",
        "optim.warmup_batch_size=64",
        "--set",
        "run.device=cpu",
        "--num-samples",
        str(SAMPLES),
        "--max-concurrent",
        "2",
        "--cpus-per-trial",
        "1",
        "--grace-period",
        "10",
        "--seed",
        "3",
        *common,
    ]
    marker = uuid.uuid4().hex
    sweep_dir = results / "driver"
    start = time.perf_counter()
    try:
        proc = _driver(first, marker=marker, log=tmp_path / "first.log")
        deadline = time.time() + 400
        # Kill the driver (and its Ray) once the first trial has checkpointed its 1st epoch.
        while not list(sweep_dir.glob("trial_*/checkpoint_000000")):
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within 400 s"
            time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _kill_marked(marker)
        killed_at = time.perf_counter() - start
        had = {}  # trial -> epochs in its newest checkpoint when the driver died
        for trial_dir in sweep_dir.glob("trial_*"):
            ckpts = sorted(trial_dir.glob("checkpoint_*"))
            if ckpts:
                had[trial_dir.name] = load_latest_checkpoint(ckpts[-1]).epoch
        trials_before = len(list(sweep_dir.glob("trial_*")))
        assert had and trials_before < SAMPLES, (had, trials_before)

        resumed = _driver(["--resume", *common], marker=marker, log=tmp_path / "resume.log")
        assert resumed.wait(timeout=600) == 0, (tmp_path / "resume.log").read_text()[-5000:]
    finally:
        _kill_marked(marker)
    total = time.perf_counter() - start
    log = (tmp_path / "resume.log").read_text()
    assert "best trial" in log and f"trials: {SAMPLES}, errored: 0" in log, log[-3000:]

    # Exactly num_samples trials, all finished, none with a repeated suggestion.
    trial_dirs = sorted(sweep_dir.glob("trial_*"))
    assert len(trial_dirs) == SAMPLES
    configs = []
    for trial_dir in trial_dirs:
        rows = _rows(trial_dir)
        assert rows and int(rows[-1]["epoch"]) == EPOCHS - 1, trial_dir.name
        configs.append(tuple(round(rows[-1]["config"][k], 9) for k in SEARCHED))
    assert len(set(configs)) == SAMPLES, configs
    paper = (0.0, 0.5, 0.5)  # the preset's own setting, evaluated first
    assert configs.count(paper) == 1, configs

    # Every trial with a checkpoint resumed from exactly it; none from epoch 0.
    for name, epochs_done in had.items():
        rows = _rows(sweep_dir / name)
        seen = [(int(r["epoch"]), r.get("iterations_since_restore")) for r in rows]
        starts = [e for e, since in seen if since == 1]
        if epochs_done < EPOCHS:  # the last attempt started at the checkpoint's epoch
            assert starts and starts[-1] == epochs_done, (name, epochs_done, seen)
        # No epoch trained twice. (Tune's result.json may lack rows the killed driver never
        # wrote; MLflow, written by the trial itself, has every epoch: checked below.)
        epochs = [e for e, _ in seen]
        assert len(epochs) == len(set(epochs)) and epochs[-1] == EPOCHS - 1, (name, seen)

    # Each trial's final checkpoint holds every epoch once.
    for trial_dir in trial_dirs:
        state = load_latest_checkpoint(sorted(trial_dir.glob("checkpoint_*"))[-1])
        assert [int(h["epoch"]) for h in state.metrics_history] == list(range(EPOCHS))

    # MLflow: one FINISHED parent; one FINISHED run per trial with every step once; restored runs
    # tagged with their checkpoint epoch.
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("driver")
    all_runs = client.search_runs([exp.experiment_id])
    parents = [r for r in all_runs if r.data.tags.get(tracking.ROLE_TAG) == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_runs = [r for r in all_runs if r.data.tags.get(tracking.ROLE_TAG) == "trial"]
    runs = {r.data.tags[tracking.TRIAL_TAG]: r for r in trial_runs}
    assert len(runs) == len(trial_runs)
    assert sorted(runs) == sorted(d.name.removeprefix("trial_") for d in trial_dirs)
    for run in trial_runs:
        assert run.info.status == "FINISHED"
        for key in ("val_acc", "test_acc", "phase", "epoch"):
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(EPOCHS)), (key, steps)
    for name, epochs_done in had.items():
        if epochs_done < EPOCHS:
            run = runs[name.removeprefix("trial_")]
            assert int(run.data.tags["dmx.restored_from_epoch"]) == epochs_done
    print(
        f"\ndriver kill: killed after {killed_at:.0f} s with {trials_before} trial(s) started, "
        f"checkpoints {had}; after --resume {SAMPLES} distinct trials, epochs re-run 0, "
        f"total {total:.0f} s"
    )
