"""The Store: one per-user memory file (a directory), opened in-process like SQLite.

Write path (the commit protocol, DESIGN section 2): validate everything; append the new
vectors to a segment and fsync; then one DuckDB transaction inserts the rows, bumps the
reference counts and records the new committed segment lengths; only when that commit returns
is the write acknowledged and made visible in memory. A crash before the commit leaves bytes
past the committed length, which the next open cuts off.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa

from engramdb import catalog as cat
from engramdb import collect, hybrid
from engramdb import links as lk
from engramdb.catalog import CATALOG_NAME, KIND_CODES, KIND_NAMES, Catalog
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
    vector_checksum,
)
from engramdb.encoders import Encoder, from_spec
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
from engramdb.filters import kind_codes, occurrence_filter
from engramdb.fsio import fsync_dir
from engramdb.hotstate import HOT_COLUMNS, NEVER, HotState
from engramdb.index import IndexConfig, IndexDamaged, VectorIndex
from engramdb.lexical import LexicalIndex
from engramdb.lifespan import LONG_TERM, apply_reward, effective_kind, recall_reward
from engramdb.locking import LOCK_NAME, StoreLock
from engramdb.manifest import MANIFEST_NAME, Manifest
from engramdb.progress import progress_bar
from engramdb.prompt import format_prompt
from engramdb.segments import SEGMENT_DIR, SegmentStore
from engramdb.settings import Settings
from engramdb.types import Engram, IngestResult, Kind, Occurrence, Recall, Turn, VerifyReport

INDEX_DIR = "index"

# Files a half-created store may hold before its manifest (written last) exists.
_CREATION_FILES = {LOCK_NAME, CATALOG_NAME, CATALOG_NAME + ".wal", SEGMENT_DIR, INDEX_DIR,
                   "." + MANIFEST_NAME + ".tmp"}


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
    ``ef_search``, ``candidate_multiplier``, ``exact_threshold``...; see ``engramdb.index``),
    which is otherwise chosen from the dimension and size and recorded in the manifest.
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
        self._lock = StoreLock(self._prepare_directory(path, create))
        self._lock.acquire(lock_timeout)
        self.catalog: Catalog | None = None
        self.index: VectorIndex | None = None
        self._index_unsaved = 0
        try:
            self._open_locked(encoder, dim, settings, index)
        except BaseException:
            if self.catalog is not None:
                self.catalog.close()
            self._lock.release()
            raise
        self._closed = False

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
        self.settings = Settings.from_dict(manifest.settings)
        self.dim = manifest.dim
        self.fingerprint = manifest.fingerprint
        self._encoder = encoder
        durable = self.settings.durability == "full"
        # A catalog rewrite that died before its rename leaves this behind (collect.py).
        (path / (CATALOG_NAME + ".compact")).unlink(missing_ok=True)
        self.catalog = Catalog(path / CATALOG_NAME)
        counters = self.catalog.counters()
        if not {"generation", "clock", "next_eid", "next_seq"} <= set(counters):
            raise CorruptStore(f"{path}: catalog counters are incomplete ({sorted(counters)})")
        if "last_turn" not in counters:  # stores written before integrate() kept it
            with self.catalog.transaction() as con:
                con.execute("INSERT INTO counters VALUES ('last_turn', -1)")
            counters["last_turn"] = -1
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
        self.recovered = self.segments.recover(self.catalog.segment_lengths())
        self.hot = HotState.from_arrow(
            self.catalog.query_arrow(f"SELECT {HOT_COLUMNS} FROM engrams")
        )
        self._check_pointers()
        self.lexical = self._load_lexical()
        # Whether any link exists: a store without links skips the edge query on every recall.
        self._has_links = bool(self.catalog.query("SELECT count(*) FROM edges")[0][0])
        self.index = self._load_index(index)

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
        for stale in (catalog_path, self.path / (CATALOG_NAME + ".wal")):
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
        """
        con = self.catalog.con
        for statement in LexicalIndex.schema_sql():
            con.execute(statement)
        docs, engrams = self.catalog.query(
            "SELECT (SELECT count(*) FROM lex_docs), (SELECT count(*) FROM engrams)")[0]
        stale = docs != engrams or self.catalog.query(
            "SELECT count(*) FROM engrams e ANTI JOIN lex_docs d ON d.eid = e.eid")[0][0]
        if stale:
            lex = LexicalIndex()
            rows = self.catalog.query("SELECT eid, text FROM engrams ORDER BY eid")
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

    def _load_index(self, override: dict[str, Any] | None) -> VectorIndex:
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
            idx, generation = VectorIndex.load(self.path / INDEX_DIR, self.dim)
            if idx.config != cfg:
                raise IndexDamaged("its configuration differs from the manifest's")
            if generation > self._generation:
                raise IndexDamaged("it is ahead of the catalog")
        except IndexDamaged as exc:
            self.recovered.append(f"rebuilt the vector index ({exc})")
            return self._build_index(cfg, live)
        have = idx.labels()
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
        self.index = idx
        self._save_index()
        self.hot.next_death = float(self.hot.expires[live].min()) if len(live) else NEVER
        return idx

    def _save_index(self) -> None:
        """Persist the vector index (derived state) with the generation it covers."""
        try:
            self.index.save(self.path / INDEX_DIR, self._generation)
        except OSError as exc:
            raise StorageError(f"saving the vector index failed: {exc}") from exc
        self._index_unsaved = 0

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
            return {"indexed": len(live), "levels": list(cfg.levels), "lexical": len(self.lexical)}

    def _check_pointers(self) -> None:
        """Every live pointer must fall inside a committed segment row."""
        committed = self.segments.committed
        alive = np.nonzero(self.hot.alive)[0]
        if len(alive) == 0:
            return
        segs, rows = self.hot.seg[alive], self.hot.row[alive]
        limits = np.array([committed.get(int(s), 0) for s in segs], np.int64)
        bad = rows >= limits
        if bad.any():
            raise CorruptStore(
                f"{self.path}: {int(bad.sum())} engrams point past the committed vectors"
            )

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
                if self.index is not None and self._index_unsaved:
                    self._save_index()
            finally:
                if self.catalog is not None:
                    self.catalog.close()
                self._lock.release()

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        """A catalog transaction; an uncertain commit abandons this handle (see _abandon)."""
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
        try:
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
        given = None if vectors is None else check_vectors(vectors, self.dim, n)
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
                            None if given is None else given[start:stop], KIND_CODES[kind.value],
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
        existing = self._lookup_ids(sorted(set(ids)))
        # First occurrence in the batch of each new id becomes the engram; the rest are refs.
        new_first: dict[str, int] = {}
        for i, ident in enumerate(ids):
            if ident not in existing and ident not in new_first:
                new_first[ident] = i
        new_idx = list(new_first.values())
        if new_idx:
            if given is not None:
                vecs = given[new_idx]
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
        committed = self.segments.committed
        if plan is not None:
            self.segments.write(plan, stored)  # durable before the commit that points at it
            committed = plan.committed_after(committed)
        counters = {
            "generation": self._generation + 1,
            "next_eid": self._next_eid + len(new_idx),
            "next_seq": self._next_seq + len(ids),
        }
        if advance:
            counters["clock"] = now
        after = None
        try:
            with self._tx() as con:
                if plan is not None:
                    cat.insert_arrow(con, "engrams", engram_rows)
                    LexicalIndex.insert(con, lex_rows)
                cat.insert_arrow(con, "occurrences", occ_rows)
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
            self._on_vectors_added(new_eids, vecs)
        if revive:
            self._refresh_hot(revive)
        if after is not None:
            after()
        return [IngestResult(id=i, is_new=i not in existing and new_first.get(i) == k)
                for k, i in enumerate(ids)]

    def _lookup_ids(self, ids: list[str]) -> dict[str, int]:
        """Map the ids that are stored (alive or expired, not forgotten) to their eids."""
        if not ids:
            return {}
        if len(ids) <= _POINT_UPDATE_MAX and all(_is_id(i) for i in ids):
            # Literal ids use the index on id (1 ms less per call at 1M engrams than a scan).
            listed = ",".join(f"'{i}'" for i in ids)
            rows = self.catalog.query(f"SELECT id, eid FROM engrams WHERE id IN ({listed})")
        else:
            rows = self.catalog.query(
                "SELECT id, eid FROM engrams WHERE id IN (SELECT unnest(?::VARCHAR[]))", [ids]
            )
        return {i: int(e) for i, e in rows}

    def _refresh_hot(self, eids: list[int]) -> None:
        """Reload kind and expiry of engrams said again (their pointers do not change)."""
        rows = self.catalog.query(
            f"SELECT eid, kind, expires_at FROM engrams WHERE eid IN {lk.in_list(eids)}")
        e = np.array([r[0] for r in rows], np.int64)
        self.hot.set_life(e, np.array([r[1] for r in rows], np.int8),
                          np.array([NEVER if r[2] is None else r[2] for r in rows], np.float64))
        if self.index is not None:  # content said again after it expired lives again
            back = np.array([x for x in e.tolist() if x not in self.index], np.int64)
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
                for sql, params in LexicalIndex.delete_sql(eids):
                    con.execute(sql, params)
                cat.set_counters(con, {"generation": self._generation + 1})
            self._generation += 1
            self.hot.remove(np.array(eids, np.int64))
            self.lexical.apply_delete(eids)
            self._on_removed(np.array(eids, np.int64))
            return len(eids)

    # -- the lifespan engine -----------------------------------------------------------------

    def _on_vectors_added(self, eids: np.ndarray, vectors: np.ndarray) -> None:
        """Keep the vector index in step once new vectors are committed."""
        if self.index is not None:
            self.index.add(eids, vectors)
            self._index_unsaved += len(eids)
            if self._index_unsaved >= max(50_000, len(self.index) // 4):
                self._save_index()

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
                                    filtered=bool(occ_sql), exclude=own.get(ident))
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
        rows = self.catalog.query(
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

    def _occurrence_mask(self, occ_sql: str, occ_params: list[Any], size: int) -> np.ndarray:
        allowed = self.catalog.query_arrow(
            f"SELECT DISTINCT eid FROM occurrences o WHERE {occ_sql}", occ_params
        ).column("eid").to_numpy()
        keep = np.zeros(size, bool)
        keep[allowed[allowed < size]] = True
        return keep

    def links(self, limit: int = 20) -> list[tuple[str, str, float]]:
        """The ``limit`` strongest links now, as ``(id_a, id_b, weight)``."""
        self._check_open()
        vis = self.hot.visible(self._clock)
        top = [(a, b, w) for a, b, w in lk.strongest(
            self.catalog.reader(), None, self._clock, self.settings)
            if a < len(vis) and b < len(vis) and vis[a] and vis[b]][:check_top_k(limit)]
        ids = self._ids_of({e for a, b, _ in top for e in (a, b)})
        return [(ids[a], ids[b], w) for a, b, w in top if a in ids and b in ids]

    def _ids_of(self, eids: Iterable[int]) -> dict[int, str]:
        eids = sorted(set(eids))
        if not eids:
            return {}
        return {int(e): i for e, i in self.catalog.query(
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
            for eid, ident, expires in self.catalog.query(
                f"SELECT eid, id, expires_at FROM engrams WHERE eid IN {lk.in_list(dead)}"
            ):
                pending.append({"id": ident, "tick": int(np.ceil(expires)), "reason": "expired",
                                "kind": KIND_NAMES[int(kinds[eid])], "collected": False})
        logged = [
            {"id": i, "tick": int(t), "reason": r, "kind": KIND_NAMES[int(k)], "collected": bool(c)}
            for i, t, r, k, c in self.catalog.query(
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
            pending_erase = self.catalog.query(
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
                        for sql, params in LexicalIndex.delete_sql(dead):
                            con.execute(sql, params)
                    con.execute("UPDATE forgotten SET collected = true WHERE NOT collected")
                    cat.set_counters(con, {"generation": self._generation + 1})
                self._generation += 1
                self.hot.remove(dead.astype(np.int64))
                self.lexical.apply_delete(dead)
                self._on_removed(dead.astype(np.int64))
            if erase:
                self.lexical.compact()
            if to_compact:
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
            self.segments.write(plan, vecs)
            new_segs, new_rows = plan.pointers()
            committed = plan.committed_after(committed)
        with self._tx() as con:
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
        path = self.catalog.path
        try:
            collect.rewrite_catalog(self.catalog.con, path)
        finally:
            # Reopen by name whether or not the swap happened: after a rename that was
            # reported as failed, the old handle would write into an unlinked file.
            self.catalog.close()
            self.catalog = Catalog(path)

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
        rows = self.catalog.query(
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
    ) -> list[Recall]:
        """Return the ``top_k`` live engrams most similar to ``query`` (or to ``vector``).

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
        now = self._clock
        mask = self.hot.visible(now)
        codes = kind_codes(kinds)
        if codes is not None:
            mask = mask & np.isin(effective_kind(self.hot.kind, self.hot.created, now), codes)
        occ_sql, occ_params = occurrence_filter(where)
        if occ_sql:
            mask = mask & self._occurrence_mask(occ_sql, occ_params, len(mask))
        return self._recall(q, text, top_k, mask, occ_sql, occ_params, associative, now,
                            filtered=codes is not None or bool(occ_sql))

    def _recall(
        self, q: np.ndarray, text: str | None, top_k: int, mask: np.ndarray, occ_sql: str,
        occ_params: list[Any], associative: bool, now: int, *, filtered: bool,
        exclude: int | None = None,
    ) -> list[Recall]:
        """Search (hybrid when there is query text), expand over links, fetch, rank.

        ``mask`` says which eids may be returned; ``filtered`` says it excludes more than
        expiry and a handful of ids, so the vector index must search inside it.
        """
        weight = self.settings.lexical_weight if text is not None else 0.0
        pool = max(top_k, self.settings.hybrid_pool) if weight > 0 else top_k
        eids, scores = self._dense_search(q, pool, mask, filtered, now)
        if exclude is not None:
            keep = eids != exclude
            eids, scores = eids[keep], scores[keep]
        found: dict[int, tuple[float, str, list[int], dict[str, float]]]
        lex_eids, lex_scores = (self._lexical_scores(text, mask) if weight > 0
                                else (np.zeros(0, np.int64), None))
        if exclude is not None and len(lex_eids):
            keep = lex_eids != exclude
            lex_eids, lex_scores = lex_eids[keep], lex_scores[keep]
        if len(lex_eids):
            found = self._fuse(q, eids, scores, lex_eids, lex_scores, pool, weight)
            eids = np.array(sorted(found, key=lambda e: (-found[e][0], e)), np.int64)
        else:
            eids, scores = eids[:top_k], scores[:top_k]
            found = {int(e): (float(s), "vector", [], {"vector": float(s)})
                     for e, s in zip(eids, scores)}
        if associative and len(eids) and self._has_links:
            self._associate(found, [int(e) for e in eids[:5]], mask, now, exclude)
        ranked = sorted(found.items(), key=lambda kv: (-kv[1][0], kv[0]))[:top_k]
        if not ranked:
            return []
        hot = self.hot
        ids = {e: hot.payload(e)[0] for e, _ in ranked}
        loader = _OccurrenceLoader(self, {ids[e]: e for e in ids}, occ_sql, occ_params)
        kinds = effective_kind(hot.kind[[e for e, _ in ranked]],
                               hot.created[[e for e, _ in ranked]], now)
        hits = []
        for (eid, (score, via, path, parts)), kind in zip(ranked, kinds):
            expires = float(hot.expires[eid])
            hits.append(
                Recall(
                    id=ids[eid], text=decompress_text(hot.payload(eid)[1]), score=score,
                    kind=Kind(KIND_NAMES[int(kind)]),
                    lifespan_left=None if np.isinf(expires) else max(0.0, expires - now),
                    via=via, scores=parts,
                    path=[ids.get(p) or hot.payload(p)[0] for p in path],
                    _occurrences=loader,
                )
            )
        return hits

    def _lexical_scores(self, text: str, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BM25 scores of every visible engram matching the query's terms, sorted by eid."""
        slots, scores = self.lexical.score_terms(self.lexical.tokenizer(text))
        if len(slots) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        eids = self.lexical.eids_of(slots)
        keep = (eids < len(mask)) & mask[np.minimum(eids, len(mask) - 1)]
        eids, scores = eids[keep], scores[keep]
        order = np.argsort(eids)
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

    def _associate(self, found: dict, seeds: list[int], mask: np.ndarray, now: int,
                   exclude: int | None = None) -> None:
        """Follow the strongest links from ``seeds``, adding what they reach to ``found``."""
        s = self.settings
        frontier = {e: (found[e][0], [e]) for e in seeds}
        for _ in range(s.associative_depth):
            if not frontier:
                break
            links = lk.neighbours(self.catalog.reader(), frontier, now, s, s.associative_fanout)
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
        return self.segments.read(self.hot.seg[eids], self.hot.row[eids])

    def _dense_search(self, q: np.ndarray, k: int, mask: np.ndarray, filtered: bool,
                      now: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (eids, cosines) among ``mask``: the vector index, or an exact scan."""
        self._sync_index_deaths(now)
        if self.index is None:
            return self._exact_search(q, k, mask)
        spare = 2  # a few ids (the turn itself) may be masked without being a filter
        allowed = np.nonzero(mask)[0] if filtered else None
        labels, scores, _ = self.index.search(q, k + spare, fetch=self._fetch_vectors,
                                              allowed=allowed)
        keep = (labels < len(mask)) & mask[np.minimum(labels, len(mask) - 1)]
        return labels[keep][:k], scores[keep][:k]

    def _sync_index_deaths(self, now: int) -> None:
        """Mark engrams whose lifespan ran out as deleted in the index (O(1) unless one did)."""
        dead = self.hot.deaths_due(now)  # also moves the visibility mask's next recompute
        if dead is not None and len(dead) and self.index is not None:
            self.index.mark_deleted(dead)

    def _exact_search(self, q: np.ndarray, k: int, mask: np.ndarray) -> tuple[np.ndarray, ...]:
        """Score every visible engram exactly against ``q``; return the top k (eids, scores)."""
        best_e: list[np.ndarray] = []
        best_s: list[np.ndarray] = []
        for seg, mm in self.segments.iter_segments():
            row_eid = self.hot.row_eid.get(seg)
            if row_eid is None:
                continue
            n = min(len(mm), len(row_eid))
            eids = row_eid[:n]
            ok = eids >= 0
            ok[ok] = mask[eids[ok]]
            rows = np.nonzero(ok)[0]
            if len(rows) == 0:
                continue
            if len(rows) == n:
                scores = np.asarray(mm[:n], np.float32) @ q
            else:
                scores = np.asarray(mm[rows], np.float32) @ q
            take = min(k, len(scores))
            top = np.argpartition(-scores, take - 1)[:take]
            best_e.append(eids[rows[top]])
            best_s.append(scores[top])
        if not best_e:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        all_e, all_s = np.concatenate(best_e), np.concatenate(best_s)
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
            rows = self.catalog.query(
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
        dangling = self.catalog.query(
            "SELECT count(*) FROM occurrences WHERE eid NOT IN (SELECT eid FROM engrams)"
        )[0][0]
        if dangling:
            problems.append(f"{dangling} occurrences of no engram")
        dangling_edges = self.catalog.query(
            "SELECT count(*) FROM edges WHERE a NOT IN (SELECT eid FROM engrams) "
            "OR b NOT IN (SELECT eid FROM engrams)"
        )[0][0]
        if dangling_edges:
            problems.append(f"{dangling_edges} links to no engram")
        dup = self.catalog.query("SELECT count(*) - count(DISTINCT id) FROM engrams")[0][0]
        if dup:
            problems.append(f"{dup} duplicate engram ids")
        if rows and max_eid >= self._next_eid:
            problems.append("next_eid counter is behind the stored engrams")
        report.checked = {"engrams": len(rows), "segments": len(committed)}
        return report


# -- helpers ------------------------------------------------------------------------------------


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
                rows = self._store.catalog.query(
                    "SELECT eid, role, session, tick, metadata FROM occurrences o "
                    f"WHERE eid IN {lk.in_list(eids)}{extra} ORDER BY seq", self._params)
                loaded: dict[int, list[Occurrence]] = {e: [] for e in eids}
                for eid, role, session, tick, meta in rows:
                    loaded[int(eid)].append(_occurrence(
                        {"role": role, "session": session, "tick": tick, "metadata": meta}))
                self._loaded = loaded
        return self._loaded.get(self.eid_of.get(ident, -1), [])



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
