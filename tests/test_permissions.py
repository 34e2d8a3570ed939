"""Files dmx writes get the mode the umask gives (issue 15, item 7), not mkstemp's 0600."""

from __future__ import annotations

import os
import stat

import pyarrow as pa
import pytest

from dmx.files import atomic_write_bytes, current_umask, default_file_mode, write_parquet_atomic
from dmx.reporting import RunDirLock, write_metrics


@pytest.fixture()
def umask():
    """Set a umask for the test, restored afterwards."""
    before = os.umask(0o022)
    os.umask(before)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(before)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_follow_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    assert current_umask() == mask and default_file_mode() == expected
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    write_parquet_atomic(pa.table({"a": [1, 2]}), tmp_path / "t.parquet")
    write_metrics(tmp_path / "metrics.jsonl", [{"epoch": 0}])
    plain = tmp_path / "plain.txt"
    plain.write_text("as open() makes it")
    for name in ("a.bin", "t.parquet", "metrics.jsonl"):
        assert _mode(tmp_path / name) == expected == _mode(plain), name
    lock = RunDirLock(tmp_path).acquire()
    lock.release()
    assert _mode(tmp_path / ".lock") == expected


def test_a_checkpoint_is_readable_by_the_group_under_a_shared_umask(tmp_path, umask):
    import torch

    from dmx.state import TrainState, save_checkpoint

    umask(0o002)
    state = TrainState(config={"run.epochs": 1})
    state.epoch = 1
    state.net1 = state.net2 = {"w": torch.zeros(2)}
    path = save_checkpoint(state, tmp_path, keep=1)
    files = [p for p in tmp_path.iterdir() if p.is_file()]
    assert files and all(_mode(p) == 0o664 for p in files), [(p, oct(_mode(p))) for p in files]
    assert _mode(path) == 0o664
