"""Shared warmup: trials that would train the same warmup train it once.

The warmup epochs (cross-entropy on the noisy labels) do not read lambda_u, T, p_threshold or any
other setting that only the DivideMix epochs use, so two trials whose configs differ only there
hold the SAME TrainState at the end of warmup (bit for bit: same seed, same generator stream, no
Beta or GMM draw before the first division). A sweep therefore keeps one warmup checkpoint per
distinct `warmup_key` in its storage folder (`STORAGE/NAME/shared_warmup/KEY/`): the first trial
of a key trains it and publishes it, the others load it and go straight to their first DivideMix
epoch. A searched setting that does touch warmup (optim.lr, run.seed, model.name, ...) changes
the key, so sharing stops for that dimension by itself.

The trial that trains a key's warmup does it within its own run (`SharedWarmup` is one of its
reporters and publishes the state after the last warmup epoch). On a local or NFS storage path it
holds an exclusive lock on the key meanwhile: a second trial of that key waits and then loads it
(the kernel drops the lock of a trial that dies, and the waiter then trains the warmup itself). A
storage URI has no locks: there a trial that finds no checkpoint trains its own warmup and
publishes it (identical bytes whoever wins).
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from dmx.config import Config
from dmx.files import sha256_bytes
from dmx.reporting import Reporter
from dmx.state import TrainState, checkpoint_path, load_checkpoint, save_checkpoint

SHARED_DIR = "shared_warmup"

WARMUP_FREE_KEYS = frozenset(
    {
        # Read only by the DivideMix epochs (dmx/steps.py, dmx/evaluate.py's division):
        "dividemix.lambda_u",
        "dividemix.T",
        "dividemix.alpha",
        "dividemix.p_threshold",
        "dividemix.rampup_length",
        "dividemix.loss_history_window",
        "dividemix.prior_penalty",
        "dividemix.co_guess_eval_mode",
        "dividemix.gmm_max_iter",
        "dividemix.gmm_tol",
        "dividemix.gmm_reg_covar",
        "dividemix.mix_labeled_only",
        "dividemix.peer_snapshot",
        "optim.batch_size",  # the DivideMix batch; warmup uses optim.warmup_batch_size
        # Not read by the warmup at all:
        "run.epochs",
        "run.keep_checkpoints",
        "data.num_workers",  # the streaming path's results do not depend on it
        "preset",
    }
)
"""Config keys the warmup epochs never read. Every other key is part of the warmup's identity
(tests/test_shared_warmup.py pins that changing one of these leaves the warmup bit-identical)."""


def warmup_key(cfg: Config) -> str:
    """16 hex digits naming the warmup `cfg` trains: its resolved config without
    WARMUP_FREE_KEYS."""
    flat = cfg.resolved().to_flat()
    ident = {k: v for k, v in flat.items() if k not in WARMUP_FREE_KEYS}
    return sha256_bytes(json.dumps(ident, sort_keys=True).encode())[:16]


def for_trial(state: TrainState, cfg: Config) -> TrainState:
    """The shared end-of-warmup state as a trial's own: its config, no MLflow run of another."""
    state.config = cfg.resolved().to_flat()
    state.mlflow_run_id = ""
    return state


class SharedWarmup(Reporter):
    """One trial's use of the sweep's shared warmup store, `STORAGE/NAME/shared_warmup/KEY/`.

    `load_or_claim()`: the end-of-warmup state when the store holds it (then this trial starts
    from it), else None: this trial trains the warmup itself, as part of its own run (its metrics
    reach MLflow and Tune like any epoch's), and publishes the state at the end of its last warmup
    epoch (this object is one of the run's reporters). On local / NFS storage the key is locked
    from the claim until the warmup is published or the trial ends (`release`), so a second trial
    of the key waits and then loads it; the kernel drops the lock of a trial that dies. A storage
    URI has no locks: a trial that finds nothing trains and publishes (identical bytes whoever
    wins)."""

    def __init__(self, cfg: Config, storage: tuple[pafs.FileSystem, str]) -> None:
        self.cfg = cfg.resolved()
        self.warm = self.cfg.dividemix.warmup_epochs
        self.key = warmup_key(self.cfg)
        self.fs, root = storage
        self.folder = f"{root.rstrip('/')}/{SHARED_DIR}/{self.key}"
        self._fd: int | None = None
        self.claimed = False

    def load_or_claim(self) -> TrainState | None:
        if self.warm < 1:
            return None
        if isinstance(self.fs, pafs.LocalFileSystem):
            Path(self.folder).mkdir(parents=True, exist_ok=True)
            self._fd = os.open(Path(self.folder) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # waits while another trial trains this warmup
        found = _load(self.fs, self.folder, self.warm)
        if found is not None:
            self.release()
            return for_trial(found, self.cfg)
        self.claimed = True
        return None

    def epoch_end(self, epoch: int, metrics: dict[str, float], state: TrainState) -> None:
        if self.claimed and state.epoch == self.warm:
            _publish(self.fs, self.folder, state)
            self.claimed = False
            self.release()

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # releases the lock


def shared_warmup_state(cfg: Config, storage: tuple[pafs.FileSystem, str]) -> TrainState | None:
    """The TrainState at the end of `cfg`'s warmup from the shared store, training and
    publishing it first when the store lacks it (outside a run: tests and tools). None when `cfg`
    has no warmup epochs."""
    from dmx.train import run_epoch, setup  # the loop, only when the warmup is trained here

    sharing = SharedWarmup(cfg, storage)
    try:
        found = sharing.load_or_claim()
        if found is not None or sharing.warm < 1:
            return found
        session = setup(cfg)
        for epoch in range(sharing.warm):
            run_epoch(session, epoch)
            sharing.epoch_end(epoch, session.state.metrics_history[-1], session.state)
        return for_trial(session.state, cfg)
    finally:
        sharing.release()


def _load(fs: pafs.FileSystem, folder: str, warm: int) -> TrainState | None:
    name = checkpoint_path(Path(), warm).name
    with tempfile.TemporaryDirectory(prefix="dmx-warmup-") as tmp:
        try:
            for suffix in (".sha256", ""):
                with fs.open_input_stream(f"{folder}/{name}{suffix}") as src:
                    Path(tmp, name + suffix).write_bytes(src.read())
        except (OSError, FileNotFoundError):
            return None
        return load_checkpoint(Path(tmp) / name)


def _publish(fs: pafs.FileSystem, folder: str, state: TrainState) -> None:
    """The end-of-warmup state into the store, the checksum file first (a reader that finds the
    checkpoint finds its sidecar; a torn copy fails its checksum and is not loaded)."""
    with tempfile.TemporaryDirectory(prefix="dmx-warmup-") as tmp:
        path = save_checkpoint(state, Path(tmp), keep=1)
        fs.create_dir(folder, recursive=True)
        for local in (path.with_name(path.name + ".sha256"), path):
            with fs.open_output_stream(f"{folder}/{local.name}.tmp") as dst:
                dst.write(local.read_bytes())
            fs.move(f"{folder}/{local.name}.tmp", f"{folder}/{local.name}")


__all__ = [
    "SHARED_DIR",
    "WARMUP_FREE_KEYS",
    "SharedWarmup",
    "for_trial",
    "shared_warmup_state",
    "warmup_key",
]
