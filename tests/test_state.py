"""TrainState files: atomic, checksummed, weights-only, with fallback to an older good one."""

import pickle

import numpy as np
import pytest
import torch

from dmx.state import (
    CheckpointError,
    TrainState,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)


def _state(epoch: int) -> TrainState:
    rng = np.random.default_rng(epoch)
    return TrainState(
        config={"run.seed": 1, "optim.lr_decay_epochs": [150]},
        epoch=epoch,
        net1={"w": torch.randn(3, 3)},
        net2={"w": torch.randn(3, 3)},
        loss_history1=torch.rand(2, 10),
        rng={
            "numpy": rng.bit_generator.state,
            "loop": torch.Generator().manual_seed(3).get_state(),
        },
        metrics_history=[{"test_acc": 50.0 + epoch}],
        mlflow_run_id="abc",
    )


def test_round_trip_keeps_everything(tmp_path):
    state = _state(3)
    path = save_checkpoint(state, tmp_path)
    loaded = load_checkpoint(path)
    assert loaded.epoch == 3 and loaded.mlflow_run_id == "abc"
    assert torch.equal(loaded.net1["w"], state.net1["w"])
    assert torch.equal(loaded.loss_history1, state.loss_history1)
    assert loaded.rng["numpy"] == state.rng["numpy"]
    assert loaded.metrics_history == state.metrics_history


def test_keeps_only_the_newest(tmp_path):
    for e in range(1, 6):
        save_checkpoint(_state(e), tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt-0004.pt", "ckpt-0005.pt"]
    assert not list(tmp_path.glob("*.tmp"))
    assert load_latest_checkpoint(tmp_path).epoch == 5


def test_truncated_latest_falls_back_to_previous(tmp_path):
    save_checkpoint(_state(1), tmp_path)
    latest = save_checkpoint(_state(2), tmp_path)
    latest.write_bytes(latest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="corrupt"):
        state = load_latest_checkpoint(tmp_path)
    assert state.epoch == 1


def test_all_corrupt_is_an_error_not_a_fresh_start(tmp_path):
    path = save_checkpoint(_state(1), tmp_path)
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning), pytest.raises(CheckpointError, match="No usable checkpoint"):
        load_latest_checkpoint(tmp_path)


def test_empty_folder_means_no_checkpoint(tmp_path):
    assert load_latest_checkpoint(tmp_path) is None
    assert load_latest_checkpoint(tmp_path / "missing") is None


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = pickle.dumps({"config": {}, "epoch": 1, "payload": _Evil()})
    path = tmp_path / "ckpt-0001.pt"
    path.write_bytes(data)
    import hashlib

    (tmp_path / "ckpt-0001.pt.sha256").write_text(hashlib.sha256(data).hexdigest())
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()
