"""catalog.duckdb: engram rows, occurrences, links, the forgetting log and the counters.

The catalog is the durable truth about what a store holds. Every write happens in one DuckDB
transaction whose commit is the acknowledgement point (DuckDB fsyncs its WAL on commit). Batches
go in as Arrow tables: ``executemany`` is two orders of magnitude slower (docs/format.md).
DuckDB errors never escape: they become :class:`StorageError` (writes) or :class:`CorruptStore`
(opening or reading a damaged file).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from engramdb.errors import CommitUncertain, CorruptStore, StorageError, StoreLocked
from engramdb.storage.fsio import check_regular, fsync_dir
from engramdb.storage.schema import CATALOG_TABLES, CONTEXT_TABLES, LEXICAL_TABLES

CATALOG_NAME = "catalog.duckdb"
CATALOG_TEMP = CATALOG_NAME + ".new"  # the catalog a first fold builds (make_catalog)
# The name the catalog file is attached under (an in-memory DuckDB instance attaches it, so
# that a new file can be given its block size).
ALIAS = "engramdb_catalog"
# Block size of new catalogs. DuckDB's default, 256 KiB, made a 50-turn user's catalog 4.2 MB
# (a block per table and column segment); with 16 KiB blocks it is tens of KB. A file keeps
# the block size it was created with: stores made before this keep 256 KiB.
BLOCK_SIZE = 16384
# Block size of a catalog made for at least LARGE_LOAD_ROWS rows (the first write of a new
# store when it is a bulk ingest_many or an import; gc --rewrite of a store that large). A
# checkpoint writes blocks one by one: a 100k-row load's WAL checkpoint took 314-366 ms with
# 16 KiB blocks and 81-105 ms with DuckDB's default 256 KiB, and such a catalog (~35 MB)
# wastes no more than a few hundred KB on them.
LARGE_BLOCK_SIZE = 262144
LARGE_LOAD_ROWS = 50_000
# Errors of the disk, not of the file: reported as StorageError, never as damage.
# DuckDB refusing an attach because another handle holds the file: a writer keeps readers
# out, a read-only open (which needs no LOCK file) keeps writers out.
_HELD = ("Could not set lock", "Conflicting lock", "Unique file handle conflict")
_DISK_ERRORS = ("No space left on device", "Read-only file system", "Permission denied",
                "Disk quota exceeded")


# synced_eid: every engram with a smaller eid has its vector bytes fsynced (the sync point of
# "fast" durability; "full" advances it in every commit). Engrams at or past it are checked
# against their vec_sum on open.
# journal_seq: the last turn journal record folded into the catalog (engine/turnlog.py).
COUNTERS = ("generation", "clock", "next_eid", "next_seq", "last_turn", "synced_eid",
            "journal_seq")
# Their values in a new, empty store (and in a store with no catalog file yet).
START_COUNTERS = {name: {"next_eid": 1, "next_seq": 1, "last_turn": -1,
                         "synced_eid": 1}.get(name, 0) for name in COUNTERS}

# DuckDB settings of "fast" durability. fsync_mode NONE skips every fsync, the checkpoint's
# too, so checkpoints and optimistic writes (large appends written to the database file
# before COMMIT) are kept out of it: commits then only append to the WAL, whose replay stops
# at the first torn record. Checkpoints run inside durable() with the defaults restored.
# Ordered so that a failure halfway leaves a safe mix (fsyncs off only once the rest is set).
_FAST = ("SET enable_optimistic_write = false", "SET checkpoint_threshold = '1TB'",
         "SET fsync_mode = 'NONE'")
_DURABLE = ("SET fsync_mode = 'STANDARD'", "SET enable_optimistic_write = true",
            "RESET checkpoint_threshold")


class CatalogClosed(StorageError):
    """A read reached a catalog that was closed; the store retries it on the catalog that
    replaced it (``gc`` rewrites the catalog file and reopens it while recalls run)."""


class Catalog:
    """One DuckDB database file plus a cursor per reading thread."""

    def __init__(self, path: Path, *, read_only: bool = False, fast: bool = False,
                 block_size: int = BLOCK_SIZE) -> None:
        self.path = path
        self.con = _attach(path, read_only, block_size)
        self._local = threading.local()
        self._cursors: list[duckdb.DuckDBPyConnection] = []
        self._cursors_lock = threading.Lock()
        # Reads in flight, so that close() (gc swaps the catalog while recalls run: they take
        # no store lock) waits for them instead of closing the cursors under them.
        self._reads = threading.Condition()
        self._active = 0
        self._closed = False
        self.fast = False  # commits skip DuckDB's WAL fsync ("fast" durability)
        self.pending = False  # a commit since the last durable one may not be on disk yet
        if fast:
            try:
                self.set_fast(True)
            except BaseException:
                self.close()
                raise

    # -- lifecycle ----------------------------------------------------------------------------

    def create_schema(self, *, context: bool = False) -> None:
        """Create the tables and counters of a new store in one transaction; the context
        tables too with ``context`` (else the first open makes them: it derives their rows
        from the occurrences whenever it finds them missing, storage/schema.py)."""
        with self.transaction() as con:
            con.execute(CATALOG_TABLES)
            for statement in (*LEXICAL_TABLES, *(CONTEXT_TABLES if context else ())):
                con.execute(statement)
            if not con.execute("SELECT count(*) FROM counters").fetchone()[0]:
                for name, start in START_COUNTERS.items():
                    con.execute("INSERT INTO counters VALUES (?, ?)", [name, start])

    def close(self) -> None:
        """Close every cursor and the connection (idempotent).

        DuckDB checkpoints on close; in "fast" mode the fsyncs are switched back on first, so
        that checkpoint cannot leave a torn database file behind.
        """
        if self.fast:
            try:
                self.set_fast(False)
            except StorageError:
                # SET does no I/O, so only an injected fault gets here. The checkpoint on
                # close then runs without fsyncs: a power cut during it could tear the file.
                pass
        with self._reads:
            self._closed = True
            # Reads finish in milliseconds; the bound only keeps a stuck one from hanging us.
            self._reads.wait_for(lambda: self._active == 0, timeout=60.0)
        with self._cursors_lock:
            cursors, self._cursors = self._cursors, []
        for cur in cursors:
            try:
                cur.close()
            except duckdb.Error:
                pass
        try:
            self.con.close()
        except duckdb.Error:
            pass

    def checkpoint(self) -> None:
        """Fold the WAL into the database file and rewrite freed blocks."""
        try:
            self.con.execute("FORCE CHECKPOINT")
        except duckdb.Error as exc:
            raise StorageError(f"catalog checkpoint failed: {exc}") from exc

    def set_fast(self, on: bool) -> None:
        """Switch DuckDB's fsyncs off (``on``) or back on; StorageError if DuckDB refuses.

        Off, COMMIT only appends to the WAL and may be lost on power loss; on again, the next
        COMMIT fsyncs the WAL and with it every earlier commit.
        """
        try:
            for sql in _FAST if on else _DURABLE:
                self.con.execute(sql)
        except duckdb.Error as exc:
            raise StorageError(f"catalog settings failed: {exc}") from exc
        self.fast = on

    @contextmanager
    def durable(self) -> Iterator[None]:
        """Within the block, commits and checkpoints fsync as in "full" mode.

        In "fast" mode the first durable COMMIT also makes every earlier commit durable (one
        fsync of the WAL covers them all), and may checkpoint a WAL that grew past DuckDB's
        threshold. A no-op for a catalog that is not in "fast" mode.
        """
        if not self.fast:
            yield
            return
        self.set_fast(False)
        try:
            yield
        finally:
            try:
                self.set_fast(True)
            except StorageError:
                pass  # staying durable is safe, only slower

    # -- transactions and reads ---------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """Run a block in one transaction; commit on success, roll back and raise otherwise."""
        con = self.con
        try:
            con.execute("BEGIN TRANSACTION")
        except duckdb.Error as exc:
            raise StorageError(f"catalog cannot start a transaction: {exc}") from exc
        try:
            yield con
        except BaseException as exc:
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            if isinstance(exc, duckdb.Error):
                raise StorageError(f"catalog write failed: {exc}") from exc
            raise
        try:
            con.execute("COMMIT")
        except duckdb.Error as exc:
            self.pending = True
            try:
                con.execute("ROLLBACK")
            except duckdb.Error:
                pass
            # The WAL may already hold the commit (a failed fsync after the write): the
            # caller cannot know whether it happened and must not undo its side effects.
            raise CommitUncertain(f"catalog commit failed: {exc}") from exc
        # A durable COMMIT fsyncs the WAL, which holds every earlier commit too.
        self.pending = self.fast

    def reader(self) -> duckdb.DuckDBPyConnection:
        """A cursor private to the calling thread (DuckDB connections are not shareable)."""
        cur = getattr(self._local, "cursor", None)
        if cur is None:
            cur = self.con.cursor()
            cur.execute(f"USE {ALIAS}")  # a cursor starts in the in-memory database
            self._local.cursor = cur
            with self._cursors_lock:
                self._cursors.append(cur)
        return cur

    @contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """This thread's cursor, for reads that :meth:`close` waits for. Raises
        :class:`CatalogClosed` once the catalog is closing (the store has swapped in a new
        one: read from that instead)."""
        with self._reads:
            if self._closed:
                raise CatalogClosed(f"catalog {self.path.name} was closed")
            self._active += 1
        try:
            yield self.reader()
        finally:
            with self._reads:
                self._active -= 1
                if self._active == 0:
                    self._reads.notify_all()

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        """Run a read query on this thread's cursor; CorruptStore if the catalog is damaged,
        :class:`CatalogClosed` if it was closed (see :meth:`reading`)."""
        with self.reading() as cur:
            try:
                return cur.execute(sql, params or []).fetchall()
            except duckdb.Error as exc:
                raise CorruptStore(f"catalog read failed: {exc}") from exc

    def query_arrow(self, sql: str, params: list[Any] | None = None) -> pa.Table:
        """Run a read query and return an Arrow table (errors as :meth:`query`)."""
        with self.reading() as cur:
            try:
                return cur.sql(sql, params=params or None).to_arrow_table()
            except duckdb.Error as exc:
                raise CorruptStore(f"catalog read failed: {exc}") from exc

    def counters(self) -> dict[str, int]:
        """The committed counters (generation, clock, next_eid, next_seq)."""
        return {name: int(value) for name, value in self.query("SELECT name, value FROM counters")}

    def segment_lengths(self) -> dict[int, int]:
        """Committed rows of each segment."""
        return {int(s): int(n) for s, n in self.query("SELECT seg, nrows FROM segments")}


def block_size_for(rows: int) -> int:
    """The block size of a catalog made for ``rows`` rows: :data:`LARGE_BLOCK_SIZE` from
    :data:`LARGE_LOAD_ROWS` on, else :data:`BLOCK_SIZE`."""
    return LARGE_BLOCK_SIZE if rows >= LARGE_LOAD_ROWS else BLOCK_SIZE


def _attach(path: Path, read_only: bool, block_size: int = BLOCK_SIZE
            ) -> duckdb.DuckDBPyConnection:
    """A connection whose default database is the catalog file at ``path``; a new file gets
    ``block_size`` blocks, an existing one keeps its own."""
    options = ["READ_ONLY"] if read_only else []
    if not read_only and not path.exists():
        options.append(f"BLOCK_SIZE {int(block_size)}")
    quoted = str(path).replace("'", "''")
    con = duckdb.connect(":memory:")
    try:
        suffix = f" ({', '.join(options)})" if options else ""
        con.execute(f"ATTACH '{quoted}' AS {ALIAS}{suffix}")
        con.execute(f"USE {ALIAS}")
    except duckdb.Error as exc:
        con.close()
        if any(cause in str(exc) for cause in _HELD):
            raise StoreLocked(f"{path.parent} is open in another handle or process: {exc}",
                              hint="close the other handle (a writer keeps readers out, a "
                                   "reader keeps writers out)") from exc
        if any(cause in str(exc) for cause in _DISK_ERRORS):  # the disk, not the file
            raise StorageError(f"cannot open catalog {path.name}: {exc}") from exc
        raise CorruptStore(f"cannot open catalog {path.name}: {exc}") from exc
    return con


def block_size(con: duckdb.DuckDBPyConnection) -> int:
    """The block size of the attached catalog file."""
    rows = con.execute("SELECT block_size FROM pragma_database_size() WHERE database_name = ?",
                       [ALIAS]).fetchall()
    return int(rows[0][0]) if rows else BLOCK_SIZE


@contextmanager
def registered(con: duckdb.DuckDBPyConnection, name: str, rows: pa.Table) -> Iterator[str]:
    """Expose an Arrow table to SQL as a view for the duration of a block; yield its name."""
    view = f"_engramdb_{name}"
    con.register(view, rows)
    try:
        yield view
    finally:
        con.unregister(view)


def insert_arrow(con: duckdb.DuckDBPyConnection, table: str, rows: pa.Table) -> None:
    """Insert an Arrow table into ``table`` in one statement (columns matched by name)."""
    if rows.num_rows == 0:
        return
    with registered(con, f"{table}_batch", rows) as view:
        cols = ", ".join(f'"{c}"' for c in rows.column_names)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {view}")


def set_counters(con: duckdb.DuckDBPyConnection, values: dict[str, int]) -> None:
    """Update counters inside the caller's transaction, in one statement."""
    if not values:
        return
    cases = " ".join(f"WHEN '{name}' THEN {int(value)}" for name, value in values.items()
                     if name.isidentifier())
    names = ", ".join(f"'{name}'" for name in values if name.isidentifier())
    con.execute(f"UPDATE counters SET value = CASE name {cases} END WHERE name IN ({names})")


def set_segment_lengths(
    con: duckdb.DuckDBPyConnection, lengths: dict[int, int], before: dict[int, int] | None = None
) -> None:
    """Record committed segment lengths inside the caller's transaction.

    With ``before`` (the lengths now recorded), only segments whose length changed are written:
    an append touches one row, not the whole table.
    """
    if before is None:
        con.execute("DELETE FROM segments")
        changed = dict(lengths)
    else:
        gone = [s for s in before if s not in lengths]
        changed = {s: n for s, n in lengths.items() if before.get(s) != n}
        if not gone and len(changed) == 1 and next(iter(changed)) in before:
            # The common case, an append to the tail segment: one statement.
            seg, nrows = next(iter(changed.items()))
            con.execute("UPDATE segments SET nrows = ? WHERE seg = ?", [nrows, seg])
            return
        stale = gone + [s for s in changed if s in before]
        if stale:
            con.execute(f"DELETE FROM segments WHERE seg IN ({','.join(map(str, stale))})")
    if changed:
        insert_arrow(
            con,
            "segments",
            pa.table(
                {
                    "seg": pa.array(list(changed), pa.int32()),
                    "nrows": pa.array(list(changed.values()), pa.int64()),
                }
            ),
        )


def catalog_temp_files(path: Path) -> list[Path]:
    """The files a first fold that died before its rename leaves (see
    :func:`make_catalog`)."""
    temp = path / CATALOG_TEMP
    return [temp, temp.with_name(temp.name + ".wal")]


def make_catalog(path: Path, block_size: int = BLOCK_SIZE) -> None:
    """Write an empty catalog (tables and starting counters) as ``path/catalog.duckdb``, for
    the first fold of a store made without one: built under a temporary name, fsynced, and
    renamed into place, so a crash leaves either no catalog or a whole empty one (which the
    next open reads as a store with nothing folded yet: the journal replays). ``block_size``:
    :data:`BLOCK_SIZE`, or :data:`LARGE_BLOCK_SIZE` for a catalog made for a bulk load."""
    try:
        for stale in catalog_temp_files(path):
            if check_regular(stale):  # a link or a directory there: CorruptStore
                stale.unlink()
    except OSError as exc:
        raise StorageError(f"cannot create the catalog of {path}: {exc}") from exc
    try:
        temp = Catalog(path / CATALOG_TEMP, block_size=block_size)
    except CorruptStore as exc:  # a file made just now cannot be damaged: the disk failed
        raise StorageError(f"cannot create the catalog of {path}: {exc.message}") from exc
    try:
        temp.create_schema(context=True)  # the fold writes context rows
        temp.checkpoint()
    finally:
        temp.close()
    try:
        os.replace(path / CATALOG_TEMP, path / CATALOG_NAME)
        for stale in catalog_temp_files(path):
            stale.unlink(missing_ok=True)
        fsync_dir(path)
    except OSError as exc:
        raise StorageError(f"cannot create the catalog of {path}: {exc}") from exc
