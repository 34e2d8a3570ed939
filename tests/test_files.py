"""dmx.files: a failed write keeps the old file and leaves no temp file behind."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmx.files import atomic_write_bytes, write_parquet_atomic


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(path, b"old")
    assert path.read_bytes() == b"old"

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("dmx.files.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old"
    assert [p.name for p in path.parent.iterdir()] == ["f.bin"]  # no temp file left


def test_parquet_round_trip(tmp_path):
    table = pa.table({"index": [0, 1, 2], "p": [0.1, 0.5, 0.9]})
    write_parquet_atomic(table, tmp_path / "t.parquet")
    assert pq.read_table(tmp_path / "t.parquet").equals(table)
