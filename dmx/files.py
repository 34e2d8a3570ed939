"""Atomic file writes and content hashes.

Readers (and a run resumed after a crash) see the old file or the whole new one, never part of
it. The sha256 helpers here are the only ones in dmx: a label file's hash, a checkpoint's sidecar
and a sweep's label check must agree, so they are computed one way. Torch-free, so the label and
report writers can use it too.

Permissions: every file written here gets the mode a plain `open(path, "w")` would give, 0666
minus the process umask (0644 under the usual umask 022, 0664 under 002), not the 0600 of the
temporary file `mkstemp` creates. Checkpoints, metrics, parquet files and the MLflow artifacts
copied from them stay readable by a colleague, an MLflow server or Ray workers running as
another user on shared storage, exactly as far as the umask allows.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of `data` (64 lowercase hex characters)."""
    return hashlib.sha256(data).hexdigest()


def sha256_stream(stream: Any) -> str:
    """Hex sha256 of what a binary file object yields, read in 1 MiB chunks (checkpoints can be
    large); any object with `read(n)` serves, e.g. a pyarrow input stream of remote storage."""
    h = hashlib.sha256()
    while chunk := stream.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file at `path`."""
    with open(path, "rb") as f:
        return sha256_stream(f)


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (/proc), else by the
    classic set-and-restore (not thread-safe, hence the first way)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0666 minus the umask."""
    return 0o666 & ~current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temp file in the same folder, fsync, rename over `path`, fsync the
    folder. The file gets `default_file_mode()` (the umask's mode, not mkstemp's 0600). The temp
    file is removed if writing fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (POSIX)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass


def write_parquet_atomic(table: Any, path: str | Path) -> None:
    """A pyarrow Table as parquet at `path`, atomically (see `atomic_write_bytes`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


__all__ = [
    "atomic_write_bytes",
    "current_umask",
    "default_file_mode",
    "sha256_bytes",
    "sha256_file",
    "sha256_stream",
    "write_parquet_atomic",
]
