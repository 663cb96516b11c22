"""The Store: one per-user memory file (a directory), opened in-process like SQLite.

Write path (the commit protocol, DESIGN section 2): validate everything; append the new
vectors to a segment and fsync; then one DuckDB transaction inserts the rows, bumps the
reference counts and records the new committed segment lengths; only when that commit returns
is the write acknowledged and made visible in memory. A crash before the commit leaves bytes
past the committed length, which the next open cuts off.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa

from engramdb.content import (
    check_finite,
    check_label,
    check_top_k,
    check_vectors,
    compress_text,
    content_id,
    decompress_text,
    encode_metadata,
    normalize_text,
    unit_rows,
    validate_vectors,
    vector_checksum,
)
from engramdb.derived.context import TurnContext
from engramdb.derived.hotstate import HOT_COLUMNS, NEVER, HotState
from engramdb.derived.index import IndexConfig, IndexDamaged, VectorIndex
from engramdb.derived.indexer import BackgroundIndexer
from engramdb.derived.lexical import TOKENIZER_ID, LexicalIndex, LexicalMatch
from engramdb.derived.temporal import date_affinity, query_dates
from engramdb.encoders import Encoder, from_spec
from engramdb.engine import collect
from engramdb.engine import links as lk
from engramdb.engine.lifespan import LONG_TERM, apply_reward, effective_kind, recall_reward
from engramdb.errors import (
    CommitUncertain,
    CorruptStore,
    DimensionMismatch,
    EncoderRequired,
    EngramError,
    InvalidInput,
    ModelMismatch,
    NotAStore,
    NotFound,
    StorageError,
    StoreClosed,
)
from engramdb.progress import progress_bar
from engramdb.prompt import format_prompt
from engramdb.recall import hybrid
from engramdb.recall.filters import kind_codes, occurrence_filter
from engramdb.settings import Settings
from engramdb.storage import catalog as cat
from engramdb.storage.catalog import CATALOG_NAME, Catalog, CatalogClosed
from engramdb.storage.fsio import fsync_dir
from engramdb.storage.locking import LOCK_NAME, StoreLock
from engramdb.storage.manifest import MANIFEST_NAME, Manifest
from engramdb.storage.segments import SEGMENT_DIR, SegmentStore
from engramdb.types import (
    KIND_CODES,
    KIND_NAMES,
    Engram,
    IngestResult,
    Kind,
    Occurrence,
    Recall,
    Turn,
    VerifyReport,
)

INDEX_DIR = "index"
# BM25 postings as of the last close (derived; see Store._load_lexical).
LEXICAL_SNAPSHOT = "lexical.snapshot"
T = TypeVar("T")

# Files a half-created store may hold before its manifest (written last) exists.
_CREATION_FILES = {LOCK_NAME, CATALOG_NAME, CATALOG_NAME + ".wal", SEGMENT_DIR, INDEX_DIR,
                   "." + MANIFEST_NAME + ".tmp", LEXICAL_SNAPSHOT}


def open(  # noqa: A001 - the front door, like sqlite3.connect / shelve.open
    path: str | os.PathLike[str],
    encoder: Encoder | None = None,
    *,
    dim: int | None = None,
    settings: Settings | dict[str, Any] | None = None,
    lock_timeout: float = 0.0,
    create: bool = True,
    index: dict[str, Any] | None = None,
) -> Store:
    """Open the store at ``path``, creating it if it does not exist.

    A new store needs ``encoder`` (whose spec is recorded, so it reopens without code) or
    ``dim`` (a store of caller-supplied vectors). Reopening with a different encoder raises
    :class:`~engramdb.errors.ModelMismatch`; a second process gets
    :class:`~engramdb.errors.StoreLocked` naming the holder's pid after ``lock_timeout``
    seconds. ``index`` overrides the vector index configuration (``levels``, ``M``,
    ``ef_search``, ``candidate_multiplier``, ``exact_threshold``...; see
    ``engramdb.derived.index``), which is otherwise chosen from the dimension and size and recorded in the manifest.
    Other errors: NotAStore, CorruptStore, FormatTooNew, InvalidInput.

    >>> import engramdb
    >>> from engramdb.encoders import HashingEncoder
    >>> with engramdb.open(tmp / "alice.engram", encoder=HashingEncoder()) as mem:  # doctest: +SKIP
    ...     mem.ingest("I adopted a guinea pig named Oscar.")
    """
    return Store(
        Path(path), encoder, dim=dim, settings=settings, lock_timeout=lock_timeout,
        create=create, index=index,
    )


class _Background:
    """``fn(*args)`` running on a thread; :meth:`result` waits for it, returns or raises.

    Open runs reads on these (the vector index files, the catalog scan of the in-memory state)
    beside its other work; an open that fails waits for them (:meth:`wait`) before closing
    the catalog.
    """

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self._out: Any = None
        self._exc: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True,
                                        name="engramdb-open")
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._out = fn(*args)
        except BaseException as exc:  # handed to the caller of result()
            self._exc = exc

    def result(self) -> Any:
        """Wait for ``fn`` and return what it returned (or raise what it raised)."""
        self._thread.join()
        if self._exc is not None:
            raise self._exc
        return self._out

    def wait(self) -> None:
        """Wait for ``fn`` to end, ignoring its outcome (an open that failed elsewhere)."""
        self._thread.join()


class Store:
    """A persistent memory. Use :func:`engramdb.open` to get one; thread-safe within a process."""

    def __init__(
        self,
        path: Path,
        encoder: Encoder | None,
        *,
        dim: int | None,
        settings: Settings | dict[str, Any] | None,
        lock_timeout: float,
        create: bool,
        index: dict[str, Any] | None = None,
    ) -> None:
        if encoder is not None and not isinstance(encoder, Encoder):
            raise InvalidInput(f"encoder must be an engramdb Encoder, got {type(encoder).__name__}")
        if isinstance(settings, dict):
            settings = Settings.from_dict(settings)
        if lock_timeout is None or isinstance(lock_timeout, bool) or lock_timeout < 0:
            raise InvalidInput(f"lock_timeout must be a number of seconds >= 0, got {lock_timeout}")
        self.path = path
        self._pid = os.getpid()
        self._closed = True
        self._write_lock = threading.RLock()
        # Recalls in flight, and whether gc is moving vectors (_reading, _moving_vectors).
        self._gate = threading.Condition()
        self._readers = 0
        self._moving = False
        self._lock = StoreLock(self._prepare_directory(path, create))
        self._lock.acquire(lock_timeout)
        self.catalog: Catalog | None = None
        self.index: VectorIndex | None = None
        self._indexer: BackgroundIndexer | None = None
        self._index_unsaved = 0
        self._lexical_saved: int | None = None  # generation of lexical.snapshot, if current
        self._open_jobs: list[_Background] = []  # reads that open runs on threads
        self._prefault_stop = threading.Event()
        self._prefault: threading.Thread | None = None
        try:
            self._open_locked(encoder, dim, settings, index)
        except BaseException:
            for job in self._open_jobs:  # no work of a failed open outlives it
                job.wait()
            if self.catalog is not None:
                self.catalog.close()
            self._lock.release()
            raise
        self._closed = False
        if self.settings.prefault_vectors and self.segments.committed:
            self._prefault = threading.Thread(
                target=self.segments.prefault, args=(self._prefault_stop,), daemon=True,
                name="engramdb-prefault")
            self._prefault.start()

    # -- opening ------------------------------------------------------------------------------

    @staticmethod
    def _prepare_directory(path: Path, create: bool) -> Path:
        if path.exists() and not path.is_dir():
            raise NotAStore(f"{path} is a file, not a store directory")
        if (path / MANIFEST_NAME).exists():
            return path
        if path.exists():
            stray = {p.name for p in path.iterdir()} - _CREATION_FILES
            if stray:
                raise NotAStore(
                    f"{path} is a directory without an engramdb manifest "
                    f"(holds {', '.join(sorted(stray)[:3])})"
                )
        elif not create:
            raise NotAStore(f"no store at {path}", hint="pass create=True to make a new one")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {path}: {exc}") from exc
        return path

    def _open_locked(
        self, encoder: Encoder | None, dim: int | None, settings: Settings | None,
        index: dict[str, Any] | None,
    ) -> None:
        path = self.path
        if not (path / MANIFEST_NAME).exists():
            self._create(encoder, dim, settings or Settings())
        manifest = Manifest.read(path)
        if encoder is not None and encoder.fingerprint != manifest.fingerprint:
            raise ModelMismatch(
                f"{path} was built with encoder {manifest.encoder_spec.get('kind')} "
                f"(fingerprint {manifest.fingerprint[:16]}), but was opened with "
                f"{encoder.spec().get('kind')} (fingerprint {encoder.fingerprint[:16]})"
            )
        if dim is not None and dim != manifest.dim:
            raise DimensionMismatch(f"{path} has dim {manifest.dim}, not {dim}")
        if settings is not None and settings.to_dict() != manifest.settings:
            if settings.vector_dtype != manifest.dtype:
                raise InvalidInput("vector_dtype cannot change after a store is created")
            manifest.settings = settings.to_dict()
            manifest.write(path)
        self.manifest = manifest
        self.settings = Settings.from_stored(manifest.settings)
        self.dim = manifest.dim
        self.fingerprint = manifest.fingerprint
        self._encoder = encoder
        # The vector index files are read and checked on a thread while the catalog is opened
        # and queried below: the index's CRC pass and DuckDB's queries run without the GIL, so
        # on 2 cores they overlap (_load_index waits for it).
        index_files = None
        if (path / INDEX_DIR / "index.json").exists():
            index_files = _Background(VectorIndex.load, path / INDEX_DIR, manifest.dim)
            self._open_jobs.append(index_files)
        durable = self.settings.durability == "full"
        self._fast = not durable  # "fast" durability: writes are synced at sync points
        self._last_sync = time.monotonic()
        # A catalog rewrite that died before its rename leaves this behind (collect.py).
        (path / (CATALOG_NAME + ".compact")).unlink(missing_ok=True)
        self.catalog = Catalog(path / CATALOG_NAME, fast=self._fast)
        counters = self.catalog.counters()
        if not {"generation", "clock", "next_eid", "next_seq"} <= set(counters):
            raise CorruptStore(f"{path}: catalog counters are incomplete ({sorted(counters)})")
        if "last_turn" not in counters:  # stores written before integrate() kept it
            with self.catalog.transaction() as con:
                con.execute("INSERT INTO counters VALUES ('last_turn', -1)")
            counters["last_turn"] = -1
        if "synced_eid" not in counters:  # stores written before "fast" durability: all synced
            with self.catalog.durable(), self.catalog.transaction() as con:
                con.execute("INSERT INTO counters VALUES ('synced_eid', ?)",
                            [counters["next_eid"]])
            counters["synced_eid"] = counters["next_eid"]
        self._generation = counters["generation"]
        self._clock = counters["clock"]
        self._next_eid = counters["next_eid"]
        self._next_seq = counters["next_seq"]
        self._last_turn = counters["last_turn"]
        itemsize = 2 if manifest.dtype == "float16" else 4
        self.segments = SegmentStore(
            path,
            manifest.dim,
            manifest.dtype,
            self.settings.segment_bytes // (manifest.dim * itemsize),
            durable,
        )
        self.recovered = self._settle_unsynced(counters["synced_eid"])
        self.recovered += self.segments.recover(self.catalog.segment_lengths())
        # The in-memory state is one DuckDB scan (GIL-free, on its own cursor): it runs beside
        # the BM25 load, which needs no part of it.
        hot = _Background(lambda: HotState.from_arrow(
            self._query_arrow(f"SELECT {HOT_COLUMNS} FROM engrams")))
        self._open_jobs.append(hot)
        self.lexical = self._load_lexical()
        self.context = self._load_context()
        # Whether any link exists: a store without links skips the edge query on every recall.
        self._has_links = bool(self._query("SELECT count(*) FROM edges")[0][0])
        self.hot = hot.result()
        self._check_pointers()
        self.index = self._load_index(index, index_files)
        self._indexer = BackgroundIndexer(
            self.index, max_pending_bytes=int(self.settings.index_backlog_mb * 2**20))
        self._fit_rotation()  # a store closed (or crashed) between its first writes and the fit

    def _create(self, encoder: Encoder | None, dim: int | None, settings: Settings) -> None:
        if encoder is not None:
            spec = encoder.spec()
            if dim is not None and dim != encoder.dim:
                raise DimensionMismatch(f"dim={dim} but the encoder produces {encoder.dim}")
            dim = encoder.dim
        elif dim is not None:
            if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
                raise InvalidInput(f"dim must be a positive int, got {dim!r}")
            spec = {"kind": "vectors", "dim": dim}
        else:
            raise InvalidInput(
                f"{self.path} does not exist yet; creating a store needs encoder=... or dim=...",
                hint="engramdb.open(path, encoder=HashingEncoder()) or open(path, dim=384)",
            )
        # The catalog and segments come first and the manifest last: a store without a
        # manifest is an unfinished creation, which the next open may safely redo.
        catalog_path = self.path / CATALOG_NAME
        for stale in (catalog_path, self.path / (CATALOG_NAME + ".wal"),
                      self.path / LEXICAL_SNAPSHOT):
            stale.unlink(missing_ok=True)
        shutil.rmtree(self.path / SEGMENT_DIR, ignore_errors=True)
        shutil.rmtree(self.path / INDEX_DIR, ignore_errors=True)
        (self.path / SEGMENT_DIR).mkdir()
        catalog = Catalog(catalog_path)
        try:
            catalog.create_schema()
            catalog.checkpoint()
        finally:
            catalog.close()
        fsync_dir(self.path)
        Manifest(encoder_spec=spec, dim=dim, dtype=settings.vector_dtype,
                 settings=settings.to_dict()).write(self.path)

    def _load_lexical(self) -> LexicalIndex:
        """Load the BM25 index; rebuild its tables from the engram texts if they disagree.

        The lexical tables are derived from the texts, so a store imported or written without
        them (or with another tokenizer) is repaired here rather than refused.

        The tables stay the truth, but reading them costs a sort of every posting (4 s at 1M
        engrams), so close() leaves a snapshot of the in-memory index (``lexical.snapshot``,
        :meth:`LexicalIndex.save_snapshot`). It is used only if it was written at the catalog's
        current generation, with this tokenizer, and holds as many documents, postings, eids
        and tokens as the tables; anything else (a crash, a damaged file) falls back to them.
        """
        con = self.catalog.con
        try:
            for statement in LexicalIndex.schema_sql():
                con.execute(statement)
        except duckdb.Error as exc:  # a failed write; never a raw DuckDB error (issue 8)
            raise StorageError(f"cannot create the lexical tables: {exc}") from exc
        self._lexical_saved = None
        docs, engrams, eid_sum, len_sum, postings = self._query(
            "SELECT (SELECT count(*) FROM lex_docs), (SELECT count(*) FROM engrams), "
            "(SELECT coalesce(sum(eid), 0) FROM lex_docs), "
            "(SELECT coalesce(sum(len), 0) FROM lex_docs), (SELECT count(*) FROM lex_postings)"
        )[0]
        if docs == engrams:
            lex = self._lexical_snapshot({"docs": docs, "postings": postings,
                                          "eid_sum": int(eid_sum), "len_sum": int(len_sum)})
            if lex is not None:
                return lex
        stale = docs != engrams or self._query(
            "SELECT count(*) FROM engrams e ANTI JOIN lex_docs d ON d.eid = e.eid")[0][0]
        if stale:
            (self.path / LEXICAL_SNAPSHOT).unlink(missing_ok=True)
            lex = LexicalIndex()
            rows = self._query("SELECT eid, text FROM engrams ORDER BY eid")
            batch = lex.add_rows([r[0] for r in rows], [decompress_text(r[1]) for r in rows])
            with self._tx() as tx:
                tx.execute("DELETE FROM lex_postings")
                tx.execute("DELETE FROM lex_docs")
                LexicalIndex.insert(tx, batch)
            self.recovered.append(f"rebuilt the lexical index of {len(rows)} engrams")
        try:
            return LexicalIndex.load(con)
        except duckdb.Error as exc:
            raise CorruptStore(f"lexical index tables are unreadable: {exc}") from exc

    def _lexical_snapshot(self, tables: dict[str, int]) -> LexicalIndex | None:
        """The BM25 index from ``lexical.snapshot`` if it matches the catalog (``tables``: what
        ``lex_docs``/``lex_postings`` hold), else None; a stale or damaged file is removed."""
        snap = self.path / LEXICAL_SNAPSHOT
        try:
            lex, info = LexicalIndex.load_snapshot(snap)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.recovered.append(f"ignored a damaged lexical snapshot ({exc})")
            snap.unlink(missing_ok=True)
            return None
        if info.get("meta") != {"generation": self._generation, "tokenizer": TOKENIZER_ID} \
                or info.get("stats") != tables:
            snap.unlink(missing_ok=True)
            return None
        self._lexical_saved = self._generation
        return lex

    def _save_lexical(self) -> None:
        """Snapshot the BM25 index for the next open (derived state: a failure is ignored,
        and only costs that open the slower read of the tables)."""
        for stale in self.path.glob(LEXICAL_SNAPSHOT + ".tmp-*"):  # left by a crash
            stale.unlink(missing_ok=True)
        try:
            self.lexical.save_snapshot(self.path / LEXICAL_SNAPSHOT,
                                       {"generation": self._generation, "tokenizer": TOKENIZER_ID})
        except (OSError, ValueError):
            return
        self._lexical_saved = self._generation

    def _load_context(self, derive: bool = False) -> TurnContext:
        """Load the conversation context (``engramdb/context.py``); derive its tables from the
        occurrences when the store has none yet (written before they existed) or ``derive``."""
        con = self.catalog.con
        existed = self._query(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'turns'")[0][0]
        try:
            for statement in TurnContext.schema_sql():
                con.execute(statement)
        except duckdb.Error as exc:  # a failed write; never a raw DuckDB error (issue 8)
            raise StorageError(f"cannot create the context tables: {exc}") from exc
        if derive or not existed:
            try:
                rows = TurnContext(self.lexical.tokenizer).derive(con, self.settings.date_key)
            except duckdb.Error as exc:  # as Catalog.query: never a raw DuckDB error
                raise CorruptStore(f"catalog read failed: {exc}") from exc
            with self._tx() as tx:
                tx.execute("DELETE FROM turns")
                tx.execute("DELETE FROM labels")
                TurnContext.insert(tx, rows)
            if rows.turns.num_rows and not derive:
                self.recovered.append(
                    f"derived the conversation context of {rows.turns.num_rows} engrams")
        try:
            return TurnContext.load(con, self.lexical.tokenizer, self.lexical.doc_lengths())
        except duckdb.Error as exc:
            raise CorruptStore(f"context tables are unreadable: {exc}") from exc

    def _load_index(self, override: dict[str, Any] | None,
                    index_files: _Background | None = None) -> VectorIndex:
        """Load the vector index and bring it up to date with the catalog, or rebuild it.

        The index is derived state: a missing, damaged or ahead-of-catalog index is rebuilt,
        and one that lags is brought up to date by replaying the engrams it lacks.
        """
        recorded = self.manifest.index.get("config")
        if override is not None:
            base = recorded or IndexConfig.choose(self.dim, int(self.hot.alive.sum())).to_dict()
            cfg = IndexConfig.from_dict({**base, **override})
        elif recorded:
            cfg = IndexConfig.from_dict(recorded)
        else:
            cfg = IndexConfig.choose(self.dim, int(self.hot.alive.sum()))
        cfg.validate(self.dim)
        if cfg.to_dict() != recorded or (override is not None) != bool(
            self.manifest.index.get("user_override")
        ):
            self.manifest.index = {"config": cfg.to_dict(),
                                   "user_override": override is not None or bool(
                                       self.manifest.index.get("user_override"))}
            self.manifest.write(self.path)
        live = self.hot.live_eids(self._clock)
        try:
            if index_files is None:
                raise IndexDamaged(f"no {INDEX_DIR}/index.json")
            idx, generation = index_files.result()
            if not idx.config.same_graphs(cfg):
                raise IndexDamaged("its graphs were built with another configuration")
            if generation > self._generation:
                raise IndexDamaged("it is ahead of the catalog")
        except IndexDamaged as exc:
            self.recovered.append(f"rebuilt the vector index ({exc})")
            return self._build_index(cfg, live)
        if idx.config != cfg:  # only search settings changed: no rebuild needed
            idx.set_search_config(cfg)
        if idx.stale_format:  # saved by an older engramdb: close() saves it in today's format
            self._index_unsaved += 1
        have = idx.labels()
        if np.array_equal(have, live):  # after a clean close: nothing to replay (no sorts)
            missing = extra = have[:0]
        else:
            missing = np.setdiff1d(live, have, assume_unique=True)
            extra = np.setdiff1d(have, live, assume_unique=True)
        if len(missing):
            for start in range(0, len(missing), 50_000):
                part = missing[start:start + 50_000]
                idx.add(part, self._fetch_vectors(part))
            self.recovered.append(f"replayed {len(missing)} engrams into the vector index")
            self._index_unsaved = len(missing)
        if len(extra):
            idx.mark_deleted(extra)
            self._index_unsaved += len(extra)
        self.hot.next_death = float(self.hot.expires[live].min()) if len(live) else NEVER
        return idx

    def _build_index(self, cfg: IndexConfig, live: np.ndarray,
                     progress: bool = False) -> VectorIndex:
        bar = progress_bar(len(live), progress or len(live) > 50_000, "index")
        try:
            idx = VectorIndex.build(
                live, self._fetch_vectors, cfg, dim=self.dim,
                progress=None if bar is None else lambda done, total: bar.update(done - bar.n),
            )
        finally:
            if bar is not None:
                bar.close()
        if self._indexer is not None:
            self._indexer.reset(idx)
        self.index = idx
        self._save_index()
        self.hot.next_death = float(self.hot.expires[live].min()) if len(live) else NEVER
        return idx

    def _save_index(self) -> None:
        """Persist the vector index (derived state) with the generation it covers."""
        # "fast": the index must not cover writes a power cut could still take back (their
        # eids would be handed out again, and the saved graph would hold the old vectors).
        self._sync_locked()
        if self._indexer is not None:
            self._indexer.drain()  # a saved index must hold every row its generation covers
        try:
            self.index.save(self.path / INDEX_DIR, self._generation)
        except OSError as exc:
            raise StorageError(f"saving the vector index failed: {exc}") from exc
        self._index_unsaved = 0

    def drain_index(self, *, save: bool = True) -> int:
        """Wait until every acknowledged engram is in the vector index; return how many were
        waited for. ``save`` then persists the index, so a reopen replays nothing.

        Writes return once durable and are indexed on a background thread (searches scan the
        backlog exactly meanwhile); call this after a bulk load before timing searches, or to
        bound the work of the next open. Raises ``StorageError`` if background indexing failed
        (``rebuild()`` recovers).

        >>> mem.ingest_many(texts); mem.drain_index()  # doctest: +SKIP
        """
        self._check_open()
        waiting = len(self._indexer) if self._indexer is not None else 0
        if self._indexer is not None:
            self._indexer.drain()
        if save:
            with self._write_lock:
                self._check_open()
                if self._index_unsaved:
                    self._save_index()
        return waiting

    def rebuild(self, *, progress: bool = False) -> dict[str, Any]:
        """Rebuild every derived structure from the catalog and the segments.

        Refits the rotation and rebuilds every level of the vector index (choosing the
        configuration again for the store's current size unless the user set one), and
        rebuilds the lexical index. Use it after large deletions or to apply a new index
        configuration. Returns what was built.

        >>> mem.rebuild()  # doctest: +SKIP
        {'indexed': 1000, 'levels': [384], 'lexical': 1000}
        """
        self._check_open()
        with self._write_lock:
            self._check_open()
            live = self.hot.live_eids(self._clock)
            cfg = self.index.config if self.manifest.index.get("user_override") else \
                IndexConfig.choose(self.dim, len(live))
            if cfg.to_dict() != self.manifest.index.get("config"):
                self.manifest.index = {**self.manifest.index, "config": cfg.to_dict()}
                self.manifest.write(self.path)
            self._build_index(cfg, live, progress)
            with self._tx() as tx:
                tx.execute("DELETE FROM lex_postings")
                tx.execute("DELETE FROM lex_docs")
            self.lexical = self._load_lexical()
            self.context = self._load_context(derive=True)
            return {"indexed": len(live), "levels": list(cfg.levels), "lexical": len(self.lexical)}

    def _check_pointers(self) -> None:
        """Every live pointer must fall inside a committed segment row."""
        committed = self.segments.committed
        alive = np.nonzero(self.hot.alive)[0]
        if len(alive) == 0:
            return
        segs, rows = self.hot.seg[alive], self.hot.row[alive]
        # One lookup table over segment numbers, not a dict lookup per engram (2 s at 1M).
        known = np.array(sorted(committed), np.int64)
        lengths = np.array([committed[s] for s in known.tolist()], np.int64)
        pos = np.minimum(np.searchsorted(known, segs), max(len(known) - 1, 0))
        hit = (known[pos] == segs) if len(known) else np.zeros(len(segs), bool)
        limits = np.where(hit, lengths[pos] if len(known) else 0, 0)
        bad = rows >= limits
        if bad.any():
            raise CorruptStore(
                f"{self.path}: {int(bad.sum())} engrams point past the committed vectors"
            )

    def _settle_unsynced(self, mark: int) -> list[str]:
        """Check the vectors written after the last sync point; drop the engrams they lost.

        In "fast" durability a power cut can keep catalog rows whose vector bytes never
        reached the disk. Every engram from ``mark`` (the ``synced_eid`` counter) on is checked
        against its checksum, read from the file. In one durable transaction the engrams that
        fail are removed (logged with reason ``lost``), segments shorter on disk than their
        committed length are cut back, and the mark is advanced once the survivors are
        fsynced. A no-op after a clean close and in "full" mode, which keep the mark current.
        """
        if mark > self._next_eid:
            # Not a mark of this store's eids (an import by an engramdb that copied counters
            # it did not know): every engram here was written with fsyncs, so all are synced.
            with self.catalog.durable(), self.catalog.transaction() as con:
                cat.set_counters(con, {"synced_eid": self._next_eid})
        if mark >= self._next_eid:
            return []
        rows = self._query_arrow(
            'SELECT eid, seg, "row", vec_sum FROM engrams WHERE eid >= ? ORDER BY eid', [mark])
        segs = rows.column("seg").to_numpy()
        ok = self.segments.verify_rows(segs, rows.column("row").to_numpy(),
                                       rows.column("vec_sum").to_pylist())
        lost = rows.column("eid").to_numpy()[~ok]
        committed = self.catalog.segment_lengths()
        lengths = {s: min(n, self.segments.rows_on_disk(s)) for s, n in committed.items()}
        lengths = {s: n for s, n in lengths.items() if n}  # a file that never reached the disk
        self.segments.sync({int(s) for s in np.unique(segs[ok])})
        counters = {"synced_eid": self._next_eid}
        with self.catalog.durable(), self.catalog.transaction() as con:
            if len(lost):
                ids = lk.in_list(lost)
                con.execute("INSERT INTO forgotten SELECT eid, id, ?, 'lost', kind, false "
                            f"FROM engrams WHERE eid IN {ids}", [self._clock])
                con.execute(f"DELETE FROM occurrences WHERE eid IN {ids}")
                con.execute(f"DELETE FROM edges WHERE a IN {ids} OR b IN {ids}")
                con.execute(f"DELETE FROM engrams WHERE eid IN {ids}")
                for sql, params in [*LexicalIndex.delete_sql(lost), *TurnContext.delete_sql(lost)]:
                    con.execute(sql, params)
                counters["generation"] = self._generation + 1
                if self._last_turn in set(lost.tolist()):
                    counters["last_turn"] = -1
            if lengths != committed:
                cat.set_segment_lengths(con, lengths, committed)
            cat.set_counters(con, counters)
        self._generation = counters.get("generation", self._generation)
        self._last_turn = counters.get("last_turn", self._last_turn)
        actions = [f"checked {len(ok)} engrams written after the last sync point"] if len(ok) \
            else []
        if len(lost):
            actions.append(
                f"lost {len(lost)} engrams written after the last sync point: their vectors "
                "were not on disk (power loss or OS crash with durability 'fast'); the "
                "forgetting log lists them with reason 'lost'")
        for seg in sorted(s for s in committed if lengths.get(s, 0) != committed[s]):
            actions.append(f"cut segment {seg} from {committed[seg]} to {lengths.get(seg, 0)} "
                           "committed rows (the rest of it was not on disk)")
        return actions

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the store (idempotent). Every acknowledged write is already durable."""
        if self._closed or os.getpid() != self._pid:
            self._closed = True  # a forked child must not touch the parent's handles
            return
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._sync_locked()  # "fast": this handle's writes become durable
                if self.index is not None and self._index_unsaved and not (
                        self._indexer is not None and self._indexer.failed):
                    self._save_index()  # a failed indexer's rows are replayed on next open
                if self._lexical_saved != self._generation:
                    self._save_lexical()  # the next open reads it instead of the tables
            finally:
                self._prefault_stop.set()
                if self._prefault is not None:
                    self._prefault.join()  # within one chunk's madvise
                if self._indexer is not None:
                    self._indexer.close()
                if self.catalog is not None:
                    self.catalog.close()
                self._lock.release()

    def sync(self) -> None:
        """Make every acknowledged write durable now: the sync point of "fast" durability.

        With ``durability="fast"`` writes are acknowledged before anything is fsynced; this
        fsyncs the vector segments written since the last sync point, then commits the new
        sync mark with an fsync of the catalog's WAL (which makes every earlier commit durable
        too). ``close()``, ``gc()``, ``rebuild()`` and the first write after
        ``settings.sync_interval`` seconds sync as well. A no-op with ``durability="full"``,
        where every write is durable on return. Raises StorageError if an fsync fails; the
        handle is closed then, and opening the store again keeps what reached the disk.

        >>> mem.ingest_many(texts); mem.sync()  # doctest: +SKIP
        """
        self._check_open()
        with self._write_lock:
            self._check_open()
            self._sync_locked()

    def _sync_locked(self) -> None:
        """:meth:`sync` under the write lock (no-op when nothing is pending)."""
        if not self._fast or not (self.catalog.pending or self.segments.dirty):
            return
        try:
            self.segments.sync()  # vectors first: the mark below promises they are on disk
        except StorageError:
            # Linux may drop pages whose writeback failed and call the next fsync clean, so
            # retrying here proves nothing. The reopen checks every engram past the mark.
            self._abandon()
            raise
        try:
            with self.catalog.durable(), self.catalog.transaction() as con:
                con.execute("UPDATE counters SET value = (SELECT value FROM counters "
                            "WHERE name = 'next_eid') WHERE name = 'synced_eid'")
        except CommitUncertain:
            self._abandon()
            raise
        self._last_sync = time.monotonic()

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """A catalog transaction; an uncertain commit abandons this handle (see _abandon).

        With "fast" durability, the first transaction after ``settings.sync_interval`` seconds
        first syncs what came before it (the in-memory state matches the catalog here).
        """
        if self._fast and self.catalog.pending and (
                time.monotonic() - self._last_sync >= self.settings.sync_interval):
            self._sync_locked()
        try:
            with self.catalog.transaction() as con:
                yield con
        except CommitUncertain:
            self._abandon()
            raise

    def _abandon(self) -> None:
        """Close this handle without saving derived state, after an uncertain commit.

        Its in-memory state may disagree with the catalog now; recovery on the next open
        settles it from what is durable (vectors past the committed length are cut then).
        """
        self._closed = True
        self._prefault_stop.set()
        try:
            if self._indexer is not None:
                self._indexer.close()
            if self.catalog is not None:
                self.catalog.close()
        finally:
            self._lock.release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self.count} engrams"
        return f"<engramdb.Store {str(self.path)!r} {state}>"

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"{self.path} is closed")
        if os.getpid() != self._pid:
            raise StoreClosed(
                f"{self.path} was opened by process {self._pid}; this is a forked child",
                hint="open the store again in the child process",
            )

    # -- encoder ------------------------------------------------------------------------------

    @property
    def encoder(self) -> Encoder:
        """The store's encoder, rebuilt from the manifest on first use when none was given."""
        if self._encoder is None:
            enc = from_spec(self.manifest.encoder_spec)
            if enc.fingerprint != self.fingerprint:
                raise ModelMismatch(
                    f"the encoder rebuilt from the manifest has fingerprint {enc.fingerprint[:16]}"
                    f", the store expects {self.fingerprint[:16]} (the model files changed?)"
                )
            self._encoder = enc
        return self._encoder

    def _encode(self, texts: list[str]) -> np.ndarray:
        try:
            raw = self.encoder.encode_checked(texts)
        except EngramError:
            raise
        except Exception as exc:  # the encoder is user code or a model: wrap what it throws
            raise InvalidInput(f"the encoder failed: {type(exc).__name__}: {exc}") from exc
        return check_vectors(raw, self.dim, len(texts), what="encoded vector")

    # -- writes -------------------------------------------------------------------------------

    def ingest(
        self,
        text: str,
        *,
        role: str | None = None,
        session: str | None = None,
        metadata: dict[str, Any] | None = None,
        vector: Any = None,
        pin: bool = False,
    ) -> IngestResult:
        """Store one text (and its vector); return its content id and whether it was new.

        The same content ingested again returns the same id with ``is_new=False``; its
        reference count grows and the new occurrence (role, session, metadata, tick) is kept.
        Raises InvalidInput / DimensionMismatch for bad input (nothing is written),
        EncoderRequired when there is no encoder and no ``vector``, StorageError on disk failure.

        >>> mem.ingest("I adopted a guinea pig named Oscar.", role="user")  # doctest: +SKIP
        IngestResult(id='3f1c...', is_new=True)
        """
        return self.ingest_many(
            [text],
            vectors=None if vector is None else [vector],
            roles=[role],
            sessions=[session],
            metadatas=[metadata],
            pins=[pin],
        )[0]

    def ingest_many(
        self,
        texts: Sequence[str],
        *,
        vectors: Any = None,
        roles: Sequence[str | None] | None = None,
        sessions: Sequence[str | None] | None = None,
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        pins: Sequence[bool] | None = None,
        progress: bool = False,
        kind: Kind = Kind.SHORT_TERM,
    ) -> list[IngestResult]:
        """Store many texts in batches: one segment append + fsync and one commit per batch.

        Every argument is validated before the first batch is written. Batches of
        ``settings.batch_rows`` commit one after another; if one fails, the earlier ones stay
        stored (ingesting them again is safe: content ids deduplicate, only the reference
        counts grow). Raises as :meth:`ingest`.

        >>> mem.ingest_many(["hi", "how are you?"], roles=["user", "bot"])  # doctest: +SKIP
        """
        self._check_open()
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InvalidInput("texts must be a list of str (for one text use ingest())")
        n = len(texts)
        norm = [normalize_text(t, what=f"texts[{i}]") for i, t in enumerate(texts)]
        roles_ = _per_item(roles, n, "roles", lambda v, w: check_label(v, w))
        sessions_ = _per_item(sessions, n, "sessions", lambda v, w: check_label(v, w))
        metas = _per_item(metadatas, n, "metadatas", lambda v, w: encode_metadata(v))
        pins_ = _per_item(pins, n, "pins", _check_bool)
        # Checked whole now (nothing is written if any is bad), normalised batch by batch: a
        # bulk load holds one float32 batch at a time, not a normalised copy of its input.
        given = None if vectors is None else validate_vectors(vectors, self.dim, n)
        if given is None and n and self.manifest.encoder_spec.get("kind") in ("vectors",):
            raise EncoderRequired("this store has no encoder: pass vectors=...")
        if kind not in (Kind.WORKING, Kind.SHORT_TERM, Kind.LONG_TERM):
            raise InvalidInput(f"kind must be working, short_term or long_term, got {kind!r}")
        ids = [content_id(self.fingerprint, t) for t in norm]
        results: list[IngestResult] = []
        step = self.settings.batch_rows
        bar = progress_bar(n, progress, "ingest")
        try:
            for start in range(0, n, step):
                stop = min(n, start + step)
                with self._write_lock:
                    self._check_open()
                    results.extend(
                        self._ingest_batch(
                            ids[start:stop], norm[start:stop], roles_[start:stop],
                            sessions_[start:stop], metas[start:stop], pins_[start:stop],
                            None if given is None else unit_rows(given[start:stop]),
                            KIND_CODES[kind.value],
                        )
                    )
                    self._settle_overflow()
                if bar is not None:
                    bar.update(stop - start)
        finally:
            if bar is not None:
                bar.close()
        return results

    def _ingest_batch(
        self,
        ids: list[str],
        texts: list[str],
        roles: list[str | None],
        sessions: list[str | None],
        metas: list[str | None],
        pins: list[bool],
        given: np.ndarray | None,
        kind_code: int,
        *,
        now: int | None = None,
        hook: Callable[[Any, dict[str, int], int], Callable[[], None] | None] | None = None,
    ) -> list[IngestResult]:
        """Write one batch under the write lock: vectors first, then one catalog commit.

        ``now`` (integrate) moves the clock to that tick in the same commit; ``hook`` runs
        inside the transaction (rewards, links) and may return a function to run once the
        commit is acknowledged.
        """
        if self._indexer is not None:
            self._indexer.check()  # before anything is written: a failed indexer refuses
        existing = self._lookup_ids(sorted(set(ids)))
        # First occurrence in the batch of each new id becomes the engram; the rest are refs.
        new_first: dict[str, int] = {}
        for i, ident in enumerate(ids):
            if ident not in existing and ident not in new_first:
                new_first[ident] = i
        new_idx = list(new_first.values())
        if new_idx:
            if given is not None:  # all new and distinct (a bulk load): no copy
                vecs = given if len(new_idx) == len(given) else given[new_idx]
            else:
                vecs = self._encode([texts[i] for i in new_idx])
        advance = now is not None
        now = self._clock if now is None else now
        s = self.settings
        life = s.long_term_lifespan if kind_code == LONG_TERM else s.short_term_lifespan
        eid_of = dict(existing)
        new_eids = np.arange(self._next_eid, self._next_eid + len(new_idx), dtype=np.int64)
        for ident, eid in zip(new_first, new_eids):
            eid_of[ident] = int(eid)
        pinned_ids = {ids[i] for i in range(len(ids)) if pins[i]}
        seqs = np.arange(self._next_seq, self._next_seq + len(ids), dtype=np.int64)
        plan = self.segments.plan(len(new_idx)) if new_idx else None
        if plan is not None:
            stored = vecs.astype(self.segments.dtype)
            segs, rows = plan.pointers()
            new_kinds = np.full(len(new_idx), kind_code, np.int8)
            new_exp = np.array(
                [NEVER if ids[i] in pinned_ids else now + life for i in new_idx], np.float64
            )
            engram_rows = pa.table(
                {
                    "eid": pa.array(new_eids),
                    "id": pa.array([ids[i] for i in new_idx], pa.string()),
                    "seg": pa.array(segs, pa.int32()),
                    "row": pa.array(rows),
                    "vec_sum": pa.array([vector_checksum(v) for v in stored], pa.int64()),
                    "text": pa.array([compress_text(texts[i]) for i in new_idx], pa.binary()),
                    "kind": pa.array(new_kinds, pa.int8()),
                    "created_tick": pa.array(np.full(len(new_idx), now, np.int64)),
                    "expires_at": pa.array([None if np.isinf(e) else e for e in new_exp],
                                           pa.float64()),
                    "pinned": pa.array([ids[i] in pinned_ids for i in new_idx], pa.bool_()),
                    "refs": pa.array(np.zeros(len(new_idx), np.int32)),  # bumped below
                    "recalls": pa.array(np.zeros(len(new_idx), np.int32)),
                    "earned": pa.array(np.zeros(len(new_idx), np.float64)),
                    "last_tick": pa.array(np.full(len(new_idx), now, np.int64)),
                }
            )
        occ_rows = pa.table(
            {
                "eid": pa.array([eid_of[i] for i in ids], pa.int64()),
                "seq": pa.array(seqs),
                "role": pa.array(roles, pa.string()),
                "session": pa.array(sessions, pa.string()),
                "tick": pa.array(np.full(len(ids), now, np.int64)),
                "metadata": pa.array(metas, pa.string()),
            }
        )
        revive = sorted({eid_of[i] for i in ids if i in existing})
        lex_rows = self.lexical.add_rows(new_eids, [texts[i] for i in new_idx]) if plan else None
        home = [new_first.get(i) == k for k, i in enumerate(ids)]
        ctx_rows = self.context.plan(
            [eid_of[i] for i in ids], home, sessions, roles,
            _metadata_dates(metas, home, self.settings.date_key), self._stored)
        committed = self.segments.committed
        if plan is not None:
            self.segments.write(plan, stored)  # durable before the commit that points at it
            committed = plan.committed_after(committed)
        counters = {
            "generation": self._generation + 1,
            "next_eid": self._next_eid + len(new_idx),
            "next_seq": self._next_seq + len(ids),
        }
        if not self._fast:  # the vectors were fsynced above: the sync mark moves with them
            counters["synced_eid"] = counters["next_eid"]
        if advance:
            counters["clock"] = now
        after = None
        try:
            with self._tx() as con:
                if plan is not None:
                    cat.insert_arrow(con, "engrams", engram_rows)
                    LexicalIndex.insert(con, lex_rows)
                cat.insert_arrow(con, "occurrences", occ_rows)
                TurnContext.insert(con, ctx_rows)
                _update_for_occurrences(
                    con, [eid_of[i] for i in ids], revive,
                    sorted(existing[i] for i in pinned_ids & set(existing)), now, life,
                )
                if plan is not None:
                    cat.set_segment_lengths(con, committed, self.segments.committed)
                cat.set_counters(con, counters)
                if hook is not None:
                    after = hook(con, eid_of, now)
        except CommitUncertain:
            raise  # _tx abandoned the handle; keep the vector bytes: the catalog may use them
        except BaseException:
            self.segments.rollback()
            raise
        # Acknowledged: make it visible.
        self._clock = now
        self._generation = counters["generation"]
        self._next_eid = counters["next_eid"]
        self._next_seq = counters["next_seq"]
        if plan is not None:
            self.segments.set_committed(committed)
            self.hot.add(new_eids, segs, rows, new_kinds, new_exp,
                         np.full(len(new_eids), now, np.int64))
            self.hot.add_payload(new_eids, engram_rows.column("id").to_pylist(),
                                 engram_rows.column("text").to_pylist())
            self.lexical.apply_add(lex_rows)
            self._on_vectors_added(new_eids, stored)
        self.context.apply(ctx_rows, (
            (lex_rows.docs.column("eid").to_numpy(), lex_rows.docs.column("len").to_numpy())
            if lex_rows is not None else (np.zeros(0, np.int64), np.zeros(0, np.float32))))
        if revive:
            self._refresh_hot(revive)
        if after is not None:
            after()
        return [IngestResult(id=i, is_new=i not in existing and new_first.get(i) == k)
                for k, i in enumerate(ids)]

    def _stored(self, eid: int) -> bool:
        """Whether an engram is stored (not forgotten or collected; it may have expired)."""
        return 0 <= eid < self.hot.capacity and bool(self.hot.alive[eid])

    def _lookup_ids(self, ids: list[str]) -> dict[str, int]:
        """Map the ids that are stored (alive or expired, not forgotten) to their eids."""
        if not ids:
            return {}
        if len(ids) <= _POINT_UPDATE_MAX and all(_is_id(i) for i in ids):
            # Literal ids use the index on id (1 ms less per call at 1M engrams than a scan).
            listed = ",".join(f"'{i}'" for i in ids)
            rows = self._query(f"SELECT id, eid FROM engrams WHERE id IN ({listed})")
        else:
            rows = self._query(
                "SELECT id, eid FROM engrams WHERE id IN (SELECT unnest(?::VARCHAR[]))", [ids]
            )
        return {i: int(e) for i, e in rows}

    def _refresh_hot(self, eids: list[int]) -> None:
        """Reload kind and expiry of engrams said again (their pointers do not change)."""
        rows = self._query(
            f"SELECT eid, kind, expires_at FROM engrams WHERE eid IN {lk.in_list(eids)}")
        e = np.array([r[0] for r in rows], np.int64)
        self.hot.set_life(e, np.array([r[1] for r in rows], np.int8),
                          np.array([NEVER if r[2] is None else r[2] for r in rows], np.float64))
        if self.index is not None:  # content said again after it expired lives again
            ix = self._indexer
            back = np.array([x for x in e.tolist() if x not in self.index
                             and not (ix is not None and ix.is_pending(x))], np.int64)
            if len(back):
                self.index.add(back, self._fetch_vectors(back))

    def forget(self, ids: str | Iterable[str]) -> int:
        """Erase engrams now: they vanish from recall at once; ``gc()`` reclaims their bytes.

        Removes the engram rows, occurrences and links in one transaction and records each id
        in the forgetting log. Raises NotFound if any id is unknown (nothing is forgotten then).
        Returns the number of engrams forgotten.

        >>> mem.forget([result.id])  # doctest: +SKIP
        1
        """
        self._check_open()
        id_list = [ids] if isinstance(ids, str) else list(ids)
        for i in id_list:
            _check_id(i)
        with self._write_lock:
            self._check_open()
            found = self._lookup_ids(sorted(set(id_list)))
            missing = sorted(set(id_list) - set(found))
            if missing:
                raise NotFound(f"no engram with id {missing[0]}"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
            eids = sorted(found.values())
            now = self._clock
            with self._tx() as con:
                con.execute(
                    "INSERT INTO forgotten SELECT eid, id, ?, 'forgotten', kind, false "
                    "FROM engrams WHERE eid IN (SELECT unnest(?::BIGINT[]))", [now, eids])
                for table, where in (("engrams", "eid"), ("occurrences", "eid")):
                    con.execute(f"DELETE FROM {table} WHERE {where} IN "
                                "(SELECT unnest(?::BIGINT[]))", [eids])
                con.execute("DELETE FROM edges WHERE a IN (SELECT unnest(?::BIGINT[])) "
                            "OR b IN (SELECT unnest(?::BIGINT[]))", [eids, eids])
                for sql, params in [*LexicalIndex.delete_sql(eids), *TurnContext.delete_sql(eids)]:
                    con.execute(sql, params)
                cat.set_counters(con, {"generation": self._generation + 1})
            self._generation += 1
            self.hot.remove(np.array(eids, np.int64))
            self.lexical.apply_delete(eids)
            self.context.apply_delete(np.array(eids, np.int64))
            self._on_removed(np.array(eids, np.int64))
            return len(eids)

    # -- the lifespan engine -----------------------------------------------------------------

    def _on_vectors_added(self, eids: np.ndarray, vectors: np.ndarray) -> None:
        """Keep the vector index in step once new vectors are committed."""
        if self.index is not None:
            if self._indexer is not None:
                self._indexer.submit(eids, vectors)  # acknowledged already; indexed behind
            else:
                self.index.add(eids, vectors)
            self._index_unsaved += len(eids)
            if self._fit_rotation():
                return
            # Saving drains the backlog first: only save when that costs no waiting.
            if self._index_unsaved >= max(50_000, len(self.index) // 4) and (
                    self._indexer is None or self._indexer.idle()):
                self._save_index()

    def _fit_rotation(self) -> bool:
        """Rebuild the index with a PCA rotation once it has enough vectors to fit one.

        An index built while the store was empty starts with a random rotation, whose prefix
        levels are only random projections. When the store first holds ``index.fit_size``
        live engrams (2,048 at the 4,096-d default), the rotation is fitted on them and every
        level rebuilt, once: a rebuild of ~2k vectors, about a second at 4,096-d. Later drift
        is the user's call (``rebuild()`` refits on the whole store). Returns whether it ran.
        """
        idx = self.index
        fitted = idx.rotation_fitted_on
        if fitted is None or fitted >= idx.fit_size:  # no prefix level, unknown, or done
            return False
        live = self.hot.live_eids(self._clock)
        if len(live) < idx.fit_size:
            return False
        self._build_index(idx.config, live)
        return True

    def tick(self, n: int = 1) -> int:
        """Advance the clock by ``n`` ticks and return the new tick. Costs O(1): no row is
        touched; engrams whose ``expires_at`` has passed are invisible from now on.

        >>> mem.tick()  # doctest: +SKIP
        1
        """
        self._check_open()
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidInput(f"n must be an int >= 0, got {n!r}")
        with self._write_lock:
            self._check_open()
            with self._tx() as con:
                cat.set_counters(con, {"clock": self._clock + n,
                                       "generation": self._generation + 1})
            self._clock += n
            self._generation += 1
            return self._clock

    def reinforce(self, ids: str | Iterable[str], amount: float | None = None) -> None:
        """Tell the store these memories were useful: they earn ``amount`` lifespan
        (default ``settings.recall_reward``) and, used together, strengthen their links.

        A negative amount shortens their lives. Raises NotFound for an unknown or dead id.

        >>> mem.reinforce([hit.id for hit in hits[:2]])  # doctest: +SKIP
        """
        self._check_open()
        id_list = [ids] if isinstance(ids, str) else list(ids)
        amount = self.settings.recall_reward if amount is None else check_finite(amount, "amount")
        for i in id_list:
            _check_id(i)
        with self._write_lock:
            self._check_open()
            eids = self._live_eids(id_list)
            now = self._clock
            pairs = [(a, b, self.settings.link_gain) for k, a in enumerate(eids)
                     for b in eids[k + 1:]] if amount > 0 else []
            with self._tx() as con:
                after = self._reward(con, {e: amount for e in eids}, now, count_recall=False)
                if lk.strengthen(con, pairs, now, self.settings):
                    self._has_links = True
                cat.set_counters(con, {"generation": self._generation + 1})
            self._generation += 1
            after()

    def _live_eids(self, id_list: list[str]) -> list[int]:
        found = self._lookup_ids(sorted(set(id_list)))
        vis = self.hot.visible(self._clock)
        missing = [i for i in id_list if i not in found or not vis[found[i]]]
        if missing:
            raise NotFound(f"no live engram with id {missing[0]}")
        return list(dict.fromkeys(found[i] for i in id_list))

    def _reward(self, con: Any, rewards: dict[int, float], now: int,
                count_recall: bool) -> Callable[[], None]:
        """Apply lifespan rewards inside a transaction; return the in-memory update to run
        after the commit."""
        if not rewards:
            return lambda: None
        rows = con.execute(
            "SELECT eid, kind, created_tick, expires_at, earned FROM engrams "
            f"WHERE eid IN {lk.in_list(rewards)}"
        ).fetchall()
        eids, kinds, exps, earns = [], [], [], []
        for eid, kind, created, expires, earned in rows:
            k = int(effective_kind(np.array([kind]), np.array([created]), now)[0])
            pinned = expires is None
            k, e, earned = apply_reward(k, NEVER if pinned else expires, earned,
                                        rewards[eid], now, self.settings)
            eids.append(eid)
            kinds.append(k)
            exps.append(None if pinned else e)
            earns.append(earned)
        table = pa.table({
            "eid": pa.array(eids, pa.int64()), "kind": pa.array(kinds, pa.int8()),
            "expires_at": pa.array(exps, pa.float64()), "earned": pa.array(earns, pa.float64()),
        })
        if len(eids) <= _POINT_UPDATE_MAX:
            def case(values: list[Any], fmt: Callable[[Any], str]) -> str:
                return "CASE eid " + " ".join(
                    f"WHEN {e} THEN {'NULL' if v is None else fmt(v)}"
                    for e, v in zip(eids, values)) + " END"

            real = lambda v: repr(float(v))  # noqa: E731 - exact round trip of a double
            con.execute(
                f"UPDATE engrams SET kind = {case(kinds, lambda v: str(int(v)))}, "
                f"expires_at = {case(exps, real)}, earned = {case(earns, real)}, "
                "recalls = recalls + ?, last_tick = ? "
                f"WHERE eid IN {lk.in_list(eids)}",
                [1 if count_recall else 0, now],
            )
        else:
            with cat.registered(con, "rewards", table) as view:
                con.execute(
                    f"UPDATE engrams SET kind = v.kind, expires_at = v.expires_at, "
                    f"earned = v.earned, recalls = recalls + ?, last_tick = ? FROM {view} v "
                    "WHERE engrams.eid = v.eid",
                    [1 if count_recall else 0, now],
                )
        e_arr = np.array(eids, np.int64)
        k_arr = np.array(kinds, np.int8)
        x_arr = np.array([NEVER if x is None else x for x in exps], np.float64)
        return lambda: self.hot.set_life(e_arr, k_arr, x_arr)

    def integrate(
        self,
        text: str,
        *,
        top_k: int = 5,
        role: str | None = "user",
        session: str | None = None,
        metadata: dict[str, Any] | None = None,
        where: dict[str, Any] | None = None,
    ) -> Turn:
        """One chatbot turn: recall for ``text``, store it as working memory, strengthen what
        was used, and advance the clock, in one commit.

        The clock moves to the turn's tick first; the memories recalled for the turn earn
        lifespan by rank; the turn is linked to each of them and to the previous turn (fire
        together, wire together). Returns a :class:`~engramdb.types.Turn` whose ``prompt``
        holds the recalled texts and the turn, ready for an LLM. Raises as ``ingest``.

        >>> turn = mem.integrate("Remind me of my pet's name", top_k=3)  # doctest: +SKIP
        >>> print(turn.prompt)  # doctest: +SKIP
        """
        self._check_open()
        norm = normalize_text(text)
        top_k = check_top_k(top_k)
        role = check_label(role, "role")
        session = check_label(session, "session")
        meta = encode_metadata(metadata)
        q = self._encode([norm])[0]
        occ_sql, occ_params = occurrence_filter(where)
        with self._write_lock:
            self._check_open()
            now = self._clock + 1
            mask = self.hot.visible(now)
            if occ_sql:
                mask = mask & self._occurrence_mask(occ_sql, occ_params, len(mask))
            ident = content_id(self.fingerprint, norm)
            own = self._lookup_ids([ident])
            # A repeated turn must not recall itself: excluded by eid, not by copying the
            # O(N) mask (0.8 ms at 1M engrams).
            recalled = self._recall(q, norm, top_k, mask, occ_sql, occ_params, True, now,
                                    filtered=bool(occ_sql), exclude=own.get(ident),
                                    visible=self.hot.visible(now))
            # The hits' eids, as the recall found them (no second catalog lookup).
            hit_eids = [h._occurrences.eid_of[h.id] for h in recalled]
            prev = self._previous_turn()
            s = self.settings

            def hook(con: Any, eid_of: dict[str, int], tick: int) -> Callable[[], None]:
                turn = eid_of[ident]
                rewards = {e: recall_reward(r, s) for r, e in enumerate(hit_eids) if e != turn}
                after = self._reward(con, rewards, tick, count_recall=True)
                pairs = [(turn, e, s.link_gain / (r + 1)) for r, e in enumerate(hit_eids)]
                if prev is not None and prev != turn:
                    pairs.append((turn, prev, s.link_gain))
                if lk.strengthen(con, pairs, tick, s):
                    self._has_links = True
                cat.set_counters(con, {"last_turn": turn})

                def committed() -> None:
                    after()
                    self._last_turn = turn

                return committed

            result = self._ingest_batch(
                [ident], [norm], [role], [session], [meta], [False], q[None, :],
                KIND_CODES["working"], now=now, hook=hook,
            )[0]
            self._settle_overflow()
        return Turn(id=result.id, is_new=result.is_new, recalled=recalled,
                    prompt=format_prompt(norm, recalled, role), tick=now)

    def _settle_overflow(self) -> None:
        """Apply the short-term capacity rule (docs/lifespan.md) after a write.

        When more than ``short_term_capacity`` engrams are short-term (or working), the excess
        with the soonest expiry is settled: those that earned at least half of
        ``promote_after`` are consolidated into long-term memory, the rest die now.
        """
        cap = self.settings.short_term_capacity
        if cap <= 0:
            return
        now = self._clock
        eff = effective_kind(self.hot.kind, self.hot.created, now)
        short = np.nonzero(self.hot.visible(now) & (eff != LONG_TERM))[0]
        excess = len(short) - cap
        if excess <= 0:
            return
        victims = short[np.argsort(self.hot.expires[short], kind="stable")[:excess]]
        rows = self._query(
            f"SELECT eid, earned FROM engrams WHERE eid IN {lk.in_list(victims)}")
        earned = {int(e): float(x) for e, x in rows}
        keep = [e for e in victims if earned.get(int(e), 0.0) >= self.settings.promote_after / 2]
        die = [e for e in victims if earned.get(int(e), 0.0) < self.settings.promote_after / 2]
        until = now + self.settings.long_term_lifespan
        with self._tx() as con:
            if keep:
                con.execute(f"UPDATE engrams SET kind = {LONG_TERM}, expires_at = greatest("
                            f"expires_at, ?) WHERE eid IN {lk.in_list(keep)}", [until])
            if die:
                con.execute(f"UPDATE engrams SET expires_at = ? WHERE eid IN {lk.in_list(die)}",
                            [now])
            cat.set_counters(con, {"generation": self._generation + 1})
        self._generation += 1
        if keep:
            k = np.array(keep, np.int64)
            self.hot.set_life(k, np.full(len(k), LONG_TERM, np.int8),
                              np.maximum(self.hot.expires[k], until))
        if die:
            d = np.array(die, np.int64)
            self.hot.set_life(d, self.hot.kind[d], np.full(len(d), float(now)))

    def _previous_turn(self) -> int | None:
        eid = self._last_turn
        return eid if 0 <= eid < self.hot.capacity and self.hot.alive[eid] else None

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """A recall's reads of the vectors and their pointers, which take no store lock; they
        wait while :meth:`_moving_vectors` runs. Never nested (a nested one could wait for a
        compaction that waits for its caller)."""
        gate = self._gate
        with gate:
            while self._moving:
                gate.wait()
            self._readers += 1
        try:
            yield
        finally:
            with gate:
                self._readers -= 1
                if self._readers == 0:
                    gate.notify_all()

    @contextmanager
    def _moving_vectors(self) -> Iterator[None]:
        """gc's compaction moves vectors to new segments and deletes the old files: it waits
        for the recalls in flight (a pointer read half before, half after the move, or a
        file deleted under a scan, was an IndexError or another engram's vector) and holds
        new ones back until it is done. Called under the write lock."""
        gate = self._gate
        with gate:
            self._moving = True
            gate.wait_for(lambda: self._readers == 0)
        try:
            yield
        finally:
            with gate:
                self._moving = False
                gate.notify_all()

    def _query(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        """:meth:`Catalog.query` on the current catalog, through :meth:`_read`."""
        return self._read(lambda c: c.query(sql, params))

    def _query_arrow(self, sql: str, params: list[Any] | None = None) -> pa.Table:
        """:meth:`Catalog.query_arrow` on the current catalog, through :meth:`_read`."""
        return self._read(lambda c: c.query_arrow(sql, params))

    def _read_cursor(self, read: Callable[..., T], *args: Any) -> T:
        """``read(cursor, *args)`` on this thread's cursor of the current catalog, as a read
        its close waits for (:meth:`Catalog.reading`), through :meth:`_read`."""
        def run(catalog: Catalog) -> T:
            with catalog.reading() as cur:
                return read(cur, *args)

        return self._read(run)

    def _read(self, read: Callable[[Catalog], T]) -> T:
        """``read(catalog)`` for a reader that holds no store lock: if ``gc`` swaps the
        catalog under it, it runs again on the new one (the old one's close waits for reads
        in flight and refuses new ones)."""
        deadline = time.monotonic() + 60.0
        while True:
            catalog = self.catalog
            try:
                return read(catalog)
            except CatalogClosed:
                while self.catalog is catalog:  # the swap is a close and an open away
                    self._check_open()
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.001)

    def _occurrence_mask(self, occ_sql: str, occ_params: list[Any], size: int) -> np.ndarray:
        allowed = self._query_arrow(
            f"SELECT DISTINCT eid FROM occurrences o WHERE {occ_sql}", occ_params
        ).column("eid").to_numpy()
        keep = np.zeros(size, bool)
        keep[allowed[allowed < size]] = True
        return keep

    def links(self, limit: int = 20) -> list[tuple[str, str, float]]:
        """The ``limit`` strongest links now, as ``(id_a, id_b, weight)``."""
        self._check_open()
        vis = self.hot.visible(self._clock)
        top = [(a, b, w) for a, b, w in self._read_cursor(
            lk.strongest, None, self._clock, self.settings)
            if a < len(vis) and b < len(vis) and vis[a] and vis[b]][:check_top_k(limit)]
        ids = self._ids_of({e for a, b, _ in top for e in (a, b)})
        return [(ids[a], ids[b], w) for a, b, w in top if a in ids and b in ids]

    def _ids_of(self, eids: Iterable[int]) -> dict[int, str]:
        eids = sorted(set(eids))
        if not eids:
            return {}
        return {int(e): i for e, i in self._query(
            f"SELECT eid, id FROM engrams WHERE eid IN {lk.in_list(eids)}")}

    def forgetting_log(self, limit: int = 50) -> list[dict[str, Any]]:
        """What died or was forgotten, most recent first: id, tick, reason, kind, collected.

        Engrams whose lifespan ran out but which ``gc()`` has not collected yet are listed
        with reason "expired" and ``collected=False``.
        """
        self._check_open()
        limit = check_top_k(limit)
        now = self._clock
        dead = np.nonzero(self.hot.alive & ~self.hot.visible(now))[0]
        pending = []
        if len(dead):
            kinds = effective_kind(self.hot.kind, self.hot.created, now)
            for eid, ident, expires in self._query(
                f"SELECT eid, id, expires_at FROM engrams WHERE eid IN {lk.in_list(dead)}"
            ):
                pending.append({"id": ident, "tick": int(np.ceil(expires)), "reason": "expired",
                                "kind": KIND_NAMES[int(kinds[eid])], "collected": False})
        logged = [
            {"id": i, "tick": int(t), "reason": r, "kind": KIND_NAMES[int(k)], "collected": bool(c)}
            for i, t, r, k, c in self._query(
                "SELECT id, tick, reason, kind, collected FROM forgotten "
                "ORDER BY tick DESC, eid DESC LIMIT ?", [limit])
        ]
        return sorted(pending + logged, key=lambda d: -d["tick"])[:limit]

    def gc(self, *, dry_run: bool = False) -> dict[str, Any]:
        """Remove dead and forgotten engrams physically and reclaim their space.

        Expired engrams are logged (reason "expired") and their rows, occurrences and links
        deleted; segments that are mostly dead, or that hold any forgotten engram's vector,
        are rewritten; when anything was erased the catalog file is rewritten so no deleted
        bytes survive in freed blocks. ``dry_run`` reports what would happen and changes
        nothing. Returns counts and bytes before/after.

        >>> mem.gc()  # doctest: +SKIP
        {'expired': 12, 'erased': 1, 'segments_compacted': 1, ...}
        """
        self._check_open()
        with self._write_lock:
            self._check_open()
            now = self._clock
            dead = np.nonzero(self.hot.alive & ~self.hot.visible(now))[0]
            pending_erase = self._query(
                "SELECT count(*) FROM forgotten WHERE NOT collected")[0][0]
            erase = bool(pending_erase or len(dead))
            alive_after = self.hot.alive.copy()
            alive_after[dead] = False
            to_compact = collect.segments_to_compact(
                self.segments.committed, self.hot.row_eid, alive_after, erase)
            before = self._file_bytes()
            report = {"expired": int(len(dead)), "erased": int(pending_erase),
                      "segments_compacted": len(to_compact), "bytes_before": before,
                      "dry_run": dry_run}
            if dry_run:
                report["bytes_after"] = before
                return report
            # "fast": gc deletes files that older commits refer to, so everything before it
            # becomes durable first, and its own writes are fsynced as in "full" mode.
            self._sync_locked()
            if len(dead) or pending_erase:
                with self._tx() as con:
                    ids = lk.in_list(dead)
                    if len(dead):
                        con.execute(
                            "INSERT INTO forgotten SELECT eid, id, CAST(ceil(expires_at) AS BIGINT)"
                            f", 'expired', kind, true FROM engrams WHERE eid IN {ids}")
                        con.execute(f"DELETE FROM occurrences WHERE eid IN {ids}")
                        con.execute(f"DELETE FROM edges WHERE a IN {ids} OR b IN {ids}")
                        con.execute(f"DELETE FROM engrams WHERE eid IN {ids}")
                        for sql, params in [*LexicalIndex.delete_sql(dead),
                                            *TurnContext.delete_sql(dead)]:
                            con.execute(sql, params)
                    # Labels (session and role names) that no occurrence uses are content too.
                    unused = [r[0] for r in con.execute(
                        TurnContext.unused_labels_sql()).fetchall()]
                    if unused:
                        con.execute(f"DELETE FROM labels WHERE code IN {lk.in_list(unused)}")
                    con.execute("UPDATE forgotten SET collected = true WHERE NOT collected")
                    cat.set_counters(con, {"generation": self._generation + 1})
                self._generation += 1
                self.hot.remove(dead.astype(np.int64))
                self.lexical.apply_delete(dead)
                self.context.apply_delete(dead.astype(np.int64))
                self.context.drop_labels(unused)
                self._on_removed(dead.astype(np.int64))
            if erase:
                self.lexical.compact()
            if to_compact:
                with self._moving_vectors():
                    self._compact(to_compact)
            if erase:
                self._rewrite_catalog()
                # hnswlib only flags deleted vectors: their bytes stay in the graph files
                # until the graph is rebuilt without them.
                self._build_index(self.index.config, self.hot.live_eids(now))
            report["bytes_after"] = self._file_bytes()
            return report

    def _on_removed(self, eids: np.ndarray) -> None:
        """Keep the vector index in step once engrams are removed."""
        if self.index is not None and len(eids):
            if self._indexer is not None:
                self._indexer.discard(eids)
            self.index.mark_deleted(eids)
            self._index_unsaved += len(eids)

    def _compact(self, segs: list[int]) -> None:
        """Move the live vectors of ``segs`` into fresh segments, commit, delete the old files."""
        moving = []
        for seg in segs:
            table = self.hot.row_eid.get(seg, np.zeros(0, np.int64))
            eids = table[table >= 0]
            moving.append(eids[self.hot.alive[eids]])
        eids = np.concatenate(moving) if moving else np.zeros(0, np.int64)
        committed = {k: v for k, v in self.segments.committed.items() if k not in segs}
        if len(eids):
            vecs = self.segments.read(self.hot.seg[eids], self.hot.row[eids])
            start = max(self.segments.committed, default=0) + 1
            plan = self.segments.plan(len(eids), first_new=start)
            self.segments.write(plan, vecs, durable=True)  # the old files go after the commit
            new_segs, new_rows = plan.pointers()
            committed = plan.committed_after(committed)
        with self.catalog.durable(), self._tx() as con:
            if len(eids):
                moved = pa.table({"eid": pa.array(eids), "seg": pa.array(new_segs, pa.int32()),
                                  "row": pa.array(new_rows)})
                with cat.registered(con, "moved", moved) as view:
                    con.execute(f'UPDATE engrams SET seg = v.seg, "row" = v."row" FROM {view} v '
                                "WHERE engrams.eid = v.eid")
            cat.set_segment_lengths(con, committed)
            cat.set_counters(con, {"generation": self._generation + 1})
        self._generation += 1
        self.segments.set_committed(committed)
        self.hot.drop_segments(segs)
        if len(eids):
            self.hot.add(eids, new_segs, new_rows, self.hot.kind[eids], self.hot.expires[eids],
                         self.hot.created[eids])
        self.segments.remove(segs)  # only now: the commit no longer references them

    def _rewrite_catalog(self) -> None:
        # Erasure: the snapshot of the BM25 index may still hold a forgotten engram's words;
        # close() writes a fresh one.
        (self.path / LEXICAL_SNAPSHOT).unlink(missing_ok=True)
        self._lexical_saved = None
        path = self.catalog.path
        try:
            with self.catalog.durable():  # the checkpoint and the copy are fsynced
                collect.rewrite_catalog(self.catalog.con, path)
        finally:
            # Reopen by name whether or not the swap happened: after a rename that was
            # reported as failed, the old handle would write into an unlinked file.
            self.catalog.close()
            self.catalog = Catalog(path, fast=self._fast)

    def _file_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    # -- reads --------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Number of live engrams (visible to recall now)."""
        return int(self.hot.visible(self._clock).sum())

    @property
    def clock(self) -> int:
        """The store's logical clock, in ticks."""
        return self._clock

    def __len__(self) -> int:
        return self.count

    def __contains__(self, ident: object) -> bool:
        if not isinstance(ident, str):
            return False
        found = self._lookup_ids([ident])
        return bool(found) and bool(self.hot.visible(self._clock)[found[ident]])

    def get(self, ident: str) -> Engram:
        """Return the live engram with this id, with its text and every occurrence.

        Raises NotFound for an unknown, forgotten or dead id; InvalidInput for a non-id.

        >>> mem.get(result.id).text  # doctest: +SKIP
        'I adopted a guinea pig named Oscar.'
        """
        self._check_open()
        _check_id(ident)
        found = self._lookup_ids([ident])
        if not found or not self.hot.visible(self._clock)[found[ident]]:
            raise NotFound(f"no live engram with id {ident}")
        return self._engrams([found[ident]])[found[ident]]

    def _engrams(
        self, eids: list[int], occ_sql: str = "", occ_params: Sequence[Any] = (),
        now: int | None = None,
    ) -> dict[int, Engram]:
        """Fetch full engrams (text, state, occurrences) for some eids in one query.

        With ``occ_sql`` only the occurrences matching that filter are attached.
        """
        join = "o.eid = e.eid" + (f" AND {occ_sql}" if occ_sql else "")
        rows = self._query(
            "SELECT e.eid, e.id, e.text, e.kind, e.refs, e.created_tick, e.expires_at, "
            "e.pinned, e.recalls, "
            "list(struct_pack(role := o.role, session := o.session, tick := o.tick, "
            "metadata := o.metadata) ORDER BY o.seq) FILTER (WHERE o.eid IS NOT NULL) "
            f"FROM engrams e LEFT JOIN occurrences o ON {join} "
            "WHERE e.eid IN (SELECT unnest(?::BIGINT[])) GROUP BY ALL",
            [*occ_params, eids],
        )
        now = self._clock if now is None else now
        out = {}
        for eid, ident, blob, kind, refs, created, expires, pinned, recalls, occs in rows:
            out[int(eid)] = Engram(
                id=ident,
                text=decompress_text(blob),
                kind=Kind(KIND_NAMES[int(effective_kind(
                    np.array([kind]), np.array([self.hot.created[eid]]), now)[0])]),
                refs=int(refs),
                created_tick=int(created),
                expires_at=None if expires is None else expires,
                lifespan_left=None if expires is None else max(0.0, expires - now),
                pinned=bool(pinned),
                recalls=int(recalls),
                occurrences=[_occurrence(o) for o in occs or []],
            )
        return out

    def recall(
        self,
        query: str | None = None,
        *,
        vector: Any = None,
        top_k: int = 5,
        where: dict[str, Any] | None = None,
        kinds: Iterable[Kind | str] | None = None,
        associative: bool = True,
        context: bool | None = None,
    ) -> list[Recall]:
        """Return the ``top_k`` live engrams most similar to ``query`` (or to ``vector``).

        A text query is answered by hybrid recall (dense + BM25). With ``context`` (default:
        ``settings.context``, on) each turn's score also uses its conversation: its previous
        turn in the same session, its session as a whole, the speaker and the date a query
        names; and the best hits lift the turns right before and after them, which come back
        with ``via="context"`` (see docs/recall.md).

        With ``associative`` (the default) the strongest Hebbian links of the top hits are
        followed (``settings.associative_depth`` hops, ``associative_fanout`` links each); an
        engram reached that way scores ``seed score x link weight`` and comes back with
        ``via="association"`` and the ``path`` of ids that led to it. Recall is a pure read:
        it changes no lifespan (``integrate`` and ``reinforce`` do).

        ``where`` filters on occurrences: ``session``, ``role`` (a value or a list of values),
        ``metadata`` (a dict of key -> value that must all match), ``since``/``until``
        (inclusive ticks). ``kinds`` keeps only engrams of those kinds. Filters are applied
        inside the search: the result is the exact top-k among matching engrams.
        Raises InvalidInput, EncoderRequired (text query on a store without a usable
        encoder), DimensionMismatch.

        >>> [r.text for r in mem.recall("what pets do I have?", top_k=3)]  # doctest: +SKIP
        """
        self._check_open()
        top_k = check_top_k(top_k)
        if (query is None) == (vector is None):
            raise InvalidInput("pass exactly one of query (text) or vector=")
        text = None
        if vector is not None:
            q = check_vectors(vector, self.dim, 1)[0]
        else:
            text = normalize_text(query, what="query")
            q = self._encode([text])[0]
        codes = kind_codes(kinds)
        occ_sql, occ_params = occurrence_filter(where)
        if context is not None:
            context = _check_bool(context, "context")
        with self._reading():
            now = self._clock
            mask = self.hot.visible(now)
            if codes is not None:
                mask = mask & np.isin(effective_kind(self.hot.kind, self.hot.created, now), codes)
            if occ_sql:
                mask = mask & self._occurrence_mask(occ_sql, occ_params, len(mask))
            return self._recall(q, text, top_k, mask, occ_sql, occ_params, associative, now,
                                filtered=codes is not None or bool(occ_sql), context=context,
                                visible=self.hot.visible(now))

    def _recall(
        self, q: np.ndarray, text: str | None, top_k: int, mask: np.ndarray, occ_sql: str,
        occ_params: list[Any], associative: bool, now: int, *, filtered: bool,
        exclude: int | None = None, context: bool | None = None,
        visible: np.ndarray | None = None,
    ) -> list[Recall]:
        """Search (hybrid when there is query text), expand over links, fetch, rank.

        ``mask`` says which eids may be returned; ``filtered`` says it excludes more than
        expiry and a handful of ids, so the vector index must search inside it. ``visible``
        (default ``mask``) says which engrams may lend context (a previous turn, a session)
        to those returned; ``context`` overrides ``settings.context``.
        """
        weight = self.settings.lexical_weight if text is not None else 0.0
        pool = max(top_k, self.settings.hybrid_pool) if weight > 0 else top_k
        # Fusion scores the dense top list as a set: it need not come ranked.
        eids, scores = self._dense_search(q, pool, mask, filtered, now, ranked=weight == 0)
        if exclude is not None:
            keep = eids != exclude
            eids, scores = eids[keep], scores[keep]
        found: dict[int, tuple[float, str, list[int], dict[str, float]]] = {}
        fused = False
        if weight > 0 and (self.settings.context if context is None else context):
            assert text is not None
            found = self._fuse_context(q, text, eids, scores, pool, weight, mask,
                                       mask if visible is None else visible, exclude, top_k)
            fused = True
        elif weight > 0:
            assert text is not None
            lex_eids, lex_scores = self._lexical_scores(
                self.lexical.match(self.lexical.tokenizer(text)), mask)
            if exclude is not None and len(lex_eids):
                keep = lex_eids != exclude
                lex_eids, lex_scores = lex_eids[keep], lex_scores[keep]
            if len(lex_eids):
                found = self._fuse(q, eids, scores, lex_eids, lex_scores, pool, weight)
                fused = True
        if not fused:
            if weight > 0:  # (no lexical match) the dense top list, ranked
                order = np.lexsort((eids, -scores))
                eids, scores = eids[order], scores[order]
            found = {e: (s, "vector", [], {"vector": s})
                     for e, s in zip(eids[:top_k].tolist(), scores[:top_k].tolist())}

        def rank(kv: tuple[int, tuple[float, str, list[int], dict[str, float]]]
                 ) -> tuple[float, int]:
            return -kv[1][0], kv[0]

        if associative and found and self._has_links:
            seeds = [e for e, _ in sorted(found.items(), key=rank)[:5]]
            self._associate(found, seeds, mask, now, exclude)
        ranked = sorted(found.items(), key=rank)[:top_k]
        if not ranked:
            return []
        hot = self.hot
        at = np.array([e for e, _ in ranked], np.int64)
        payloads = [hot.payload(e) for e in at.tolist()]  # (id, compressed text)
        ids = {e: p[0] for (e, _), p in zip(ranked, payloads)}
        loader = _OccurrenceLoader(self, {ident: e for e, ident in ids.items()}, occ_sql,
                                   occ_params)
        kinds = effective_kind(hot.kind[at], hot.created[at], now).tolist()
        hits = []
        for (_, (score, via, path, parts)), (ident, blob), kind, expires in zip(
                ranked, payloads, kinds, hot.expires[at].tolist(), strict=True):
            hits.append(
                Recall(
                    id=ident, text=decompress_text(blob), score=score,
                    kind=_KINDS[kind],
                    lifespan_left=None if math.isinf(expires) else max(0.0, expires - now),
                    via=via, scores=parts,
                    path=[ids.get(p) or hot.payload(p)[0] for p in path],
                    _occurrences=loader,
                )
            )
        return hits

    def _lexical_scores(self, found: LexicalMatch, mask: np.ndarray,
                        ) -> tuple[np.ndarray, np.ndarray]:
        """BM25 scores of every engram in ``mask`` among a query's matches (``found``, from
        :meth:`LexicalIndex.match`), sorted by eid."""
        eids, scores = found.eids, found.scores
        if len(eids) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        ascending = bool((eids[1:] > eids[:-1]).all())  # slots usually follow eids
        if int(eids[-1] if ascending else eids.max()) < len(mask):
            keep = mask[eids]
        else:
            keep = (eids < len(mask)) & mask[np.minimum(eids, len(mask) - 1)]
        eids, scores = eids[keep], scores[keep]
        if ascending:  # (and so is any subset)
            return eids, scores
        order = eids.argsort()
        return eids[order], scores[order]

    def _fuse(self, q: np.ndarray, dense_eids: np.ndarray, dense_scores: np.ndarray,
              lex_eids: np.ndarray, lex_scores: np.ndarray, pool: int, weight: float) -> dict:
        """Score the union of the dense and the top lexical candidates (:func:`hybrid.fuse`)."""
        top = lex_eids
        if len(top) > pool:
            top = lex_eids[np.argpartition(-lex_scores, pool - 1)[:pool]]
        in_dense = set(dense_eids.tolist())
        in_lex = set(top.tolist())
        cands = np.array(sorted(in_dense | in_lex), np.int64)
        cos = np.empty(len(cands), np.float64)
        known = {int(e): float(x) for e, x in zip(dense_eids, dense_scores)}
        missing = np.array([e for e in cands if int(e) not in known], np.int64)
        if len(missing):
            vecs = self.segments.read(self.hot.seg[missing], self.hot.row[missing])
            known.update({int(e): float(x) for e, x in zip(missing, vecs @ q)})
        cos[:] = [known[int(e)] for e in cands]
        pos = np.searchsorted(lex_eids, cands)
        hit = (pos < len(lex_eids)) & (lex_eids[np.minimum(pos, len(lex_eids) - 1)] == cands)
        bm25 = np.where(hit, lex_scores[np.minimum(pos, len(lex_eids) - 1)], 0.0)
        fused = hybrid.fuse(cands, cos, bm25, weight)
        return {
            int(e): (float(f), hybrid.via(int(e) in in_dense, int(e) in in_lex), [],
                     {"vector": float(c), "lexical": float(b), "fused": float(f)})
            for e, c, b, f in zip(cands, cos, bm25, fused)
        }

    def _fuse_context(self, q: np.ndarray, text: str, dense_eids: np.ndarray,
                      dense_scores: np.ndarray, pool: int, weight: float, mask: np.ndarray,
                      visible: np.ndarray, exclude: int | None, top_k: int) -> dict:
        """Hybrid scores with conversation context (:func:`hybrid.context_mix`), then the
        neighbour step (:func:`hybrid.spread`). Reads memory only: no catalog query.

        Candidates are the dense and lexical top lists plus the turns right after them (an
        answer follows its question). Only ``mask`` engrams are returned; any ``visible`` one
        may lend context. Returns the best ``top_k`` candidates (no lower one can reach the
        top k later: association only adds scores below its seeds') and the lifted turns.

        Everything is computed on sorted eid arrays of the few hundred candidates (no
        per-candidate Python, no array the size of the store); the query's terms are looked
        up once, for the turns' BM25 and the sessions' alike.
        """
        s = self.settings
        ctx = self.context
        lex = self.lexical
        terms = lex.tokenizer(text)
        found = lex.match(terms)
        postings = found.postings
        lex_eids, lex_scores = self._lexical_scores(found, visible)
        n_mask = len(mask)
        # No filter: any visible engram may be returned (the lexical matches all may be).
        unfiltered = mask is visible and exclude is None

        def allowed(x: np.ndarray) -> np.ndarray:
            """Which of ``x`` (eids of visible engrams, or -1) may be returned."""
            if unfiltered:
                return x >= 0
            if n_mask == len(visible) and n_mask:
                ok = mask[x]  # -1 reads the last entry: cleared below
                ok &= x >= 0
            else:
                ok = (x >= 0) & (x < n_mask)
                ok[ok] = mask[x[ok]]
            if exclude is not None:
                ok &= x != exclude
            return ok

        # The lexical top list: the best ``pool`` allowed engrams (positions in lex_eids).
        in_top = allowed(lex_eids)
        top_at = in_top.nonzero()[0]
        if len(top_at) > pool:
            top_at = top_at[np.argpartition(-lex_scores[top_at], pool - 1)[:pool]]
            in_top = np.zeros(len(lex_eids), bool)
            in_top[top_at] = True
        base = _union(dense_eids, lex_eids[top_at])
        after = ctx.neighbour(base, visible, ctx.next, ascending=True)
        cands = _union(base, after[allowed(after)])
        if len(cands) == 0:
            return {}
        prev = ctx.neighbour(cands, visible, ctx.prev, ascending=True)
        has_prev = prev >= 0
        # Cosines and BM25 of the candidates and of their previous turns (vectors read from
        # the memmap for those the dense search did not score).
        need = _union(cands, prev[has_prev])
        cos_need = np.zeros(len(need), np.float64)
        known = np.zeros(len(need), bool)  # scored by the dense search (all are in need)
        at_d = need.searchsorted(dense_eids)
        known[at_d] = True
        cos_need[at_d] = dense_scores
        if len(at_d) < len(need):
            missing = ~known
            cos_need[missing] = self._fetch_vectors(need[missing]) @ q
        at_c = need.searchsorted(cands)
        at_p = need.searchsorted(prev)
        np.minimum(at_p, len(need) - 1, out=at_p)
        cos = cos_need[at_c]
        cos_prev = np.where(has_prev, cos_need[at_p], cos)

        def lexical(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """BM25 of each of ``x`` (eids, or -1), as float64 (0: no match), and whether it
            is in the lexical top list."""
            if not len(lex_eids):
                return np.zeros(len(x), np.float64), np.zeros(len(x), bool)
            pos = lex_eids.searchsorted(x)
            np.minimum(pos, len(lex_eids) - 1, out=pos)
            matched = lex_eids[pos] == x
            return (np.where(matched, lex_scores[pos], 0.0).astype(np.float64),
                    matched & in_top[pos])

        inside = None if int(cands[-1]) < ctx.capacity else cands < ctx.capacity
        at = cands if inside is None else np.where(inside, cands, 0)

        def per_candidate(column: np.ndarray) -> np.ndarray:
            """``column[eid]`` of each candidate; -1 past the context arrays."""
            values = column[at]
            return values if inside is None else np.where(inside, values, -1)

        zeros = np.zeros(len(cands), np.float64)
        session = speaker = date = zeros
        # A prior with no evidence for this query adds nothing: leave its term out of the mix.
        speaker_prior = date_prior = 0.0
        # The query term of each posting (postings hold them term after term).
        posting_term = np.arange(len(postings.counts)).repeat(postings.counts)
        if s.session_prior:
            sess = per_candidate(ctx.session)
            if sess.max() >= 0:  # some candidate was said in a session
                by_code = ctx.session_scores(found.posting_eids, postings.tfs,
                                             postings.counts, visible, lex.k1, lex.b,
                                             term=posting_term)
                # No session (-1) and a code added since read the 0 appended.
                session = np.concatenate((by_code, _NO_SCORE))[np.minimum(sess, len(by_code))]
        if s.speaker_prior:
            named = ctx.named_roles(terms)
            if named:
                role = per_candidate(ctx.role)
                speaker = _any_equal(role, named).astype(np.float64)
                speaker_prior = s.speaker_prior
        if s.date_prior and s.date_key:
            asked = query_dates(text)
            if asked:
                date = date_affinity(per_candidate(ctx.day), asked)
                date_prior = s.date_prior
        cover = cover_prev = zeros
        if s.coverage_prior:
            cover, cover_prev = hybrid.coverage(found.term_idf, posting_term, found.posting_eids,
                                                need, at_c, np.where(has_prev, at_p, -1))
        # Without session evidence (notes said outside any session, or no session holding a
        # query term) the turns' own BM25 takes the session's place in the lexical sum.
        turn_lexical = s.turn_lexical
        if s.session_prior and not session.any():
            turn_lexical += s.session_prior
        # The turns' own BM25 (and their previous turns') count only with a weight: by default
        # coverage stands in for them, and they are looked up for the returned hits alone.
        bm25 = bm25_prev = zeros
        if turn_lexical or s.context_lexical:
            bm25, bm25_prev = lexical(cands)[0], lexical(prev)[0]
        ev = hybrid.ContextEvidence(cos=cos, cos_prev=cos_prev, bm25=bm25,
                                    bm25_prev=bm25_prev, bm25_session=session,
                                    speaker=speaker, date=date, coverage=cover,
                                    coverage_prev=cover_prev)
        mixed = hybrid.context_mix(ev, hybrid.ContextWeights(
            lexical_weight=weight, turn_lexical=turn_lexical,
            context_lexical=s.context_lexical, session_prior=s.session_prior,
            context_dense=s.context_dense, speaker_prior=speaker_prior, date_prior=date_prior,
            coverage_prior=s.coverage_prior, coverage_context=s.coverage_context))
        best = _best_first(mixed, max(top_k, s.neighbour_seeds))
        lifted: dict[int, tuple[float, int]] = {}
        if s.neighbour_seeds > 0 and s.neighbour_weight > 0:
            # The seeds' neighbours that may be returned, and their own scores (a handful:
            # Python is quicker than arrays here).
            seeds = best[:s.neighbour_seeds]
            seed_eids = cands[seeds].tolist()
            nbs: list[int] = []
            for e, preceding in zip(seed_eids, prev[seeds].tolist(), strict=True):
                following = int(ctx.next[e]) if e < ctx.capacity else -1
                if not (0 <= following < len(visible) and visible[following]):
                    following = -1  # (``preceding`` is visible already)
                for x in (preceding, following):
                    nbs.append(x if 0 <= x < n_mask and x != exclude and mask[x] else -1)
            floor = float(mixed.min())
            nb = np.array(nbs, np.int64)
            pos = cands.searchsorted(nb)
            np.minimum(pos, len(cands) - 1, out=pos)
            own = np.where(cands[pos] == nb, mixed[pos], floor)
            lifted = hybrid.lift(seed_eids, mixed[seeds].tolist(), nbs, own.tolist(), floor,
                                 s.neighbour_weight)
        # The returned rows of cands: the best, then the lifted turns that are candidates.
        lifted_eids = np.fromiter(lifted, np.int64, len(lifted))
        lifted_at = cands.searchsorted(lifted_eids)
        np.minimum(lifted_at, len(cands) - 1, out=lifted_at)
        lifted_in = cands[lifted_at] == lifted_eids
        rows = np.concatenate((best, lifted_at[lifted_in]))
        n_rows = len(rows)
        bm, in_lexical = lexical(np.concatenate((cands[rows], prev[rows])))
        evidence = [cos[rows], bm[:n_rows], cos_prev[rows], bm[n_rows:], session[rows],
                    speaker[rows], date[rows], cover[rows], cover_prev[rows]]
        return _context_hits(cands[rows], len(best), mixed[rows], evidence,
                             known[at_c[best]], in_lexical[:len(best)], lifted, lifted_in)

    def _associate(self, found: dict, seeds: list[int], mask: np.ndarray, now: int,
                   exclude: int | None = None) -> None:
        """Follow the strongest links from ``seeds``, adding what they reach to ``found``."""
        s = self.settings
        frontier = {e: (found[e][0], [e]) for e in seeds}
        for _ in range(s.associative_depth):
            if not frontier:
                break
            links = self._read_cursor(lk.neighbours, frontier, now, s, s.associative_fanout)
            nxt: dict[int, tuple[float, list[int]]] = {}
            for src, (src_score, path) in frontier.items():
                for other, weight in links.get(src, []):
                    if other >= len(mask) or not mask[other] or weight <= 0 or other == exclude:
                        continue
                    score = src_score * weight
                    if other in found and found[other][0] >= score:
                        continue
                    found[other] = (score, "association", path + [other],
                                    {"association": score, "link": weight})
                    if other not in nxt or nxt[other][0] < score:
                        nxt[other] = (score, path + [other])
            frontier = nxt

    def _fetch_vectors(self, eids: np.ndarray) -> np.ndarray:
        """Stored vectors of ``eids`` as float32 rows, in that order."""
        return self.segments.read(self.hot.seg[eids], self.hot.row[eids])

    def _dense_search(self, q: np.ndarray, k: int, mask: np.ndarray, filtered: bool,
                      now: int, *, ranked: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (eids, cosines) among ``mask``: the vector index, or an exact scan.

        Best first (ties: the smaller eid), or in no particular order unless ``ranked``.
        """
        self._sync_index_deaths(now)
        if self._scan_is_cheaper():
            labels, _ = self._exact_search(q, k, mask, ranked=False)
        else:
            labels = self._index_candidates(q, k, mask, filtered)
        # Final scores are computed row by row from the stored vectors, so a hit scores the
        # same bits whichever path found it (graph, exact scan, backlog) and however many rows
        # a product covered: the same query on the same store gives the same answer.
        scores = self._exact_scores(labels, q)
        if not ranked and len(labels) <= k:  # already the top k
            return labels, scores
        order = np.lexsort((labels, -scores))[:k]
        return labels[order], scores[order]

    def _index_candidates(self, q: np.ndarray, k: int, mask: np.ndarray,
                          filtered: bool) -> np.ndarray:
        """The vector index's best ``mask`` labels, plus the backlog's best (a few more than
        ``k``, unordered: the caller scores them)."""
        assert self.index is not None
        spare = 2  # a few ids (the turn itself) may be masked without being a filter
        # Acknowledged rows the background indexer has not inserted yet are scanned exactly.
        # The snapshot comes first: a row leaving the backlog meanwhile is in the graph.
        pend_e, pend_v = (self._indexer.snapshot() if self._indexer is not None
                          else (np.zeros(0, np.int64), None))
        allowed = np.nonzero(mask)[0] if filtered else None
        labels, _, _ = self.index.search(q, k + spare, fetch=self._fetch_vectors,
                                         allowed=allowed)
        keep = (labels < len(mask)) & mask[np.minimum(labels, len(mask) - 1)]
        labels = labels[keep]
        if len(pend_e):
            ok = (pend_e < len(mask)) & mask[np.minimum(pend_e, len(mask) - 1)]
            if ok.any():
                pe = pend_e[ok]
                ps = pend_v[ok] @ q
                if len(pe) > k + spare:
                    pe = pe[np.argpartition(-ps, k + spare - 1)[:k + spare]]
                labels = np.union1d(labels, pe)
        return labels

    def _scan_is_cheaper(self) -> bool:
        """Whether a scan of the segments beats asking the vector index (or there is none).

        Below its ``exact_threshold`` the index answers by an exact scan too, but of rows it
        gathers one by one through the store; reading the segments' rows in order is several
        times cheaper (a 420-turn conversation: 62 us against 420 us for a hybrid recall's
        100 candidates). Counted in stored rows, dead ones included, since the scan reads them.
        """
        if self.index is None:
            return True
        limit = self.index.config.exact_threshold
        return len(self.index) <= limit and sum(self.segments.committed.values()) <= limit

    def _exact_scores(self, eids: np.ndarray, q: np.ndarray) -> np.ndarray:
        """Cosine of each stored vector with the unit query ``q``, one row at a time."""
        if len(eids) == 0:
            return np.zeros(0, np.float32)
        vecs = np.asarray(self._fetch_vectors(eids), np.float32)
        q32 = np.asarray(q, np.float32)
        # The gathered rows are ours: multiply them in place (the same products, one array
        # fewer to allocate and to pull through the cache).
        prod = (np.multiply(vecs, q32, out=vecs) if vecs.flags.owndata and vecs.flags.writeable
                else vecs * q32)
        return prod.sum(axis=1, dtype=np.float32)

    def _sync_index_deaths(self, now: int) -> None:
        """Mark engrams whose lifespan ran out as deleted in the index (O(1) unless one did)."""
        dead = self.hot.deaths_due(now)  # also moves the visibility mask's next recompute
        if dead is not None and len(dead) and self.index is not None:
            if self._indexer is not None:
                self._indexer.discard(dead)
            self.index.mark_deleted(dead)

    def _exact_search(self, q: np.ndarray, k: int, mask: np.ndarray, *,
                      ranked: bool = True) -> tuple[np.ndarray, ...]:
        """Score every visible engram exactly against ``q``; return the top k (eids, scores),
        best first (ties: the smaller eid), or in no particular order unless ``ranked``."""
        best_e: list[np.ndarray] = []
        best_s: list[np.ndarray] = []
        for seg, mm in self.segments.iter_segments():
            row_eid = self.hot.row_eid.get(seg)
            if row_eid is None:
                continue
            n = min(len(mm), len(row_eid))
            # A copy: forget() clears rows of this array in place (-1) while we score.
            eids = row_eid[:n].copy()
            # An eid past the mask is a row a concurrent write committed after the caller
            # took its mask: not visible to this search.
            ok = (eids >= 0) & (eids < len(mask))
            ok[ok] = mask[eids[ok]]
            rows = np.nonzero(ok)[0]
            if len(rows) == 0:
                continue
            if len(rows) == n:
                scores = np.asarray(mm[:n], np.float32) @ q
            else:
                scores = np.asarray(mm[rows], np.float32) @ q
            if len(scores) > k:
                # Every row tied with the k-th best stays, so that ties are broken by eid
                # below rather than by where argpartition happened to cut.
                kth = np.partition(scores, len(scores) - k)[len(scores) - k]
                top = (scores >= kth).nonzero()[0]
            else:
                top = np.arange(len(scores))
            best_e.append(eids[rows[top]])
            best_s.append(scores[top])
        if not best_e:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        all_e, all_s = np.concatenate(best_e), np.concatenate(best_s)
        if not ranked and len(all_e) <= k:  # (one segment, no tie at the k-th score)
            return all_e, all_s
        order = np.lexsort((all_e, -all_s))[:k]  # score desc, then eid: deterministic ties
        return all_e[order], all_s[order]

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Return the stored (unit-length) vectors of live engrams, in the order given."""
        self._check_open()
        for i in ids:
            _check_id(i)
        found = self._lookup_ids(sorted(set(ids)))
        vis = self.hot.visible(self._clock)
        missing = [i for i in ids if i not in found or not vis[found[i]]]
        if missing:
            raise NotFound(f"no live engram with id {missing[0]}")
        eids = np.array([found[i] for i in ids], np.int64)
        return self.segments.read(self.hot.seg[eids], self.hot.row[eids])

    def stats(self) -> dict[str, Any]:
        """A dict describing the store: counts per kind, clock, dim, bytes per file, ..."""
        self._check_open()
        now = self._clock
        vis = self.hot.visible(now)
        eff = effective_kind(self.hot.kind, self.hot.created, now)
        kinds = {Kind(KIND_NAMES[c]).value: int((vis & (eff == c)).sum()) for c in KIND_NAMES}
        dead = int((self.hot.alive & ~vis).sum())
        files = {}
        for p in sorted(self.path.rglob("*")):
            if p.is_file():
                files[str(p.relative_to(self.path))] = p.stat().st_size
        return {
            "path": str(self.path),
            "count": int(vis.sum()),
            "kinds": kinds,
            "dead_uncollected": dead,
            "clock": now,
            "generation": self._generation,
            "dim": self.dim,
            "dtype": self.manifest.dtype,
            "encoder": self.manifest.encoder_spec,
            "fingerprint": self.fingerprint,
            "format_version": self.manifest.format_version,
            "files": files,
            "bytes": sum(files.values()),
        }

    # -- verification -------------------------------------------------------------------------

    def verify(self) -> VerifyReport:
        """Check every invariant of the store and report what is wrong (never raises on damage).

        Checks: manifest fingerprint, segment files against committed lengths, each engram's
        pointer, vector checksum, finiteness, text and content hash, reference counts against
        occurrences, dangling occurrences and links, counters.

        >>> assert mem.verify().ok  # doctest: +SKIP
        """
        self._check_open()
        with self._write_lock:
            return self._verify()

    def check(self) -> None:
        """Raise CorruptStore if :meth:`verify` finds any problem."""
        report = self.verify()
        if not report.ok:
            raise CorruptStore(f"{self.path}: " + "; ".join(report.problems[:5]))

    def _verify(self) -> VerifyReport:
        report = VerifyReport()
        problems = report.problems
        try:
            disk = Manifest.read(self.path)
            if disk.fingerprint != self.fingerprint:
                problems.append("manifest fingerprint changed while the store was open")
        except EngramError as exc:
            problems.append(f"manifest: {exc.message}")
        committed = self.segments.committed
        for seg, rows in committed.items():
            p = self.path / SEGMENT_DIR / f"{seg:08d}.vec"
            size = p.stat().st_size if p.exists() else -1
            if size != rows * self.segments.row_bytes:
                problems.append(f"segment {p.name}: {size} bytes, expected "
                                f"{rows * self.segments.row_bytes}")
        try:
            rows = self._query(
                'SELECT eid, id, seg, "row", vec_sum, text, refs, '
                "(SELECT count(*) FROM occurrences o WHERE o.eid = e.eid) FROM engrams e"
            )
        except CorruptStore as exc:
            problems.append(exc.message)
            return report
        seen_ptr: dict[tuple[int, int], int] = {}
        max_eid = 0
        for eid, ident, seg, row, vsum, blob, refs, n_occ in rows:
            max_eid = max(max_eid, eid)
            if row >= committed.get(seg, 0):
                problems.append(f"engram {ident[:12]}: pointer ({seg}, {row}) past committed")
                continue
            if (seg, row) in seen_ptr:
                problems.append(f"engram {ident[:12]}: shares vector ({seg}, {row})")
            seen_ptr[(seg, row)] = eid
            try:
                vec = self.segments.view(seg)[row]
            except (CorruptStore, IndexError, OSError) as exc:
                problems.append(f"engram {ident[:12]}: vector unreadable: {exc}")
                continue
            if vector_checksum(vec) != vsum:
                problems.append(f"engram {ident[:12]}: vector checksum mismatch")
            elif not np.isfinite(vec).all():
                problems.append(f"engram {ident[:12]}: vector has non-finite values")
            try:
                text = decompress_text(blob)
                if content_id(self.fingerprint, text) != ident:
                    problems.append(f"engram {ident[:12]}: text does not match its id")
            except Exception as exc:  # zstd or UTF-8 damage
                problems.append(f"engram {ident[:12]}: text unreadable: {exc}")
            if refs != n_occ:
                problems.append(f"engram {ident[:12]}: refs {refs} but {n_occ} occurrences")
            if not (eid < self.hot.capacity and self.hot.alive[eid]):
                problems.append(f"engram {ident[:12]}: missing from the in-memory state")
        dangling = self._query(
            "SELECT count(*) FROM occurrences WHERE eid NOT IN (SELECT eid FROM engrams)"
        )[0][0]
        if dangling:
            problems.append(f"{dangling} occurrences of no engram")
        dangling_edges = self._query(
            "SELECT count(*) FROM edges WHERE a NOT IN (SELECT eid FROM engrams) "
            "OR b NOT IN (SELECT eid FROM engrams)"
        )[0][0]
        if dangling_edges:
            problems.append(f"{dangling_edges} links to no engram")
        dangling_turns = self._query(
            "SELECT count(*) FROM turns WHERE eid NOT IN (SELECT eid FROM engrams)")[0][0]
        if dangling_turns:
            problems.append(f"{dangling_turns} conversation-context rows of no engram")
        dup = self._query("SELECT count(*) - count(DISTINCT id) FROM engrams")[0][0]
        if dup:
            problems.append(f"{dup} duplicate engram ids")
        if rows and max_eid >= self._next_eid:
            problems.append("next_eid counter is behind the stored engrams")
        report.checked = {"engrams": len(rows), "segments": len(committed)}
        return report


# -- helpers ------------------------------------------------------------------------------------


_KINDS = {code: Kind(name) for code, name in KIND_NAMES.items()}
_NO_SCORE = np.zeros(1, np.float64)
# How a context candidate was found, by (in the dense top list, in the lexical top list).
_VIA = {(d, lx): hybrid.via(d, lx) if d or lx else "context"
        for d in (False, True) for lx in (False, True)}


def _best_first(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest ``scores``, best first, ties by position: the first
    ``k`` of ``(-scores).argsort(kind="stable")`` without sorting the rest."""
    neg = -scores
    if len(neg) <= 2 * k:
        return neg.argsort(kind="stable")[:k]
    kth = np.partition(neg, k - 1)[k - 1]
    near = (neg <= kth).nonzero()[0]  # ascending positions: a stable sort keeps ties in order
    if len(near) < k:  # NaN scores (never below kth): the full sort places them last
        return neg.argsort(kind="stable")[:k]
    return near[neg[near].argsort(kind="stable")[:k]]


def _context_hits(eids: np.ndarray, n_best: int, mixed: np.ndarray, evidence: list[np.ndarray],
                  in_dense: np.ndarray, in_lexical: np.ndarray,
                  lifted: dict[int, tuple[float, int]], lifted_in: np.ndarray) -> dict:
    """``found`` of a context recall (:meth:`Store._fuse_context`).

    ``eids`` are the returned candidates: the ``n_best`` best, best first (``in_dense`` and
    ``in_lexical`` say which top lists they were in), then the ``lifted`` turns that are
    candidates (``lifted_in`` says which those are), with their unsquashed scores ``mixed``
    and their ``evidence``: one array per score part, in the order of the parts' dict.
    """
    # One squash for the rows and the lifted scores (elementwise: the same bits).
    lifted_mixed = np.fromiter((m for m, _ in lifted.values()), np.float64, len(lifted))
    squashed = hybrid.squash(np.concatenate((mixed, lifted_mixed))).tolist()
    # (A dict display: several times quicker than dict(zip(names, row)).)
    parts = [{"vector": v, "lexical": lx, "context_vector": cv, "context_lexical": cl,
              "session": se, "speaker": sp, "date": da, "coverage": co, "context_coverage": cc,
              "fused": f}
             for (v, lx, cv, cl, se, sp, da, co, cc), f in zip(np.array(evidence).T.tolist(),
                                                               squashed, strict=False)]
    found: dict[int, tuple[float, str, list[int], dict[str, float]]] = {}
    for e, d, lx, p in zip(eids[:n_best].tolist(), in_dense.tolist(), in_lexical.tolist(),
                           parts, strict=False):
        found[e] = (p["fused"], _VIA[d, lx], [], p)
    if lifted:
        own_parts = iter(parts[n_best:])
        for (e, (_, seed)), score, is_in in zip(lifted.items(), squashed[len(eids):],
                                                lifted_in.tolist(), strict=True):
            p = next(own_parts) if is_in else {}
            found[e] = (score, "context", [seed, e], {**p, "context": score, "fused": score})
    return found


def _any_equal(values: np.ndarray, wanted: set[int]) -> np.ndarray:
    """``np.isin(values, list(wanted))`` for a handful of ints, without its setup."""
    it = iter(wanted)
    out = values == next(it)
    for w in it:
        out |= values == w
    return out


def _union(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sorted distinct int64 values of two arrays of non-negative ints (eids): ``np.union1d``
    without its layers."""
    both = np.concatenate([a, b]).astype(np.int64, copy=False)
    if len(both) < 2:
        return both
    top = int(both.max())
    if top < 8 * len(both):
        # Values dense in [0, top] (a small store): marking them beats sorting.
        seen = np.zeros(top + 1, bool)
        seen[both] = True
        return seen.nonzero()[0]
    both.sort()
    keep = np.empty(len(both), bool)
    keep[0] = True
    np.not_equal(both[1:], both[:-1], out=keep[1:])
    return both[keep]


class _OccurrenceLoader:
    """Fetches the occurrences of one recall's hits in one query, on first access."""

    def __init__(self, store: Store, eid_of: dict[str, int], occ_sql: str,
                 occ_params: list[Any]) -> None:
        self._store = store
        self.eid_of = eid_of  # id -> eid of every hit (integrate rewards them by eid)
        self._sql = occ_sql
        self._params = occ_params
        self._loaded: dict[int, list[Occurrence]] | None = None
        self._lock = threading.Lock()

    def get(self, ident: str) -> list[Occurrence]:
        with self._lock:
            if self._loaded is None:
                self._store._check_open()
                eids = sorted(self.eid_of.values())
                extra = f" AND {self._sql}" if self._sql else ""
                rows = self._store._query(
                    "SELECT eid, role, session, tick, metadata FROM occurrences o "
                    f"WHERE eid IN {lk.in_list(eids)}{extra} ORDER BY seq", self._params)
                loaded: dict[int, list[Occurrence]] = {e: [] for e in eids}
                for eid, role, session, tick, meta in rows:
                    loaded[int(eid)].append(_occurrence(
                        {"role": role, "session": session, "tick": tick, "metadata": meta}))
                self._loaded = loaded
        return self._loaded.get(self.eid_of.get(ident, -1), [])



def _metadata_dates(metas: list[str | None], home: list[bool], key: str) -> list[Any]:
    """The ``key`` value of each home occurrence's metadata (None elsewhere)."""
    out: list[Any] = []
    for meta, first in zip(metas, home, strict=True):
        value = None
        if first and meta is not None and key:
            decoded = json.loads(meta)
            if isinstance(decoded, dict):
                value = decoded.get(key)
        out.append(value)
    return out


def _per_item(values: Any, n: int, what: str, check: Any) -> list[Any]:
    if values is None:
        return [check(None, what) if check is _check_bool else None] * n
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise InvalidInput(f"{what} must be a list with one entry per text")
    if len(values) != n:
        raise InvalidInput(f"{what} has {len(values)} entries for {n} texts")
    return [check(v, f"{what}[{i}]") for i, v in enumerate(values)]


def _check_bool(value: Any, what: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidInput(f"{what} must be a bool, got {value!r}")
    return bool(value)


def _is_id(ident: object) -> bool:
    return isinstance(ident, str) and len(ident) == 64 and all(
        c in "0123456789abcdef" for c in ident)


def _check_id(ident: object) -> None:
    if not _is_id(ident):
        raise InvalidInput(f"not an engram id: {ident!r}",
                           hint="ids are the 64-hex-digit strings ingest() returns")


def _occurrence(o: dict[str, Any]) -> Occurrence:
    meta = o.get("metadata")
    return Occurrence(
        role=o.get("role"), session=o.get("session"), tick=int(o.get("tick") or 0),
        metadata=None if meta is None else json.loads(meta),
    )


# Up to this many rows, an UPDATE names them in a literal IN-list (an index lookup, 0.7 ms at
# 1M engrams) instead of joining a registered Arrow table (a scan, 1.6 ms).
_POINT_UPDATE_MAX = 256


def _update_for_occurrences(
    con: Any,
    occ_eids: list[int],
    revive: list[int],
    pin_eids: list[int],
    now: int,
    life: float,
) -> None:
    """Bump refs of every engram that got occurrences; refresh content said again."""
    touched, counts = np.unique(np.asarray(occ_eids, np.int64), return_counts=True)
    if len(touched) <= _POINT_UPDATE_MAX:
        cases = " ".join(f"WHEN {int(e)} THEN {int(c)}" for e, c in zip(touched, counts))
        con.execute(f"UPDATE engrams SET refs = refs + CASE eid {cases} END, last_tick = ? "
                    f"WHERE eid IN {lk.in_list(touched)}", [now])
        _refresh_said_again(con, revive, pin_eids, now, life)
        return
    bumps = pa.table({"eid": touched, "n": counts.astype(np.int64)})
    with cat.registered(con, "bumps", bumps) as view:
        con.execute(
            f"UPDATE engrams SET refs = refs + b.n, last_tick = ? FROM {view} b "
            "WHERE engrams.eid = b.eid",
            [now],
        )
    _refresh_said_again(con, revive, pin_eids, now, life)


def _refresh_said_again(
    con: Any, revive: list[int], pin_eids: list[int], now: int, life: float
) -> None:
    """Content said again lives on; content pinned on a repeat never dies."""
    if revive:
        # Content said again lives at least another full lifespan from now; a long-term
        # engram keeps its (longer) expiry and its kind.
        con.execute(
            "UPDATE engrams SET expires_at = greatest(expires_at, ?) "
            "WHERE eid IN (SELECT unnest(?::BIGINT[])) AND expires_at IS NOT NULL",
            [now + life, revive],
        )
    if pin_eids:
        con.execute(
            "UPDATE engrams SET pinned = true, expires_at = NULL "
            "WHERE eid IN (SELECT unnest(?::BIGINT[]))",
            [pin_eids],
        )
