"""The turn journal: an append-only file of framed records, ``journal.bin`` in the store.

A chat turn is acknowledged once its record is in this file (and fsynced, with "full"
durability); the engine folds the journal's turns into the catalog in batches and then
empties the file (docs/format.md, "Turn journal"). This module knows frames and bytes only:
what a record means is :mod:`engramdb.engine.turnlog`'s business.

Frame: ``MAGIC (2 bytes) | length (u32 LE) | crc32 of the payload (u32 LE) | payload``.
Reading stops at the first frame that is short or fails its check: a crash mid-append leaves
a torn tail there, which :meth:`TurnJournal.read` cuts off (and reports).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from engramdb.errors import CorruptStore, ReadOnlyStore, StorageError
from engramdb.storage.fsio import check_regular, fsync_dir, open_regular, write_all

JOURNAL_NAME = "journal.bin"
MAGIC = b"\xe7\x4a"
_HEADER = struct.Struct("<2sII")
# A record is one turn (a text, its metadata and one vector): far below this. A length
# beyond it is damage, not a record, and is never allocated.
MAX_RECORD = 64 * 2**20


class TurnJournal:
    """The journal file of one open store; every method runs under the store's write lock."""

    def __init__(self, directory: Path, *, durable: bool, read_only: bool = False) -> None:
        self.path = directory / JOURNAL_NAME
        self.read_only = read_only  # a read-only open: the file is never written nor removed
        self.durable = durable  # fsync each append ("full" durability)
        self.size = 0  # bytes of whole records in the file
        self.records = 0  # whole records in the file
        self.dirty = False  # appended without an fsync ("fast" durability)
        self._fd: int | None = None
        self._dir_dirty = False

    # -- reading (on open) ----------------------------------------------------------------------

    def read(self) -> tuple[list[bytes], str | None]:
        """The payloads of the whole records, in order, and a note if a torn or damaged tail
        was cut off (None otherwise). Creates nothing when there is no journal."""
        if not check_regular(self.path):
            return [], None
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {self.path}: {exc}") from exc
        payloads: list[bytes] = []
        pos = 0
        while (payload := _frame_at(data, pos)) is not None:
            payloads.append(payload)
            pos += _HEADER.size + len(payload)
        note = None
        if pos < len(data):
            if _whole_frame_after(data, pos + 1):
                # A crash tears only the last append: a good record after a bad one is damage
                # in the middle, and cutting there would drop acknowledged turns silently.
                raise CorruptStore(
                    f"{self.path}: record {len(payloads) + 1} of the turn journal is damaged "
                    "and whole records follow it",
                    hint="restore the store from an export or backup")
            note = (f"cut {len(data) - pos} bytes of a torn or damaged tail off the turn "
                    f"journal after {len(payloads)} whole records")
            if self.read_only:
                raise ReadOnlyStore(f"{self.path.parent} needs recovery: its turn journal has "
                                    "a torn tail")
            self._cut(pos)
        self.size, self.records = pos, len(payloads)
        return payloads, note

    # -- writing --------------------------------------------------------------------------------

    def append(self, payload: bytes) -> None:
        """Append one record; with "full" durability it is fsynced before this returns. A
        failed append is cut off again (best effort; the next open cuts a torn tail too)."""
        if len(payload) > MAX_RECORD:
            raise StorageError(f"a journal record of {len(payload)} bytes is too large")
        frame = _HEADER.pack(MAGIC, len(payload), zlib.crc32(payload)) + payload
        fd = self._open()
        try:
            os.lseek(fd, self.size, os.SEEK_SET)
            write_all(fd, frame)
            if self.durable:
                os.fsync(fd)
            else:
                self.dirty = True
        except OSError as exc:
            try:
                os.ftruncate(fd, self.size)
            except OSError:
                pass
            raise StorageError(f"writing the turn journal failed: {exc}") from exc
        self.size += len(frame)
        self.records += 1

    def sync(self) -> None:
        """fsync appends made without one ("fast" durability's sync point)."""
        if not self.dirty or self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise StorageError(f"syncing the turn journal failed: {exc}") from exc
        if self._dir_dirty:
            fsync_dir(self.path.parent)
            self._dir_dirty = False
        self.dirty = False

    def reset(self) -> None:
        """Empty the journal once its records are folded into the catalog (durably)."""
        if self.size == 0 and self._fd is None:
            return
        self._cut(0)
        self.size = self.records = 0
        self.dirty = False

    def close(self) -> None:
        """Close the file (idempotent); an empty journal file is removed."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
        if self.size == 0 and not self.read_only:
            try:
                if check_regular(self.path):
                    self.path.unlink()
            except (OSError, CorruptStore):
                pass  # an empty journal left behind is harmless

    def _open(self) -> int:
        if self._fd is None:
            created = not os.path.lexists(self.path)
            self._fd = open_regular(self.path, os.O_RDWR | os.O_CREAT)
            if created and self.durable:
                fsync_dir(self.path.parent)
            elif created:
                self._dir_dirty = True  # its directory entry is synced at the sync point
        return self._fd

    def _cut(self, size: int) -> None:
        try:
            fd = self._open()
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError as exc:
            raise StorageError(f"cannot truncate {self.path}: {exc}") from exc


def _frame_at(data: bytes, pos: int) -> bytes | None:
    """The payload of the whole frame (magic, length and checksum all right) at ``pos``,
    or None."""
    if pos + _HEADER.size > len(data):
        return None
    magic, length, crc = _HEADER.unpack_from(data, pos)
    end = pos + _HEADER.size + length
    if magic != MAGIC or length > MAX_RECORD or end > len(data):
        return None
    payload = data[pos + _HEADER.size:end]
    return payload if zlib.crc32(payload) == crc else None


def _whole_frame_after(data: bytes, start: int) -> bool:
    """Whether a whole frame begins at or after ``start``."""
    pos = data.find(MAGIC, start)
    while pos != -1:
        if _frame_at(data, pos) is not None:
            return True
        pos = data.find(MAGIC, pos + 1)
    return False
