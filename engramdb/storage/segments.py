"""Append-only, fixed-width vector segment files, read through memmaps.

A segment is a headerless file of ``rows x dim`` values (float32 or float16) named
``segments/NNNNNNNN.vec``. Rows are only ever appended. How many rows of each segment are
*committed* is recorded in the catalog, inside the same transaction as the engram rows that
point at them; bytes past the committed length are a torn or unacknowledged tail and are cut
off on open. Segment files are removed only after the commit that stops referencing them
(compaction in ``gc``).

``segments/`` must be a real directory of regular files: recovery deletes and truncates files
there, so a link (the directory itself or a segment) would make it delete or truncate files
outside the store. Such a store is refused (CorruptStore) before anything is touched, and
files are written and truncated only through ``open_regular`` (never through a link).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engramdb.content import vector_checksum
from engramdb.errors import CorruptStore, StorageError
from engramdb.storage.fsio import (
    check_directory,
    fsync_dir,
    not_regular,
    open_regular,
    write_all,
)

log = logging.getLogger(__name__)

SEGMENT_DIR = "segments"
_SUFFIX = ".vec"
_MADV_WILLNEED = 3
_MADV_POPULATE_READ = 22  # Linux 5.14+: map a range's pages now, reading them if needed
_PREFAULT_CHUNK = 64 << 20  # bytes per madvise call: close() waits for at most one
# What recovery may delete: a file it did not name itself is left alone.
_SEGMENT_FILE = re.compile(r"^[0-9]{8,}\.vec$")


def segment_name(seg: int) -> str:
    """File name of segment number ``seg``."""
    return f"{seg:08d}{_SUFFIX}"


def is_segment_name(name: str) -> bool:
    """Whether ``name`` is one :func:`segment_name` gives (what recovery and a close may
    delete: a file it did not name itself is left alone)."""
    return bool(_SEGMENT_FILE.fullmatch(name)) and name == segment_name(int(name[:-len(_SUFFIX)]))


@dataclass(frozen=True)
class AppendPlan:
    """Where a batch of vectors goes: one (segment, first row, count) piece per segment."""

    pieces: tuple[tuple[int, int, int], ...]

    def pointers(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the (segment, row) pointer arrays, one entry per vector, in batch order."""
        segs = np.concatenate([np.full(n, s, np.int32) for s, _, n in self.pieces])
        rows = np.concatenate([np.arange(r, r + n, dtype=np.int64) for _, r, n in self.pieces])
        return segs, rows

    def committed_after(self, committed: dict[int, int]) -> dict[int, int]:
        """The committed lengths once this plan's commit lands."""
        out = dict(committed)
        for s, r, n in self.pieces:
            out[s] = r + n
        return out


class SegmentStore:
    """The vectors of one store: appends, committed lengths, and reads by pointer.

    Not a transaction manager: the caller appends (data durable, not yet committed), commits
    the new lengths in the catalog, then calls :meth:`set_committed`. Reads see only committed
    rows. With ``durable=False`` ("fast" durability) appends are not fsynced; the files written
    since are listed in ``dirty`` until :meth:`sync`.
    """

    def __init__(
        self, directory: Path, dim: int, dtype: str, rows_per_segment: int, durable: bool = True
    ) -> None:
        self.directory = directory / SEGMENT_DIR
        self.dim = dim
        self.dtype = np.dtype(dtype)
        self.row_bytes = dim * self.dtype.itemsize
        self.rows_per_segment = max(1, rows_per_segment)
        self.durable = durable
        self.dirty: set[int] = set()  # segments appended to without an fsync since
        self._dir_dirty = False  # a segment file was created without fsyncing the directory
        self._committed: dict[int, int] = {}
        self._maps: dict[int, tuple[int, np.memmap]] = {}
        self._maps_lock = threading.Lock()
        # Bumped by remove(): a mapping made before a removal is never cached after it (the
        # segment's number may be reused by new rows while an old file is still mapped).
        self._maps_epoch = 0
        # A replay's writes, held while deferring() (segment -> first row, its rows): written
        # in one go by _flush_deferred, which every method that reads or cuts files calls.
        self._deferring = False
        self._deferred: dict[int, tuple[int, list[np.ndarray]]] = {}
        self._deferred_lock = threading.RLock()
        # A store without a catalog file (hold_in_memory): segment -> (buffer, rows held).
        self._memory: dict[int, tuple[np.ndarray, int]] | None = None

    # -- vectors held in memory ---------------------------------------------------------------

    def hold_in_memory(self) -> None:
        """Keep the vectors in memory, never in files, until :meth:`write_held`.

        For a store without a catalog file: its turn journal holds every vector, so files
        of them would only be written at each open's replay and deleted at close (a small
        user's open spent a sixth of its time there). The first fold writes them
        (:meth:`write_held`): from then on the catalog points into the files.
        """
        with self._maps_lock:
            if self._memory is None:
                self._memory = {}

    @property
    def in_memory(self) -> bool:
        """Whether the vectors are held in memory (:meth:`hold_in_memory`)."""
        return self._memory is not None

    def write_held(self) -> None:
        """Write the vectors held in memory to their files (unsynced: the caller syncs) and
        keep them in files from then on. A failed write keeps them held."""
        held = self._memory
        if held is None:
            return
        for seg in sorted(held):
            buf, n = held[seg]
            n = min(n, self._committed.get(seg, 0))  # (rows of a write never committed stay out)
            if n:
                self._write(AppendPlan(((seg, 0, n),)), buf[:n], False, False)
        with self._maps_lock:
            self._memory = None
            self._maps_epoch += 1
            self._maps.clear()

    def _write_memory(self, plan: AppendPlan, data: np.ndarray) -> None:
        """Hold ``data`` where ``plan`` says; rows past a piece's first row (a rolled back
        write's) are dropped first, as a file's tail is cut."""
        assert self._memory is not None
        offset = 0
        with self._maps_lock:
            for seg, row, n in plan.pieces:
                buf, held = self._memory.get(seg, (np.empty((0, self.dim), self.dtype), 0))
                if row > held:
                    raise StorageError(f"a write at row {row} of segment {seg}, which holds "
                                       f"{held} rows")
                if row + n > len(buf):  # grown by doubling (a turn adds a row)
                    size = min(max(2 * len(buf), row + n, 64), max(self.rows_per_segment,
                                                                   row + n))
                    grown = np.empty((size, self.dim), self.dtype)
                    grown[:row] = buf[:row]
                    buf = grown
                # Rows from ``row`` on were never committed: no view handed out covers them.
                buf[row:row + n] = data[offset:offset + n]
                self._memory[seg] = (buf, row + n)
                offset += n

    @contextmanager
    def deferring(self) -> Iterator[None]:
        """Hold the replayed pieces :meth:`write` gets (``keep_equal``) and write them once
        at the end, a file at a time, instead of one open and write per replayed turn.

        An open replays a journal of many small turns; nothing reads their vectors until the
        replay ends, and anything that reads or cuts the files writes what is held first.
        Unsynced like any replayed piece: the journal holds them until the fold syncs.
        """
        with self._deferred_lock:
            self._deferring = True
        try:
            yield
        except BaseException:
            with self._deferred_lock:
                self._deferring = False
                try:  # what failed is what the caller hears of (the journal holds these)
                    self._flush_deferred()
                except StorageError as exc:
                    log.warning("%s: writing replayed vectors failed too: %s",
                                self.directory, exc)
            raise
        with self._deferred_lock:
            self._deferring = False
            self._flush_deferred()

    def _defer(self, plan: AppendPlan, data: np.ndarray) -> bool:
        """Hold a replayed write; False (nothing held) outside :meth:`deferring`."""
        with self._deferred_lock:
            if not self._deferring:
                return False
            offset = 0
            for seg, row, n in plan.pieces:
                held = self._deferred.get(seg)
                if held is not None and held[0] + len(held[1]) != row:
                    self._flush_deferred()  # not contiguous (a crash cut): write what is held
                    held = None
                if held is None:
                    held = self._deferred[seg] = (row, [])
                held[1].extend(data[offset : offset + n].copy())
                offset += n
            return True

    def _flush_deferred(self) -> None:
        """Write the held replayed pieces, if any (the caller holds no other lock of this
        object). Cheap when none are held: every method that reads or cuts files calls it."""
        if not self._deferred:  # (unlocked: an entry leaves only once its rows are written)
            return
        with self._deferred_lock:
            # An entry leaves only once written: a reader on another thread waits on the lock
            # until its rows are in the file, and a failed write keeps the rest held.
            for seg in sorted(self._deferred):
                row, rows = self._deferred[seg]
                data = np.stack(rows)
                self._write(AppendPlan(((seg, row, len(data)),)), data, False, True)
                del self._deferred[seg]

    # -- recovery -----------------------------------------------------------------------------

    def recover(self, committed: dict[int, int], *, dry_run: bool = False) -> list[str]:
        """Bring the files in line with the catalog's committed lengths; return what was done
        (with ``dry_run``, what would be done, changing nothing: a read-only open).

        Truncates tails past the committed length (a write that was never acknowledged),
        removes segment files the catalog does not know (created by a batch whose commit never
        happened), and raises CorruptStore when a committed row is missing from disk, or for
        a link or special file in (or as) ``segments/``, before touching anything.
        """
        self._flush_deferred()
        if self._memory is not None and not dry_run:
            # Files left by a first fold that died before its catalog, or by an older
            # engramdb's handle that never closed: the journal holds their vectors.
            stale = self._recover_files({}, dry_run=False)
            with self._maps_lock:
                for seg in list(self._memory):
                    buf, held = self._memory[seg]
                    self._memory[seg] = (buf, min(held, committed.get(seg, 0)))
            self._committed = dict(committed)
            return [f"removed {len(stale)} vector files the turn journal holds"] if stale else []
        return self._recover_files(committed, dry_run=dry_run)

    def _recover_files(self, committed: dict[int, int], *, dry_run: bool) -> list[str]:
        actions: list[str] = []
        try:
            if not check_directory(self.directory):
                if dry_run:
                    self._committed = dict(committed)
                    return [] if not any(committed.values()) else [
                        f"{SEGMENT_DIR}/ is missing"]
                self.directory.mkdir()
            on_disk = {}
            with os.scandir(self.directory) as entries:
                for entry in entries:
                    if not entry.is_file(follow_symlinks=False):
                        raise not_regular(Path(entry.path), os.lstat(entry.path).st_mode)
                    on_disk[entry.name] = Path(entry.path)
        except OSError as exc:
            raise StorageError(f"cannot list {self.directory}: {exc}") from exc
        for seg, rows in committed.items():
            path = self.directory / segment_name(seg)
            want = rows * self.row_bytes
            if path.name not in on_disk:
                if rows == 0:
                    continue
                raise CorruptStore(f"segment {path.name} is missing ({rows} committed rows)")
            size = path.lstat().st_size
            if size < want:
                raise CorruptStore(
                    f"segment {path.name} holds {size} bytes, but {want} are committed"
                )
            if size > want:
                if dry_run:
                    actions.append(f"{size - want} unacknowledged bytes at the end of {path.name}")
                    continue
                self._truncate(path, want)
                actions.append(f"truncated {size - want} unacknowledged bytes from {path.name}")
        known = {segment_name(s) for s in committed}
        for name, path in on_disk.items():
            if name not in known and is_segment_name(name):
                if dry_run:
                    actions.append(f"an uncommitted segment file {name}")
                    continue
                try:
                    path.unlink()
                except OSError as exc:
                    raise StorageError(f"cannot remove orphan segment {path}: {exc}") from exc
                actions.append(f"removed uncommitted segment file {name}")
        if actions and self.durable and not dry_run:
            fsync_dir(self.directory)
        self._committed = dict(committed)
        return actions

    # -- writes -------------------------------------------------------------------------------

    def plan(self, n: int, first_new: int | None = None) -> AppendPlan:
        """Decide where ``n`` new vectors go: the tail of the last segment, then new ones.

        With ``first_new`` (compaction) they go only into fresh segments numbered from there.
        """
        pieces: list[tuple[int, int, int]] = []
        if first_new is not None:
            seg, row = first_new - 1, self.rows_per_segment
        else:
            seg = max(self._committed, default=0)
            row = self._committed.get(seg, self.rows_per_segment) if seg else self.rows_per_segment
        left = n
        while left > 0:
            if row >= self.rows_per_segment:
                seg, row = seg + 1, 0
            take = min(left, self.rows_per_segment - row)
            pieces.append((seg, row, take))
            row += take
            left -= take
        return AppendPlan(tuple(pieces))

    def write(self, plan: AppendPlan, vectors: np.ndarray, *, durable: bool | None = None,
              keep_equal: bool = False) -> None:
        """Write ``vectors`` where ``plan`` says (not yet committed).

        They are fsynced when the store is durable (or ``durable=True``: compaction, whose
        commit is followed by deleting the old files); otherwise the files are left ``dirty``.
        ``keep_equal`` (a replay of the turn journal): a piece the file already holds byte
        for byte is not written again (the file keeps its modification time, so an open that
        only replays changes no file), but is left ``dirty`` all the same: nothing says those
        bytes ever reached the disk, and the fold fsyncs them.
        """
        durable = self.durable if durable is None else durable
        data = np.ascontiguousarray(vectors, dtype=self.dtype)
        if self._memory is not None:
            if not durable or keep_equal:  # a turn's vectors: its journal record holds them
                self._write_memory(plan, data)
                return
            self.write_held()  # a write that must be durable by itself goes to the files
        if keep_equal and not durable and self._defer(plan, data):
            return
        self._flush_deferred()
        self._write(plan, data, durable, keep_equal)

    def _write(self, plan: AppendPlan, data: np.ndarray, durable: bool, keep_equal: bool
               ) -> None:
        created = False
        offset = 0
        try:
            check_directory(self.directory)  # replaced by a link since the open?
            for seg, row, n in plan.pieces:
                path = self.directory / segment_name(seg)
                created |= not os.path.lexists(path)
                piece = data[offset : offset + n].tobytes()
                if keep_equal and self._holds(path, row, piece):
                    self.dirty.add(seg)
                    offset += n
                    continue
                fd = open_regular(path, os.O_WRONLY | os.O_CREAT)
                try:
                    # A failed earlier batch may have left bytes past the committed length.
                    os.ftruncate(fd, row * self.row_bytes)
                    os.lseek(fd, row * self.row_bytes, os.SEEK_SET)
                    write_all(fd, piece)
                    if durable:
                        os.fsync(fd)
                    else:
                        self.dirty.add(seg)
                finally:
                    os.close(fd)
                offset += n
        except OSError as exc:
            raise StorageError(f"writing vectors failed: {exc}") from exc
        if created and durable:
            fsync_dir(self.directory)
        elif created:
            self._dir_dirty = True

    def directory_unsynced(self) -> None:
        """The next :meth:`sync` fsyncs the directory too: files in it may have been created
        by an earlier handle that never synced their names (a store without a catalog file
        keeps its vectors unsynced until its first fold)."""
        self._dir_dirty = True

    def _holds(self, path: Path, row: int, piece: bytes) -> bool:
        """Whether the file at ``path`` holds ``piece`` from ``row`` on (False if it is
        missing or shorter)."""
        if not os.path.lexists(path):
            return False
        fd = open_regular(path, os.O_RDONLY)
        try:
            return os.pread(fd, len(piece), row * self.row_bytes) == piece
        finally:
            os.close(fd)

    def sync(self, segs: set[int] | None = None) -> None:
        """fsync the files appended to without one (or ``segs``), and the directory if needed.

        The sync point of "fast" durability; a no-op when nothing is pending. Raises
        StorageError and keeps them pending if an fsync fails.
        """
        self._flush_deferred()
        todo = sorted(self.dirty if segs is None else set(segs) | self.dirty)
        try:
            for seg in todo:
                path = self.directory / segment_name(seg)
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                except FileNotFoundError:
                    self.dirty.discard(seg)  # removed since (compaction): nothing to keep
                    continue
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                self.dirty.discard(seg)
        except OSError as exc:
            raise StorageError(f"syncing vectors failed: {exc}") from exc
        if self._dir_dirty or (segs and todo):
            fsync_dir(self.directory)
            self._dir_dirty = False

    def verify_rows(self, segs: np.ndarray, rows: np.ndarray, sums: list[int]) -> np.ndarray:
        """Which pointers hold a row whose checksum is ``sums[i]``, read from the files.

        Reads past the end of a file or from a missing file count as lost. Used on open for
        the rows written after the last sync point of "fast" durability.
        """
        self._flush_deferred()
        ok = np.zeros(len(segs), bool)
        memory = self._memory
        if memory is not None:
            for i, (seg, row) in enumerate(zip(segs.tolist(), rows.tolist(), strict=True)):
                buf, held = memory.get(seg, (None, 0))
                ok[i] = buf is not None and row < held and vector_checksum(buf[row]) == sums[i]
            return ok
        for seg in np.unique(segs):
            sel = np.nonzero(segs == seg)[0]
            try:
                fd = os.open(self.directory / segment_name(int(seg)),
                             os.O_RDONLY | os.O_NOFOLLOW)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise StorageError(f"cannot read segment {seg}: {exc}") from exc
            try:
                for i in sel:
                    data = os.pread(fd, self.row_bytes, int(rows[i]) * self.row_bytes)
                    if len(data) == self.row_bytes:
                        ok[i] = vector_checksum(np.frombuffer(data, self.dtype)) == sums[i]
            except OSError as exc:
                raise StorageError(f"cannot read segment {seg}: {exc}") from exc
            finally:
                os.close(fd)
        return ok

    def rows_on_disk(self, seg: int) -> int:
        """Whole rows segment ``seg`` holds on disk now (0 if the file is missing), or in
        memory (:meth:`hold_in_memory`)."""
        self._flush_deferred()
        memory = self._memory
        if memory is not None:
            return memory.get(seg, (None, 0))[1]
        try:
            return (self.directory / segment_name(seg)).lstat().st_size // self.row_bytes
        except FileNotFoundError:
            return 0

    def set_committed(self, committed: dict[int, int]) -> None:
        """Record lengths the catalog has just committed, making those rows readable."""
        self._committed = dict(committed)

    def rollback(self) -> None:
        """Cut files back to their committed lengths after a failed commit (best effort)."""
        if self._memory is not None:
            with self._maps_lock:
                for seg, (buf, held) in list(self._memory.items()):
                    self._memory[seg] = (buf, min(held, self._committed.get(seg, 0)))
            return
        try:
            self._flush_deferred()
        except StorageError:
            pass  # the cuts below still apply; recovery on the next open cuts it too
        for seg, rows in self._committed.items():
            path = self.directory / segment_name(seg)
            try:
                if path.exists() and path.lstat().st_size > rows * self.row_bytes:
                    self._truncate(path, rows * self.row_bytes)
            except (OSError, StorageError, CorruptStore):
                pass  # recovery on the next open cuts it too

    def close(self) -> None:
        """Drop the cached maps (each holds a descriptor of its file): a closed handle may
        live on in a reference cycle until the garbage collector runs, and must not keep its
        files open meanwhile (nor its vectors held in memory)."""
        with self._maps_lock:
            self._maps_epoch += 1
            self._maps.clear()
            if self._memory is not None:
                self._memory = {}

    def remove(self, segs: list[int]) -> None:
        """Delete segment files that a committed compaction no longer references."""
        self._flush_deferred()
        with self._maps_lock:
            self._maps_epoch += 1
            for seg in segs:
                self._maps.pop(seg, None)
                if self._memory is not None:
                    self._memory.pop(seg, None)
        self.dirty -= set(segs)
        check_directory(self.directory)  # never delete through a link put there since the open
        for seg in segs:
            try:
                (self.directory / segment_name(seg)).unlink(missing_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot remove segment {seg}: {exc}") from exc
        if self.durable and segs:
            fsync_dir(self.directory)

    def discard(self) -> None:
        """Drop the vectors of a store whose vectors are all in its turn journal (a store
        without a catalog file, at close), held in memory or in files (a first fold that
        failed after writing them): at rest the store holds each vector once. Not fsynced:
        a file that comes back after a power cut is removed by the next open."""
        self._flush_deferred()
        with self._maps_lock:
            self._maps_epoch += 1
            self._maps.clear()
            if self._memory is not None:
                self._memory.clear()
        self.dirty.clear()
        check_directory(self.directory)  # never delete through a link put there since the open
        for path in self.directory.iterdir():
            if not is_segment_name(path.name):
                continue  # a file it did not name itself is left alone
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot remove {path}: {exc}") from exc

    # -- reads --------------------------------------------------------------------------------

    @property
    def committed(self) -> dict[int, int]:
        """Committed row count of each segment."""
        return dict(self._committed)

    def view(self, seg: int) -> np.ndarray:
        """A read-only array over the mapped committed rows of segment ``seg``.

        A plain ndarray view of the ``np.memmap`` (which it keeps alive): indexing a memmap
        runs numpy's Python-level ``memmap.__getitem__`` on every gather, a measurable part of
        re-scoring a recall's candidates.
        """
        self._flush_deferred()
        rows = self._committed.get(seg, 0)
        if self._memory is not None:
            return self._held_view(seg, rows)
        with self._maps_lock:
            cached = self._maps.get(seg)
            if cached is not None and cached[0] == rows:
                return cached[1]
            epoch = self._maps_epoch
        if rows == 0:
            return np.zeros((0, self.dim), self.dtype)
        path = self.directory / segment_name(seg)
        try:
            mm = np.memmap(path, dtype=self.dtype, mode="r", shape=(rows, self.dim)).view(
                np.ndarray)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):  # the process, not the file
                raise StorageError(f"cannot map segment {path.name}: {exc}",
                                   hint="the process is out of file descriptors or memory: "
                                        "close stores it no longer uses, or raise ulimit -n"
                                   ) from exc
            raise CorruptStore(f"cannot map segment {path.name}: {exc}") from exc
        except ValueError as exc:
            raise CorruptStore(f"cannot map segment {path.name}: {exc}") from exc
        with self._maps_lock:
            if self._maps_epoch == epoch:
                self._maps[seg] = (rows, mm)
        return mm

    def _held_view(self, seg: int, rows: int) -> np.ndarray:
        """The committed rows of a segment held in memory, read-only."""
        with self._maps_lock:
            memory = self._memory
            buf, held = (memory or {}).get(seg, (None, 0))
        if memory is None:  # written to their files since (the first fold)
            return self.view(seg)
        if rows == 0:
            return np.zeros((0, self.dim), self.dtype)
        if buf is None or held < rows:
            raise CorruptStore(f"segment {seg} holds {held} rows in memory, but {rows} are "
                               "committed")
        view = buf[:rows]
        view.flags.writeable = False
        return view

    def prefault(self, stop: threading.Event) -> int:
        """Map every committed row into this process's page tables; return the bytes done.

        The first read of a row through a fresh mapping costs a page fault: at 1M x 384-d a
        recall re-scores 12 rows, and its p50 was 0.66 ms with every row faulting and 0.57 ms
        with the segments mapped (paired blocks of queries in one process). One
        ``madvise(MADV_POPULATE_READ)`` maps the 1.5 GB in 0.1 s when the files are in the
        page cache (and reads them otherwise; 1.4 s to touch each page from Python). It runs
        without the GIL, newest segment first (recent engrams are recalled most), in chunks
        so that ``stop`` is honoured within one. Linux only; elsewhere (or on a kernel before
        5.14, which gets a readahead hint instead) reads fault as before. Any error stops it:
        it is only a hint.
        """
        madvise = _libc_madvise()
        if madvise is None:
            return 0
        advice, done = _MADV_POPULATE_READ, 0
        for seg in sorted(self._committed, reverse=True):
            try:
                view = self.view(seg)  # held: the mapping outlives a concurrent remove()
            except CorruptStore:
                return done
            base, size = view.ctypes.data, view.nbytes
            size += base % mmap.PAGESIZE  # madvise wants a page-aligned start
            base -= base % mmap.PAGESIZE
            start = 0
            while start < size:
                if stop.is_set():
                    return done
                length = min(_PREFAULT_CHUNK, size - start)
                if madvise(base + start, length, advice) != 0:
                    if ctypes.get_errno() != errno.EINVAL or advice == _MADV_WILLNEED:
                        return done
                    advice = _MADV_WILLNEED  # an older kernel: read ahead only
                    continue
                start += length
                done += length
        return done

    def read(self, segs: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Gather full vectors by pointer as float32, in the order given."""
        if len(segs) and segs.min() == segs.max():  # one segment (small stores, near rows)
            # (take: the same rows as fancy indexing, gathered a little faster)
            return self.view(int(segs[0])).take(rows, axis=0).astype(np.float32, copy=False)
        out = np.empty((len(segs), self.dim), np.float32)
        if len(segs) == 0:
            return out
        if len(segs) <= 32:  # a recall's final hits: a row at a time beats a pass per segment
            for i, (seg, row) in enumerate(zip(segs.tolist(), rows.tolist(), strict=True)):
                out[i] = self.view(seg)[row]
            return out
        for seg in np.unique(segs):
            sel = np.nonzero(segs == seg)[0]
            out[sel] = self.view(int(seg))[rows[sel]]
        return out

    def iter_segments(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(segment, memmap)`` for every segment with committed rows."""
        for seg in sorted(self._committed):
            if self._committed[seg]:
                yield seg, self.view(seg)

    def _truncate(self, path: Path, size: int) -> None:
        try:
            fd = open_regular(path, os.O_RDWR)  # never a link's target
            try:
                os.ftruncate(fd, size)
                if self.durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StorageError(f"cannot truncate {path}: {exc}") from exc


def _libc_madvise() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """libc's ``madvise(addr, length, advice)`` (a ctypes call releases the GIL), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn
