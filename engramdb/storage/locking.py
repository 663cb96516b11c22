"""The single-writer lock: an flock on ``LOCK`` holding the owner's pid.

DuckDB allows one writing process per database file, and the segment files assume a single
appender, so a store is opened by one process at a time. We use ``flock`` directly rather than
the filelock package because filelock truncates the lock file when it opens it, which would
erase the pid that a second opener wants to report.

The lock file is opened without following links and only if it is a regular file: in a
store received from someone else, ``LOCK`` may be a link, and writing the pid through it
would overwrite (or, dangling, create) a file outside the store.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from engramdb.errors import EngramError, StorageError, StoreLocked
from engramdb.storage.fsio import check_directory, open_regular

LOCK_NAME = "LOCK"


class StoreLock:
    """An exclusive, process-wide lock on one store directory; ``shared`` (a read-only open)
    takes it shared instead, and only if ``LOCK`` exists: it never creates or writes the file,
    so it works on a read-only mount, beside other readers, and keeps writers out meanwhile."""

    def __init__(self, directory: Path, *, shared: bool = False) -> None:
        self.path = directory / LOCK_NAME
        self.shared = shared
        self._fd: int | None = None

    def acquire(self, timeout: float = 0.0) -> None:
        """Take the lock, waiting up to ``timeout`` seconds; raise StoreLocked with the pid.

        CorruptStore if the directory or ``LOCK`` is a link, or ``LOCK`` a special file.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            fd = self._open()
            if fd is None:
                return  # shared, and never opened for writing: no writer to keep out
            if self._take(fd, deadline):
                break
        if self.shared:
            self._fd = fd
            return
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is advisory; holding the flock is what matters
        self._fd = fd

    def _open(self) -> int | None:
        """The lock file, opened (created unless shared); None if shared and missing."""
        try:
            check_directory(self.path.parent)  # a missing one fails in the open below
            return open_regular(self.path,
                                os.O_RDONLY if self.shared else os.O_RDWR | os.O_CREAT)
        except FileNotFoundError:
            if self.shared:
                return None
            raise StorageError(f"cannot open lock file {self.path}") from None
        except EngramError:
            raise
        except OSError as exc:
            raise StorageError(f"cannot open lock file {self.path}: {exc}") from exc

    def _take(self, fd: int, deadline: float) -> bool:
        """Flock ``fd`` by ``deadline`` (StoreLocked past it). False, with ``fd`` closed, if
        the file locked is no longer the store's ``LOCK``: the directory was replaced while
        this waited (``engramdb.reembed`` swaps a store's directory in one rename), so the
        lock would guard a store that is gone; the caller opens the new file."""
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise self._held(fd) from None
                time.sleep(0.02)
        held = os.fstat(fd)
        try:
            now = os.lstat(self.path)
            same = (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
        except OSError:
            same = False
        if not same:
            os.close(fd)  # releases the flock on the old file
        return same

    def _held(self, fd: int) -> StoreLocked:
        """The StoreLocked for a lock someone else holds (``fd`` is closed). The pid in the
        file is the last writer's: when only read-only opens hold the lock (a shared lock
        can still be had), it names none of them."""
        readers = False
        if not self.shared:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                readers = True
            except BlockingIOError:
                pass
        pid = None if readers else _read_pid(fd)
        os.close(fd)  # releases the probe's shared lock too
        if readers:
            return StoreLocked(f"{self.path.parent} is open read-only by another handle or "
                               "process", hint="close the read-only handles, then open it "
                                               "for writing")
        who = "this process" if pid == os.getpid() else f"process {pid}"
        return StoreLocked(f"{self.path.parent} is open in {who}" if pid else
                           f"{self.path.parent} is open in another process", pid=pid)

    def release(self) -> None:
        """Release the lock (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(raw) if raw else None
    except (OSError, ValueError):
        return None
