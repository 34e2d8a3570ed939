"""`dmx train` under a hostile user (issue 11): one writer per run directory, bad input refused
before anything is written, Ctrl-C as one line + the exact resume command, a run folder used again
is a NEW MLflow run, metrics.jsonl repaired from the checkpoint, a non-UTF-8 --out with MLflow."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from dmx.cli import main
from dmx.config import Config
from dmx.presets import get_preset
from dmx.reporting import RunDirBusyError, RunDirLock, RunDirReporter, write_metrics
from dmx.state import TrainState, load_latest_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
HOLD_LOCK = (
    "import sys, time\n"
    "from dmx.reporting import RunDirLock\n"
    "RunDirLock(sys.argv[1]).acquire()\n"
    "print('locked', flush=True)\n"
    "time.sleep(300)\n"
)


def _uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _train_args(tmp_path: Path, out: Path, *extra: str, mlflow: bool = True) -> list[str]:
    return [
        "train",
        "--preset",
        "digits-sym-0.5",
        "--out",
        str(out),
        "--quiet",
        "--set",
        "dividemix.warmup_epochs=1",
        "--set",
        f"noise.cache_dir={tmp_path / 'noise'}",
        *(["--mlflow-uri", _uri(tmp_path)] if mlflow else ["--no-mlflow"]),
        *extra,
    ]


def _train_runs(tmp_path: Path) -> list:
    client = MlflowClient(_uri(tmp_path))
    exp = client.get_experiment_by_name("dmx-train")
    return client.search_runs([exp.experiment_id]) if exp else []


def _one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1, err
    return lines[0]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


# ---- one writer per run directory -------------------------------------------------------------
def test_a_second_writer_is_refused_and_the_lock_dies_with_its_holder(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True, env=_env()
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = main(_train_args(tmp_path, run, "--epochs", "1"))
        line = _one_line(capsys.readouterr().err)
        assert code == 2
        assert f"{run} is in use by another dmx train (pid {holder.pid} on " in line, line
        assert [p.name for p in run.iterdir()] == [".lock"]  # nothing written
        assert not (tmp_path / "mlflow.db").exists()  # no MLflow store touched
        with pytest.raises(RunDirBusyError):
            RunDirLock(run).acquire()
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own
        holder.wait()
    with RunDirLock(run):  # the kernel released the dead holder's lock
        with pytest.raises(RunDirBusyError, match=f"pid {os.getpid()} on "):
            RunDirLock(run).acquire()


def test_two_dmx_train_on_one_folder_one_runs_the_other_is_refused(tmp_path):
    """Two real `dmx train` processes started together on one --out (issue 11, item 3): before
    the lock both exited 0 and left a mixture of their files."""
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "dmx.cli", *_train_args(tmp_path, run, "--epochs", "2",
                                                          mlflow=False)]  # fmt: skip
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        for _ in range(2)
    ]
    results = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, _, err in results if code == 2)
    assert "is in use by another dmx train" in _one_line(refused)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1]  # one run's epochs, once each
    assert load_latest_checkpoint(run / "checkpoints").epoch == 2


# ---- bad input: one line, exit 2, nothing written ---------------------------------------------
@pytest.mark.parametrize("case", ["file", "under_a_file", "unwritable"])
def test_an_unusable_out_is_refused_before_anything_starts(tmp_path, capsys, case):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    if case == "file":
        out, fragment = blocker, "is a file, not a folder"
    elif case == "under_a_file":
        out, fragment = blocker / "run", "cannot create the folder (Not a directory)"
    elif os.geteuid() == 0:  # root writes through permission bits; /proc takes no new folder
        out, fragment = Path("/proc/dmx-no-such/run"), "cannot create the folder"
    else:
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        out, fragment = tmp_path / "ro" / "run", "cannot create the folder (Permission denied)"
    code = main(_train_args(tmp_path, out, "--epochs", "1"))
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and fragment in line and str(out) in line and "--out" in line, line
    assert not (tmp_path / "mlflow.db").exists()  # refused before the store was touched
    assert not (tmp_path / "noise").exists()  # and before any data was prepared
    assert blocker.read_text() == "not a folder"


def test_resume_cannot_shrink_the_run_below_its_checkpoint(tmp_path, capsys):
    cfg = get_preset("digits-sym-0.5").resolved()  # 30 epochs
    run = tmp_path / "run"
    save_checkpoint(TrainState(config=cfg.to_flat(), epoch=30), run / "checkpoints")
    (run / "config.json").write_text(cfg.to_json() + "\n")
    before = (run / "config.json").read_bytes()
    code = main(["train", "--out", str(run), "--resume", "--epochs", "5", "--no-mlflow", "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert code == 2, line
    assert "has completed 30 epochs" in line and "run.epochs=5" in line and "--epochs 30" in line
    assert (run / "config.json").read_bytes() == before  # the record stays straight
    assert load_latest_checkpoint(run / "checkpoints").epoch == 30


def test_a_subset_larger_than_the_data_is_refused_and_opens_no_run(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(_train_args(tmp_path, run, "--subset", "5000"))
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "data.subset=5000" in line and "(1397 samples)" in line, line
    assert _train_runs(tmp_path) == []  # the MLflow run opens only once training starts
    assert not (run / "checkpoints").exists() and not (run / "config.json").exists()


def test_ctrl_c_message_before_a_checkpoint_and_after_an_extending_resume(
    tmp_path, capsys, monkeypatch
):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("dmx.train.fit", interrupted)
    run = tmp_path / "run"
    assert main(_train_args(tmp_path, run, "--epochs", "3", mlflow=False)) == 130
    line = _one_line(capsys.readouterr().err)
    assert "interrupted before the first epoch ended" in line and "same command again" in line

    cfg = get_preset("digits-sym-0.5").with_overrides({"run.epochs": 3}).resolved()
    save_checkpoint(TrainState(config=cfg.to_flat(), epoch=2), run / "checkpoints")
    resume = ["train", "--out", str(run), "--resume", "--epochs", "10", "--device", "cpu"]
    assert main([*resume, "--no-mlflow", "--quiet"]) == 130
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("dmx train: interrupted; 2 completed epochs are saved."), line
    # The checkpoint still says 3 epochs: the command carries the extension to 10.
    assert shlex.split(line.split("Continue with: ", 1)[1]) == [
        "dmx",
        *resume,
        "--no-mlflow",
    ]
    with RunDirLock(run):  # released on the way out
        pass


# ---- the run directory agrees with the state it resumes ---------------------------------------
def test_run_dir_start_rewrites_metrics_from_the_state(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    labels = run / "noisy_labels.parquet"
    labels.write_bytes(b"PAR1")
    data = SimpleNamespace(noisy=SimpleNamespace(path=labels))  # already in place: not copied
    history = [{"epoch": 0.0, "test_acc": 10.0}, {"epoch": 1.0, "test_acc": 20.0}]
    write_metrics(run / "metrics.jsonl", history)
    whole = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(whole[:-9])  # killed while the file was being replaced
    (run / "clean_probs.parquet").write_bytes(b"final table")
    rep = RunDirReporter(run, keep_checkpoints=2)
    two = Config().with_overrides({"run.epochs": 2})

    # --resume of the finished run: the file is whole again, the final table stays.
    rep.start(two, data, SimpleNamespace(epoch=2, metrics_history=history))
    assert (run / "metrics.jsonl").read_text() == whole
    assert (run / "clean_probs.parquet").exists()
    # Extended to 4 epochs: the table of epoch 2 would be outdated, so it goes.
    rep.start(
        two.with_overrides({"run.epochs": 4}),
        data,
        SimpleNamespace(epoch=2, metrics_history=history),
    )
    assert not (run / "clean_probs.parquet").exists()
    # A new run in a folder whose checkpoints were deleted: no old epoch lines survive.
    rep.start(two, data, SimpleNamespace(epoch=0, metrics_history=[]))
    assert (run / "metrics.jsonl").read_text() == ""


# ---- real runs ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_ctrl_c_is_one_line_with_the_resume_command_and_the_resumed_run_ends_clean(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dmx.cli",
            *_train_args(tmp_path, run, "--subset", "200", "--epochs", "30"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=tmp_path,
    )
    deadline = time.monotonic() + 180
    while not (run / "checkpoints" / "ckpt-0001.pt").exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint after 180 s"
        time.sleep(0.02)
    # While it trains, the run directory is locked by it.
    with pytest.raises(RunDirBusyError, match=f"pid {proc.pid} on "):
        RunDirLock(run).acquire()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if "interrupted" in x]
    done = load_latest_checkpoint(run / "checkpoints").epoch
    assert 1 <= done < 30
    assert line.startswith(f"dmx train: interrupted; {done} completed epochs are saved."), line
    command = shlex.split(line.split("Continue with: ", 1)[1])
    assert command == [
        "dmx",
        "train",
        "--out",
        str(run),
        "--resume",
        "--mlflow-uri",
        _uri(tmp_path),
    ]
    client = MlflowClient(_uri(tmp_path))
    (killed,) = _train_runs(tmp_path)
    assert killed.info.status == "KILLED"
    assert killed.data.tags["dmx.failure_reason"].startswith("interrupted")

    # The printed command (ended one epoch later, to keep the test short) finishes the SAME run.
    assert main([*command[1:], "--epochs", str(done + 1), "--quiet"]) == 0
    (finished,) = _train_runs(tmp_path)
    assert finished.info.run_id == killed.info.run_id and finished.info.status == "FINISHED"
    assert "dmx.failure_reason" not in finished.data.tags
    assert finished.data.tags["dmx.previous_failure_reason"].startswith("interrupted")
    steps = [m.step for m in client.get_metric_history(killed.info.run_id, "test_acc")]
    assert steps == list(range(done + 1))
    metrics = (run / "metrics.jsonl").read_text()
    assert [json.loads(x)["epoch"] for x in metrics.splitlines()] == list(range(done + 1))
    assert json.loads((run / "config.json").read_text())["run.epochs"] == done + 1

    # metrics.jsonl cut mid-line; --resume of the finished run repairs it from the checkpoint.
    (run / "metrics.jsonl").write_text(metrics[: len(metrics) - 25])
    assert main([*command[1:], "--quiet"]) == 0
    assert (run / "metrics.jsonl").read_text() == metrics
    assert len(_train_runs(tmp_path)) == 1


@pytest.mark.slow
def test_a_reused_non_utf8_run_folder_is_a_new_mlflow_run(tmp_path):
    out = tmp_path / os.fsdecode(b"run-\xff")  # a name that is not UTF-8, with MLflow on
    argv = [os.fsencode(a) for a in _train_args(tmp_path, out, "--subset", "100", "--epochs", "1")]
    first = subprocess.run(
        [os.fsencode(sys.executable), b"-m", b"dmx.cli", *argv],
        capture_output=True,
        env=_env(),
        cwd=tmp_path,
        timeout=300,
    )
    assert first.returncode == 0, first.stderr.decode(errors="replace")
    assert json.loads(first.stdout)["epochs"] == 1
    (old,) = _train_runs(tmp_path)

    # `rm -rf RUN_DIR` and the same command again: a new run, the old one untouched.
    shutil.rmtree(out)
    assert main(_train_args(tmp_path, out, "--subset", "100", "--epochs", "1")) == 0
    runs = {r.info.run_id: r for r in _train_runs(tmp_path)}
    assert len(runs) == 2 and old.info.run_id in runs
    new = runs[next(k for k in runs if k != old.info.run_id)]
    client = MlflowClient(_uri(tmp_path))
    for r in (old, new):
        assert runs[r.info.run_id].info.status == "FINISHED"
        assert r.data.tags["dmx.run_dir"] == f"{tmp_path.resolve()}/run-\\xff"
        assert [m.step for m in client.get_metric_history(r.info.run_id, "test_acc")] == [0]
    assert load_latest_checkpoint(out / "checkpoints").mlflow_run_id == new.info.run_id
