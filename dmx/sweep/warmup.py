"""Shared warmup: trials that would train the same warmup train it once.

The warmup epochs (cross-entropy on the noisy labels) do not read lambda_u, T, p_threshold or any
other setting that only the DivideMix epochs use, so two trials whose configs differ only there
hold the SAME TrainState at the end of warmup (bit for bit: same seed, same generator stream, no
Beta or GMM draw before the first division). A sweep therefore keeps one warmup checkpoint per
distinct `warmup_key` in its storage folder (`STORAGE/NAME/shared_warmup/KEY/`): the first trial
of a key trains it and publishes it, the others load it and go straight to their first DivideMix
epoch. A searched setting that does touch warmup (optim.lr, run.seed, model.name, ...) changes
the key, so sharing stops for that dimension by itself.

On a local or NFS storage path, a trial holds an exclusive lock on the key while it trains the
warmup: a second trial of that key waits and then loads it (the kernel drops the lock of a trial
that dies, and the waiter then trains the warmup itself). A storage URI has no locks: there a
trial that finds no checkpoint trains its own warmup and publishes it (identical bytes whoever
wins).
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


def _train_warmup(cfg: Config) -> TrainState:
    """The warmup epochs of `cfg`, run as its own run would run them (the same epoch function:
    the run's later epochs do not exist yet for it)."""
    from dmx.train import run_epoch, setup  # the loop, only when this trial trains the warmup

    session = setup(cfg)
    for epoch in range(cfg.resolved().dividemix.warmup_epochs):
        run_epoch(session, epoch)
    return session.state


def shared_warmup_state(cfg: Config, storage: tuple[pafs.FileSystem, str]) -> TrainState | None:
    """The TrainState at the end of `cfg`'s warmup: loaded from the sweep's shared store, or
    trained here and published to it. None when `cfg` has no warmup epochs."""
    warm = cfg.resolved().dividemix.warmup_epochs
    if warm < 1:
        return None
    fs, root = storage
    folder = f"{root.rstrip('/')}/{SHARED_DIR}/{warmup_key(cfg)}"
    if isinstance(fs, pafs.LocalFileSystem):
        return for_trial(_local(cfg, Path(folder), warm), cfg)
    found = _load(fs, folder, warm)
    if found is None:
        found = _train_warmup(cfg)
        _publish(fs, folder, found)
    return for_trial(found, cfg)


def _local(cfg: Config, folder: Path, warm: int) -> TrainState:
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits while another trial trains this warmup
        path = checkpoint_path(folder, warm)
        if path.is_file():
            return load_checkpoint(path)
        state = _train_warmup(cfg)
        save_checkpoint(state, folder, keep=1)  # atomic, with its sha256 sidecar
        return state
    finally:
        os.close(fd)  # releases the lock


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
    with tempfile.TemporaryDirectory(prefix="dmx-warmup-") as tmp:
        path = save_checkpoint(state, Path(tmp), keep=1)
        fs.create_dir(folder, recursive=True)
        for local in (path.with_name(path.name + ".sha256"), path):  # checksum first
            with fs.open_output_stream(f"{folder}/{local.name}") as dst:
                dst.write(local.read_bytes())


__all__ = ["SHARED_DIR", "WARMUP_FREE_KEYS", "for_trial", "shared_warmup_state", "warmup_key"]
