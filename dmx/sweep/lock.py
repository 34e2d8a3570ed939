"""One driver per sweep: an exclusive lock on `STORAGE/NAME/.dmx_sweep.lock`.

`fcntl.flock` on a lock file in the sweep's experiment folder, taken without waiting: a second
driver of the same sweep (a second `run_sweep` or `resume_sweep` of one name in one storage path)
is refused at once with a message naming the holder. The kernel releases the lock when the
holding process dies (kill -9 included), so a killed driver never leaves a stale lock. Taken on
local and shared-file-system paths (NFS: Linux maps flock to NFS byte-range locks); a storage URI
(s3://, gs://) has no locks, and no lock is taken there (docs/fault_tolerance.md).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from dmx.sweep.spec import SweepError

LOCK_FILE = ".dmx_sweep.lock"


class SweepLock:
    """`with SweepLock(path):` holds the sweep folder `path` for this process (nothing for a URI).
    The folder (and its missing parents) is created when missing; what is still empty at release
    (the sweep failed before writing anything) is removed again: a refused start leaves nothing."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.folder = None if "://" in path else Path(path)
        self._fd: int | None = None
        self._created: list[Path] = []  # folders this lock made, deepest first

    def __enter__(self) -> SweepLock:
        if self.folder is None:
            return self
        missing = self.folder
        while not missing.exists() and missing != missing.parent:
            self._created.append(missing)
            missing = missing.parent
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = self.folder / LOCK_FILE
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                self._remove_if_empty()
                raise SweepError(
                    f"Another driver is running the sweep at {self.path} ({holder}). Wait for it "
                    "to end or stop it, then resume with --resume; to run a second sweep choose "
                    "another --name."
                ) from None
            except OSError as exc:  # a file system without locks
                os.close(fd)
                self._remove_if_empty()
                raise SweepError(
                    f"Cannot lock {lock} ({exc}): this file system has no file locks. Use a "
                    "local or NFS --storage-path, or a storage URI (s3://, gs://)."
                ) from None
            # The file we locked may have been removed by a holder releasing it in between: lock
            # the file that is at the path now.
            try:
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.ctime()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Remove the lock file and let go (idempotent)."""
        if self._fd is None:
            return
        assert self.folder is not None
        (self.folder / LOCK_FILE).unlink(missing_ok=True)  # while held: no one holds a stale copy
        os.close(self._fd)
        self._fd = None
        self._remove_if_empty()

    def _remove_if_empty(self) -> None:
        """Remove the folders this lock made that are still empty (a start that failed early)."""
        for folder in self._created:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
        self._created = []


def _read_holder(fd: int) -> str:
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {data['pid']} on {data['host']}, since {data['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


__all__ = ["LOCK_FILE", "SweepLock"]
