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

import pyarrow.fs as pafs
import pytest
from mlflow import MlflowClient

from dmx import tracking
from dmx.state import CheckpointError, checkpoint_path, load_checkpoint, load_latest_checkpoint
from dmx.sweep.recovery import trial_checkpoints
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


def _loads(folder: Path, epoch: int) -> bool:
    try:
        return load_checkpoint(checkpoint_path(folder, epoch)).epoch == epoch
    except CheckpointError:
        return False


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
        # trial -> epochs in its newest INTACT checkpoint when the driver died. The kill may
        # land while Tune copies a checkpoint to storage: that copy is torn, Tune never recorded
        # it, and the trial resumes from the newest intact one (or from scratch: `torn`).
        had, torn = {}, []
        for trial_dir in sweep_dir.glob("trial_*"):
            intact = [
                epoch
                for epoch, folder in trial_checkpoints(pafs.LocalFileSystem(), str(trial_dir))
                if _loads(Path(folder), epoch)
            ]
            if intact:
                had[trial_dir.name] = intact[0]
            elif list(trial_dir.glob("checkpoint_*/ckpt-*.pt")):
                torn.append(trial_dir.name)
        trials_before = len(list(sweep_dir.glob("trial_*")))
        assert (had or torn) and trials_before < SAMPLES, (had, torn, trials_before)

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
    for name in torn:  # its only checkpoint was half-copied: it started again from epoch 0
        seen = [
            (int(r["epoch"]), r.get("iterations_since_restore")) for r in _rows(sweep_dir / name)
        ]
        assert [e for e, _ in seen] == list(range(EPOCHS)), (name, seen)

    # Each trial's final checkpoint holds every epoch once. It is found by the epoch in its file
    # name, as the trials' recovery finds it: after the resume, Tune's folder counter may restart
    # below the existing folders and put a new checkpoint into an old folder (issue 11, item 5).
    reused = 0
    for trial_dir in trial_dirs:
        (epoch, newest), *_ = trial_checkpoints(pafs.LocalFileSystem(), str(trial_dir))
        state = load_latest_checkpoint(Path(newest))
        assert epoch == state.epoch == EPOCHS
        assert [int(h["epoch"]) for h in state.metrics_history] == list(range(EPOCHS))
        reused += sum(len(list(d.glob("ckpt-*.pt"))) > 1 for d in trial_dir.glob("checkpoint_*"))

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
        for key in ("val_acc", "test_acc", "lr", "noise_rate"):  # epoch, phase: step and tag
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert sorted(steps) == list(range(EPOCHS)), (key, steps)
    for name, epochs_done in had.items():
        if epochs_done < EPOCHS:
            run = runs[name.removeprefix("trial_")]
            assert int(run.data.tags["dmx.restored_from_epoch"]) == epochs_done
    print(
        f"\ndriver kill: killed after {killed_at:.0f} s with {trials_before} trial(s) started, "
        f"checkpoints {had}, torn copies {torn}; after --resume {SAMPLES} distinct trials, "
        "no checkpointed epoch re-run, "
        f"checkpoint folders written twice {reused}, total {total:.0f} s"
    )


# ---- killed right after writing its spec, before Tune's first state save (issue 11, item 6) ----
class _DriverKilled(BaseException):
    """Stands for a SIGKILL of the driver: nothing after it runs in the driver."""


@pytest.mark.slow
def test_driver_killed_before_tunes_first_save_resumes_and_starts_again(tmp_path, monkeypatch):
    """The spec and Tune's tuner.pkl are written, Tune's experiment state is not: `--resume` ran
    Ray's failing restore ("Failed to restore the run state") and ended INTERRUPTED, and a new
    start said "already exists" for ever. Both now start the trials cleanly."""
    import ray

    from dmx import sweep as dmx_sweep
    from dmx.presets import get_preset
    from dmx.sweep import driver
    from dmx.sweep.spec import has_tune_state, read_spec

    root = write_cifar_fixture(tmp_path / "data", n_train=200, n_test=50)
    cfg = get_preset("cifar10-asym-0.4").with_overrides(
        {
            "data.root": str(root),
            "noise.cache_dir": str(root / "noise"),
            "model.name": "small_cnn",
            "run.epochs": 2,
            "dividemix.warmup_epochs": 1,
            "dividemix.loss_history_window": "auto",  # trials get the derived values
            "dividemix.warmup_confidence_penalty": "auto",
            "optim.batch_size": 32,
            "optim.warmup_batch_size": 64,
            "run.device": "cpu",
            "data.val_fraction": 0.05,
        }
    )
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)

    def killed_start(name: str) -> Path:
        options = dmx_sweep.SweepOptions(
            name, tmp_path / "results", num_samples=2, max_concurrent=2, grace_period=100
        )
        with monkeypatch.context() as m:
            m.setattr(driver, "_fit", lambda spec, tuner: (_ for _ in ()).throw(_DriverKilled()))
            with pytest.raises(_DriverKilled):
                dmx_sweep.run_sweep(cfg, options, mlflow_uri=uri, verbose=0)
        folder = tmp_path / "results" / name
        assert (folder / "dmx_sweep.json").is_file() and (folder / "tuner.pkl").is_file()
        assert not has_tune_state(str(folder))
        return folder

    def check(name: str, result) -> None:
        assert result.num_trials == 2 and result.num_errors == 0 and not result.interrupted
        assert result.best_params and result.best_metrics["epoch"] == 1
        assert len(list((tmp_path / "results" / name).glob("trial_*"))) == 2
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        roles = sorted((r.data.tags[tracking.ROLE_TAG], r.info.status) for r in runs)
        assert roles == [("sweep", "FINISHED"), ("trial", "FINISHED"), ("trial", "FINISHED")]
        for run in runs:
            if run.data.tags[tracking.ROLE_TAG] == "trial":
                assert run.data.params["dividemix.loss_history_window"] == "1"
                assert run.data.params["dividemix.warmup_confidence_penalty"] == "True"

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        start = time.perf_counter()
        # (--resume after this moment: test_driver_sigkilled_before_tunes_first_save_resumes,
        # with a real SIGKILL.) Started again WITHOUT --resume: no "already exists", it runs.
        folder = killed_start("again")
        # The driver stored concrete values, never "auto" (issue 10: ASHA's clock, trial params).
        stored = read_spec(str(folder)).base_config
        assert stored["dividemix.loss_history_window"] == 1
        assert stored["dividemix.warmup_confidence_penalty"] is True
        options = dmx_sweep.SweepOptions(
            "again", tmp_path / "results", num_samples=2, max_concurrent=2, grace_period=100
        )
        with pytest.warns(UserWarning, match="before any trial ran"):
            check("again", dmx_sweep.run_sweep(cfg, options, mlflow_uri=uri, verbose=0))
        # And once Tune has saved its state, a new start of that name is refused.
        with pytest.raises(dmx_sweep.SweepError, match="already exists"):
            dmx_sweep.run_sweep(cfg, options, mlflow_uri=uri, verbose=0)
    finally:
        ray.shutdown()
    print(f"\nkilled before Tune's first save, started again: {time.perf_counter() - start:.0f} s")


@pytest.mark.slow
def test_driver_sigkilled_before_tunes_first_save_resumes(tmp_path):
    """The same moment as above, with a real SIGKILL of the driver process (and its Ray): the
    spec is written, Tune's experiment state is not. `--resume` runs every trial to the end."""
    from dmx.sweep.spec import SPEC_FILE, has_tune_state

    root = write_cifar_fixture(tmp_path / "data", n_train=200, n_test=50)
    marker = uuid.uuid4().hex
    for attempt in range(3):  # the window is a second or two: try again if Tune saved first
        results, uri = tmp_path / f"results{attempt}", f"sqlite:///{tmp_path}/mlflow{attempt}.db"
        common = ["--storage-path", str(results), "--name", "early", "--mlflow-uri", uri, "--quiet"]
        first = [
            "--data-dir", str(root), "--model", "small_cnn", "--epochs", "2",
            "--set", "dividemix.warmup_epochs=1", "--set", "run.device=cpu",
            "--num-samples", "2", "--max-concurrent", "2", "--cpus-per-trial", "1", *common,
        ]  # fmt: skip
        folder = results / "early"
        try:
            proc = _driver(first, marker=marker, log=tmp_path / f"first{attempt}.log")
            deadline = time.time() + 300
            while not ((folder / SPEC_FILE).is_file() and not has_tune_state(str(folder))):
                assert proc.poll() is None, (tmp_path / f"first{attempt}.log").read_text()[-3000:]
                assert time.time() < deadline, "the driver never wrote its spec"
                time.sleep(0.01)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            _kill_marked(marker)
            if has_tune_state(str(folder)):
                continue  # Tune saved between the check and the kill: not this moment
            resumed = _driver(["--resume", *common], marker=marker, log=tmp_path / "resume.log")
            assert resumed.wait(timeout=600) == 0, (tmp_path / "resume.log").read_text()[-5000:]
        finally:
            _kill_marked(marker)
        log = (tmp_path / "resume.log").read_text()
        assert "trials: 2, errored: 0" in log, log[-3000:]
        for trial_dir in sorted(folder.glob("trial_*")):
            assert int(_rows(trial_dir)[-1]["epoch"]) == 1
        client = MlflowClient(uri)
        runs = client.search_runs([client.get_experiment_by_name("early").experiment_id])
        assert sorted(r.info.status for r in runs) == ["FINISHED"] * 3  # parent + 2 trials
        return
    pytest.fail("Tune saved its state before every attempted kill (3 tries)")
