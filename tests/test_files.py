"""dmx.files: a failed write keeps the old file and leaves no temp file behind; sha256."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dmx.files import atomic_write_bytes, sha256_bytes, sha256_file, write_parquet_atomic


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


def test_sha256_of_bytes_and_of_a_file_agree(tmp_path):
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"  # sha256 of b""
    assert sha256_bytes(b"") == empty
    data = bytes(range(256)) * 5000  # over 1 MiB: more than one read chunk
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert sha256_file(path) == sha256_bytes(data) and len(sha256_file(str(path))) == 64
    path.write_bytes(b"")
    assert sha256_file(path) == empty
