"""Reporters: where the loop's results go. `fit` writes no files; it hands each epoch to one
`Reporter` (start, epoch_end per epoch, run_end with the per-sample table) and the reporter writes
the run directory, logs to MLflow (`dmx.tracking.MlflowReporter`), reports to Ray Tune
(`dmx.sweep.trial.TuneReporter`) or draws a progress bar. `Reporters` fans one call out to many.
`RunDirLock` keeps a second writer out of a run directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dmx.files import atomic_write_bytes, write_parquet_atomic

if TYPE_CHECKING:  # annotations only: dmx.tracking imports this module, and stays torch-free
    import pyarrow as pa

    from dmx.config import Config
    from dmx.data import ImageDataset
    from dmx.prepare import PreparedData
    from dmx.state import TrainState

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
NOISY_LABELS_FILE = "noisy_labels.parquet"
CLEAN_PROBS_FILE = "clean_probs.parquet"
BAD_IMAGES_FILE = "bad_images.txt"  # image files the loader left out (data.skip_bad_images)
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"
PREPROCESSING_FILE = "preprocessing.json"  # class names + eval preprocessing (dmx predict/export)


class Reporter:
    """The loop's one callback. Every method is a no-op here; subclasses override what they need.
    `state` is the live TrainState: its tensors are valid for the duration of the call."""

    def start(self, cfg: Config, data: PreparedData, state: TrainState) -> None:
        """Before the first epoch of this process (after a resume too)."""

    def epoch_end(self, epoch: int, metrics: dict[str, float], state: TrainState) -> None:
        """After epoch `epoch` (0-based); `state.epoch == epoch + 1` holds the finished epoch."""

    def run_end(self, state: TrainState, samples: pa.Table) -> None:
        """After the last epoch, with the per-sample table of the final nets."""


class Reporters(Reporter):
    """Several reporters called in the given order (None entries are skipped)."""

    def __init__(self, *reporters: Reporter | None) -> None:
        self.reporters = [r for r in reporters if r is not None]

    def start(self, cfg: Config, data: PreparedData, state: TrainState) -> None:
        for r in self.reporters:
            r.start(cfg, data, state)

    def epoch_end(self, epoch: int, metrics: dict[str, float], state: TrainState) -> None:
        for r in self.reporters:
            r.epoch_end(epoch, metrics, state)

    def run_end(self, state: TrainState, samples: pa.Table) -> None:
        for r in self.reporters:
            r.run_end(state, samples)


class EpochCallback(Reporter):
    """A plain `fn(epoch, metrics, state)` as a reporter."""

    def __init__(self, fn: Callable[[int, dict[str, float], TrainState], None]) -> None:
        self.fn = fn

    def epoch_end(self, epoch: int, metrics: dict[str, float], state: TrainState) -> None:
        self.fn(epoch, metrics, state)


class RunDirReporter(Reporter):
    """The run directory of `dmx train` (layout in docs/architecture.md): config.json, the
    noisy labels and bad_images.txt (image files the loader left out, if any) at the start, a
    checkpoint then metrics.jsonl at every epoch end (checkpoint
    first: a metrics line never describes an epoch that a resume would train again), and
    clean_probs.parquet at the end.

    `start` makes the folder agree with the state it starts from: metrics.jsonl is rewritten from
    `state.metrics_history` (a file cut mid-line is repaired, a new run's is emptied) and a
    clean_probs.parquet that the coming epochs will outdate is removed."""

    def __init__(self, run_dir: str | Path, *, keep_checkpoints: int) -> None:
        self.run_dir = Path(run_dir)
        self.keep_checkpoints = keep_checkpoints

    def start(self, cfg: Config, data: PreparedData, state: TrainState) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.run_dir / CONFIG_FILE, (cfg.to_json() + "\n").encode())
        if getattr(data, "dataset", None) is not None:  # (a stub PreparedData may have none)
            record = json.dumps(preprocessing_record(data.dataset), indent=2) + "\n"
            atomic_write_bytes(self.run_dir / PREPROCESSING_FILE, record.encode())
        labels = self.run_dir / NOISY_LABELS_FILE
        if Path(data.noisy.path).resolve() != labels.resolve():
            data.noisy.save_parquet(labels)  # a JSON / NPY / CSV source becomes a parquet
        write_metrics(self.run_dir / METRICS_FILE, state.metrics_history)
        dataset = getattr(data, "dataset", None)  # tests hand in stubs of PreparedData
        write_bad_images(self.run_dir / BAD_IMAGES_FILE, getattr(dataset, "bad_files", ()))
        if state.epoch < cfg.run.epochs:
            (self.run_dir / CLEAN_PROBS_FILE).unlink(missing_ok=True)

    def epoch_end(self, epoch: int, metrics: dict[str, float], state: TrainState) -> None:
        from dmx.state import save_checkpoint  # torch

        save_checkpoint(state, self.run_dir / CHECKPOINT_DIR, keep=self.keep_checkpoints)
        write_metrics(self.run_dir / METRICS_FILE, state.metrics_history)

    def run_end(self, state: TrainState, samples: pa.Table) -> None:
        write_parquet_atomic(samples, self.run_dir / CLEAN_PROBS_FILE)


def write_bad_images(path: Path, bad_files: tuple[str, ...]) -> None:
    """One path per line of the files this run's dataset left out; no file when there are none
    (a resumed run whose bad files were repaired drops the old list)."""
    if bad_files:
        atomic_write_bytes(path, "".join(f"{f}\n" for f in bad_files).encode())
    else:
        path.unlink(missing_ok=True)


def write_metrics(path: Path, history: list[dict[str, float]]) -> None:
    """Rewrite the whole file from the state's history: a resumed run never duplicates epochs."""
    text = "".join(json.dumps(h, sort_keys=True) + "\n" for h in history)
    atomic_write_bytes(path, text.encode())


def preprocessing_record(dataset: ImageDataset) -> dict:
    """What turns an image file into this dataset's network input, and what its outputs mean:
    class names, channels, mean/std, and `eval_image`'s resize / crop (`dmx.ensemble` reads it,
    so predicting needs no dataset). An in-memory dataset's images are the network input: a
    file is resized (shorter side) and centre-cropped to their size (crop 0: a non-square size,
    taken as it is)."""
    t, (h, w) = dataset.transforms, dataset.image_size
    resize, crop = (t.resize, t.crop) if t.crop else ((h, h) if h == w else (0, 0))
    return {
        "dataset": dataset.name,
        "class_names": list(dataset.class_names),
        "num_classes": int(dataset.num_classes),
        "channels": int(dataset.channels),
        "mean": [float(m) for m in dataset.mean],
        "std": [float(s) for s in dataset.std],
        "resize": int(resize),
        "crop": int(crop),
        "input_size": [int(h), int(w)],
    }


class RunDirBusyError(RuntimeError):
    """Another process holds the run directory's lock; the message names it and the way out."""


class RunDirLock:
    """An exclusive `fcntl.flock` on `RUN_DIR/.lock`, held from `acquire` to `release`.

    The kernel drops the lock when the holder dies (SIGKILL, OOM, power loss of the process), so
    a stale lock file never blocks a later run. The file holds the holder's pid and host for the
    refusal message. flock is advisory and per host: it works on local disks and on NFS v4
    mounts that map it to byte-range locks, not between hosts on file systems that do not."""

    def __init__(self, run_dir: str | Path, *, what: str = "dmx train") -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> RunDirLock:
        """Take the lock or raise RunDirBusyError at once (never waits)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # minus the umask, as open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunDirBusyError(
                f"{self.path.parent} is in use by another {self.what} (pid {holder}); wait "
                "for it to end, or choose another folder."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = [
    "CHECKPOINT_DIR",
    "CLEAN_PROBS_FILE",
    "CONFIG_FILE",
    "EpochCallback",
    "LOCK_FILE",
    "METRICS_FILE",
    "NOISY_LABELS_FILE",
    "PREPROCESSING_FILE",
    "Reporter",
    "Reporters",
    "RunDirBusyError",
    "RunDirLock",
    "RunDirReporter",
    "preprocessing_record",
    "write_metrics",
]
