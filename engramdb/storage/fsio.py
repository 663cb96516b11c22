"""Small durable file-system primitives: fsync a directory, write a file atomically, and
refuse what a store must never hold.

Every wrapper turns ``OSError`` into :class:`~engramdb.errors.StorageError` so callers see one
exception type for a failed disk operation.

A store holds regular files and its own directories only. A store received from someone else
may hold symbolic links or special files (FIFOs, devices, sockets): following a link would
make recovery delete, truncate or overwrite files outside the store, and reading a FIFO hangs.
:func:`check_tree` (on open and before maintenance) and :func:`open_regular` (every open of a
file by name for writing) refuse them with :class:`~engramdb.errors.CorruptStore`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from pathlib import Path

from engramdb.errors import CorruptStore, StorageError

_NOT_REGULAR_HINT = (
    "a store holds only regular files and its own directories; if you trust what the entry "
    "points to, replace it with a real copy (for example `cp -rL STORE COPY`), else restore "
    "from an export or backup"
)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (created, renamed, removed files) durable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(f"could not fsync directory {path}: {exc}") from exc


def atomic_write_bytes(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so a crash leaves either the old or the new file whole.

    Written to a temporary sibling, fsynced, renamed over ``path``, then the directory is
    fsynced: never a rewrite in place. The temporary name is fixed, so whatever holds it (a
    leftover of a crash, or a link planted there) is removed and the file created afresh:
    the write never goes through a link. Renaming over ``path`` replaces a link there too.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            write_all(fd, data)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise StorageError(f"could not write {path}: {exc}") from exc
    if durable:
        fsync_dir(path.parent)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# -- refusing links and special files ----------------------------------------------------------


def _what(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "not a regular file"


def not_regular(path: Path, mode: int, expected: str = "a regular file") -> CorruptStore:
    """The error for an entry of a store that is a link or special file (``mode``: lstat's)."""
    return CorruptStore(
        f"{path} is {_what(mode)}, not {expected}: engramdb never follows links or opens "
        "special files inside a store (a store received from someone else?)",
        hint=_NOT_REGULAR_HINT)


def _lstat_mode(path: Path) -> int | None:
    """The file type bits of ``path`` itself (a link is not followed); None if absent."""
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot inspect {path}: {exc}") from exc


def check_directory(path: Path) -> bool:
    """Whether the store's directory ``path`` exists; CorruptStore if it is a link (even to
    a directory) or not a directory. One ``lstat``."""
    mode = _lstat_mode(path)
    if mode is not None and not stat.S_ISDIR(mode):
        raise not_regular(path, mode, "a directory")
    return mode is not None


def check_regular(path: Path) -> bool:
    """Whether the store's file ``path`` exists; CorruptStore if it is a link or anything
    but a regular file. One ``lstat``."""
    mode = _lstat_mode(path)
    if mode is not None and not stat.S_ISREG(mode):
        raise not_regular(path, mode)
    return mode is not None


def check_tree(directory: Path, subdirs: Iterable[str] = ()) -> None:
    """Refuse a store directory holding a link or a special file (CorruptStore).

    Every entry of ``directory`` must be a regular file or a directory (other directories are
    not looked into: the store never uses them); each of ``subdirs`` (``segments``,
    ``index``) must be a directory of regular files. Reads the entries' types from the
    directory listings (``d_type``), so a store of N entries costs one listing per directory
    and an ``lstat`` only for an entry that is refused.
    """
    subdirs = set(subdirs)
    for entry in _entries(directory):
        if entry.name in subdirs:
            if check_directory(Path(entry.path)):
                for inner in _entries(Path(entry.path)):
                    if not inner.is_file(follow_symlinks=False):
                        _refuse(inner)
        elif not (entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)):
            _refuse(entry)


def _entries(directory: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            return list(it)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StorageError(f"cannot list {directory}: {exc}") from exc


def _refuse(entry: os.DirEntry[str]) -> None:
    try:
        mode = os.lstat(entry.path).st_mode
    except FileNotFoundError:
        return  # removed since the listing: nothing to refuse
    except OSError as exc:
        raise StorageError(f"cannot inspect {entry.path}: {exc}") from exc
    raise not_regular(Path(entry.path), mode)


def open_regular(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that never follows a link and opens only a regular file.

    CorruptStore if ``path`` is a link or a special file (a FIFO is not waited on), else
    ``OSError`` as ``os.open`` raises it.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EMLINK):
            try:
                st_mode = os.lstat(path).st_mode
            except OSError:
                raise exc from None
            if not stat.S_ISREG(st_mode):
                raise not_regular(path, st_mode) from None
        raise
    try:
        st_mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(st_mode):
        os.close(fd)
        raise not_regular(path, st_mode)
    return fd
