"""Small durable file-system primitives: fsync a directory, write a file atomically.

Every wrapper turns ``OSError`` into :class:`~engramdb.errors.StorageError` so callers see one
exception type for a failed disk operation.
"""

from __future__ import annotations

import os
from pathlib import Path

from engramdb.errors import StorageError


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
    fsynced: never a rewrite in place.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise StorageError(f"could not write {path}: {exc}") from exc
    if durable:
        fsync_dir(path.parent)
