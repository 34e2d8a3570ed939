"""A trial's worker process killed for real (SIGKILL, like a preempted machine) in a local Ray
sweep: Tune retries it (FailureConfig) from its last checkpoint, and the finished trial is
bit-identical to the same config trained without interruption by `fit()` in this process. A
second test corrupts the checkpoint Tune will restore from before killing: the trial falls back to
the previous good checkpoint instead of crashing or starting from epoch 0.

The trial's model factory (`recorded_small_cnn`, an import-path model) appends the pid and Ray node
of the process that builds it to a file: that is how the tests find the worker to kill and count
the attempts. Everything is small: a 200-image CIFAR-format fixture, the small CNN, 1 trial.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from dmx import sweep as dmx_sweep
from dmx import tracking
from dmx.config import Config
from dmx.models import create_model
from dmx.presets import get_preset
from dmx.state import load_latest_checkpoint
from dmx.sweep.spec import SPEC_FILE
from dmx.train import fit
from tests.fixtures import write_cifar_fixture

PID_FILE_ENV = "DMX_TEST_PID_FILE"
EPOCHS = 6  # room after the second kill (an idle machine runs an epoch of this fixture in < 1 s)
TIMING = {"epoch_seconds", "images_per_second"}


def recorded_small_cnn(num_classes: int, in_channels: int = 3):
    """small_cnn, recording which process (and Ray node) built it: one line per net per attempt."""
    path = os.environ.get(PID_FILE_ENV)
    if path:
        node = ""
        try:
            import ray

            if ray.is_initialized():
                node = ray.get_runtime_context().get_node_id()
        except Exception:  # noqa: BLE001 - outside Ray there is no node
            node = ""
        with open(path, "a") as fh:
            fh.write(json.dumps({"pid": os.getpid(), "node": node}) + "\n")
    return create_model("small_cnn", num_classes=num_classes, in_channels=in_channels)


def fault_config(root: Path) -> Config:
    """cifar10-asym-0.4 at test scale, deterministic on the CPU."""
    return get_preset("cifar10-asym-0.4").with_overrides(
        {
            "data.root": str(root),
            "noise.cache_dir": str(root / "noise"),
            "model.name": "tests.test_fault_trial_kill:recorded_small_cnn",
            "run.epochs": EPOCHS,
            "dividemix.warmup_epochs": 1,
            "optim.batch_size": 32,
            "optim.warmup_batch_size": 64,
            "run.device": "cpu",
            "run.deterministic": True,
            "data.val_fraction": 0.05,  # the sweep's objective (dmx train's default is 0)
        }
    )


# ---- helpers shared with the node-loss test --------------------------------------------------
def attempts(pid_file: Path) -> list[dict]:
    """One record per attempt of the trial (the factory runs twice per attempt: two nets). The
    driver, this test's process, builds the nets too when it logs the best trial's model to
    MLflow: that is no attempt."""
    if not pid_file.exists():
        return []
    rows = [json.loads(x) for x in pid_file.read_text().splitlines() if x.strip()]
    rows = [r for r in rows if r["pid"] != os.getpid()]
    out: list[dict] = []
    for row in rows:
        if not out or out[-1]["pid"] != row["pid"]:
            out.append(row)
    return out


def results(sweep_dir: Path) -> list[dict]:
    """The trial's rows of Tune's result.json (one per report, written by the driver)."""
    files = list(sweep_dir.glob("trial_*/result.json"))
    if not files:
        return []
    rows = []
    for line in files[0].read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            break
    return rows


def wait_for(predicate, *, timeout: float, what: str, alive=lambda: True) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if not alive():
            raise AssertionError(f"the sweep ended while waiting for {what}")
        if time.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


def restarts(rows: list[dict]) -> list[int]:
    """The epoch each restored attempt started at (Tune resets iterations_since_restore)."""
    return [int(r["epoch"]) for r in rows[1:] if r.get("iterations_since_restore") == 1]


def current_attempt(rows: list[dict]) -> list[dict]:
    """The rows reported by the latest attempt."""
    starts = [i for i, r in enumerate(rows) if r.get("iterations_since_restore") == 1]
    return rows[starts[-1] :] if starts else []


def reference_state(cfg: Config):
    """The same trial trained without interruption, in this process, on one thread (as the
    trial: cpus_per_trial=1), so float sums run in the same order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fit(cfg)
    finally:
        torch.set_num_threads(threads)


def assert_identical_to_reference(sweep_dir: Path, state) -> None:
    spec = json.loads((sweep_dir / SPEC_FILE).read_text())
    trial_config = results(sweep_dir)[-1]["config"]
    cfg = Config.from_flat({**spec["base_config"], **trial_config})
    ref = reference_state(cfg)
    assert state.epoch == ref.epoch == EPOCHS
    for name in ("net1", "net2", "opt1"):
        a, b = getattr(ref, name), getattr(state, name)
        if name.startswith("opt"):
            a, b = a["state"], b["state"]
            for k in a:
                for t in a[k]:
                    assert torch.equal(a[k][t], b[k][t]), (name, k, t)
            continue
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    strip = lambda h: [{k: v for k, v in m.items() if k not in TIMING} for m in h]  # noqa: E731
    assert strip(ref.metrics_history) == strip(state.metrics_history)
    assert torch.equal(ref.clean_prob1, state.clean_prob1)


@pytest.fixture()
def sweep_env(tmp_path, monkeypatch):
    """Tiny data, a pid file the trial writes to, and a local Ray shut down whatever happens."""
    import ray

    root = write_cifar_fixture(tmp_path / "data", n_train=200, n_test=50)
    pid_file = tmp_path / "pids.jsonl"
    monkeypatch.setenv(PID_FILE_ENV, str(pid_file))
    # Ray workers inherit this environment: they import the model factory from this repo.
    repo = str(Path(__file__).resolve().parents[1])
    paths = [repo, os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, paths)))
    ray.init(num_cpus=1, include_dashboard=False, configure_logging=False)
    try:
        yield root, pid_file
    finally:
        ray.shutdown()


def run_in_thread(fn) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def target():
        try:
            out["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def finished_sweep(thread: threading.Thread, out: dict):
    """Wait for the sweep started by `run_in_thread`; its result, which must have no errors."""
    thread.join(timeout=600)
    assert not thread.is_alive(), "the sweep did not finish"
    if "error" in out:
        raise out["error"]
    result = out["result"]
    assert result.num_errors == 0 and not result.interrupted
    return result


def _sweep(tmp_path: Path, root: Path, name: str, max_failures: int):
    return dmx_sweep.run_sweep(
        fault_config(root),
        dmx_sweep.SweepOptions(
            name=name,
            storage_path=tmp_path / "results",
            num_samples=1,
            grace_period=100,
            max_failures=max_failures,
        ),
        mlflow_uri=f"sqlite:///{tmp_path}/mlflow.db",
        verbose=0,
    )


def _kill(pid: int) -> None:
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)


# ---- the tests ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_trial_killed_twice_resumes_from_its_last_checkpoint(tmp_path, sweep_env):
    root, pid_file = sweep_env
    sweep_dir = tmp_path / "results" / "killed"
    start = time.perf_counter()
    thread, out = run_in_thread(lambda: _sweep(tmp_path, root, "killed", max_failures=3))
    alive = thread.is_alive
    killed_after = []  # the last epoch the driver had recorded when each kill was sent
    # Kill 1: after the first checkpoint. Kill 2: after the restored attempt's first epoch.
    for n_attempt, since_restore in ((1, 1), (2, 1)):
        wait_for(
            lambda n=n_attempt: len(attempts(pid_file)) >= n,
            timeout=300,
            what=f"attempt {n_attempt}",
            alive=alive,
        )

        def ready(n_attempt=n_attempt, since_restore=since_restore):
            rows = results(sweep_dir)
            return (
                len(restarts(rows)) == n_attempt - 1 and len(current_attempt(rows)) >= since_restore
            )

        wait_for(
            ready, timeout=300, what=f"{since_restore} epochs of attempt {n_attempt}", alive=alive
        )
        time.sleep(0.05)  # into the next epoch (it starts right after the report): a mid-epoch kill
        killed_after.append(int(results(sweep_dir)[-1]["epoch"]))
        _kill(attempts(pid_file)[-1]["pid"])
    result = finished_sweep(thread, out)
    elapsed = time.perf_counter() - start
    assert result.best_params

    # Three attempts (two retries), each restored attempt started right after the last epoch the
    # driver had checkpointed before the kill: epochs before the checkpoint were not re-run.
    pids = [a["pid"] for a in attempts(pid_file)]
    assert len(pids) == 3 and len(set(pids)) == 3, pids
    rows = results(sweep_dir)
    started = restarts(rows)
    assert len(started) == 2 and all(s >= 1 for s in started), started
    for resumed_at, last_seen in zip(started, killed_after):
        assert resumed_at >= last_seen + 1, (started, killed_after)
    epochs = [int(r["epoch"]) for r in rows]
    rerun = len(epochs) - EPOCHS
    assert sorted(set(epochs)) == list(range(EPOCHS))
    print(
        f"\ntrial kill: kills after epochs {killed_after}, restarts at {started}, "
        f"epochs re-run {rerun}, retries {len(pids) - 1}, {elapsed:.0f} s"
    )

    # The final checkpoint is the uninterrupted run, bit for bit.
    trial_dir = next(sweep_dir.glob("trial_*"))
    state = load_latest_checkpoint(sorted(trial_dir.glob("checkpoint_*"))[-1])
    assert [int(h["epoch"]) for h in state.metrics_history] == list(range(EPOCHS))

    # MLflow: one trial run, FINISHED, each epoch logged once, restore recorded.
    client = MlflowClient(result.tracking_uri)
    exp = client.get_experiment_by_name("killed")
    runs = [
        r
        for r in client.search_runs([exp.experiment_id])
        if r.data.tags.get(tracking.ROLE_TAG) == "trial"
    ]
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_acc")]
    assert sorted(steps) == list(range(EPOCHS))
    assert int(runs[0].data.tags["dmx.restored_from_epoch"]) >= 1

    assert_identical_to_reference(sweep_dir, state)


@pytest.mark.slow
def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, sweep_env):
    root, pid_file = sweep_env
    sweep_dir = tmp_path / "results" / "corrupt"
    thread, out = run_in_thread(lambda: _sweep(tmp_path, root, "corrupt", max_failures=1))
    wait_for(
        lambda: len(results(sweep_dir)) >= 2,
        timeout=300,
        what="2 reported epochs",
        alive=thread.is_alive,
    )
    pid = attempts(pid_file)[-1]["pid"]
    os.kill(pid, signal.SIGSTOP)  # freeze the worker: the driver's latest checkpoint stays put
    try:
        time.sleep(2)  # let the driver record what it had already received
        last = results(sweep_dir)[-1]
        latest = next(sweep_dir.glob("trial_*")) / last["checkpoint_dir_name"]
        (ckpt,) = latest.glob("ckpt-*.pt")
        ckpt.write_bytes(ckpt.read_bytes()[:1000])  # truncated, as by a full disk
        corrupted_epoch = int(last["epoch"])
    finally:
        _kill(pid)
    finished_sweep(thread, out)

    # One retry, resumed from the checkpoint BEFORE the truncated one: exactly that epoch re-ran.
    assert len(attempts(pid_file)) == 2
    rows = results(sweep_dir)
    assert restarts(rows) == [corrupted_epoch], (restarts(rows), corrupted_epoch)
    trial_dir = next(sweep_dir.glob("trial_*"))
    state = load_latest_checkpoint(sorted(trial_dir.glob("checkpoint_*"))[-1])
    assert_identical_to_reference(sweep_dir, state)
