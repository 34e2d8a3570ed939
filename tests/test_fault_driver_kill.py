"""The sweep driver SIGKILLed and resumed: what tests/test_sweep_resume.py does not already check.

test_sweep_resume.py proves (2 concurrent trials): every trial finishes, one MLflow run per trial,
one value per step, FINISHED, restored trials start from epoch >= 1. This test adds, with trials
run ONE AT A TIME so that most of them are suggested by the RESTORED searcher:
- the Optuna searcher continues after the restore: no suggestion is repeated (the paper's
  setting, evaluated first, is evaluated once), and the total is exactly num_samples;
- every trial that had a checkpoint when the driver died resumes from exactly that checkpoint
  (its first epoch after the restore is the checkpoint's epoch), none from epoch 0.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from dmx import tracking
from dmx.state import load_latest_checkpoint
from tests.fixtures import write_cifar_fixture
from tests.test_sweep_resume import _driver, _kill_marked

EPOCHS = 3
SAMPLES = 3
SEARCHED = ("dividemix.lambda_u", "dividemix.T", "dividemix.p_threshold")


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
        "--data-dir", str(root), "--model", "small_cnn", "--epochs", str(EPOCHS),
        "--set", "dividemix.warmup_epochs=1", "--set", "optim.batch_size=32",
        "--set", "optim.warmup_batch_size=64", "--set", "run.device=cpu",
        "--num-samples", str(SAMPLES), "--max-concurrent", "1", "--cpus-per-trial", "1",
        "--grace-period", "10", "--seed", "3", *common,
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

    # MLflow: one run per trial, FINISHED, restored runs tagged with their checkpoint epoch.
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("driver")
    runs = {r.data.tags[tracking.TRIAL_TAG]: r for r in client.search_runs([exp.experiment_id])
            if r.data.tags.get(tracking.ROLE_TAG) == "trial"}
    assert sorted(runs) == sorted(d.name.removeprefix("trial_") for d in trial_dirs)
    for name, epochs_done in had.items():
        run = runs[name.removeprefix("trial_")]
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")]
        assert sorted(steps) == list(range(EPOCHS)), (name, steps)
        if epochs_done < EPOCHS:
            assert int(run.data.tags["dmx.restored_from_epoch"]) == epochs_done
    print(f"\ndriver kill: killed after {killed_at:.0f} s with {trials_before} trial(s) started, "
          f"checkpoints {had}; after --resume {SAMPLES} distinct trials, epochs re-run 0, "
          f"total {total:.0f} s")
