"""Scratch directories of read-only handles: where a read-only open of a store without a
catalog file replays its journal (vector files, and a catalog if a read needs one), so that
nothing is written into the store.

Each lives in the system's temporary directory as ``engramdb-read-*`` and holds an
``owner.lock`` file its handle keeps flock'ed. A handle removes its directory when it closes;
one left by a killed process is removed by the next :func:`make_scratch` (its lock is free).
A lock, not a process id: a process in another PID namespace sharing the directory is alive
even where its pid means nothing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

from engramdb.errors import StorageError

PREFIX = "engramdb-read-"
_OWNER = "owner.lock"
_MAKING = "owner.lock.new"  # the lock file until it is locked


class ScratchDir:
    """One handle's scratch directory, owned (locked) until :meth:`remove`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def remove(self) -> None:
        """Delete the directory and release its lock (idempotent)."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def make_scratch(store: Path) -> ScratchDir:
    """A new scratch directory for a read-only handle of ``store``, after removing those whose
    owner is gone. StorageError (with a hint) when no temporary directory is writable."""
    try:
        root = Path(tempfile.gettempdir())
        _sweep(root)
        path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
    except OSError as exc:
        raise StorageError(
            f"a read-only open of {store} replays its turn journal into a temporary "
            f"directory, and none is writable: {exc}",
            hint="set TMPDIR to a writable directory, or open the store writable once "
                 "(its first fold gives it a catalog, which read-only opens read in place)",
        ) from exc
    fd = None
    try:
        # Locked under another name, then renamed: a sweep in another process finds
        # ``owner.lock`` only once it is locked (were it created, then locked, a sweep in
        # between would take the free lock and remove a directory in use).
        fd = os.open(path / _MAKING, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                     0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(path / _MAKING, path / _OWNER)
    except OSError as exc:
        if fd is not None:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
        raise StorageError(f"cannot lock the scratch directory {path}: {exc}") from exc
    return ScratchDir(path, fd)


def _sweep(root: Path) -> None:
    """Remove the scratch directories under ``root`` whose owner's lock is free."""
    for name in os.listdir(root):
        if not name.startswith(PREFIX):
            continue
        lock = root / name / _OWNER
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            continue  # being made right now, or not ours: left alone
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its handle is open
        finally:
            os.close(fd)  # closing drops the lock we may have taken
        shutil.rmtree(root / name, ignore_errors=True)
