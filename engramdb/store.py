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
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from engramdb import catalog as cat
from engramdb.catalog import CATALOG_NAME, KIND_CODES, KIND_NAMES, Catalog
from engramdb.content import (
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
from engramdb.fsio import fsync_dir
from engramdb.hotstate import NEVER, HotState
from engramdb.locking import LOCK_NAME, StoreLock
from engramdb.manifest import MANIFEST_NAME, Manifest
from engramdb.segments import SEGMENT_DIR, SegmentStore
from engramdb.settings import Settings
from engramdb.types import Engram, IngestResult, Kind, Occurrence, Recall, VerifyReport

# Files a half-created store may hold before its manifest (written last) exists.
_CREATION_FILES = {LOCK_NAME, CATALOG_NAME, CATALOG_NAME + ".wal", SEGMENT_DIR,
                   "." + MANIFEST_NAME + ".tmp"}


def open(  # noqa: A001 - the front door, like sqlite3.connect / shelve.open
    path: str | os.PathLike[str],
    encoder: Encoder | None = None,
    *,
    dim: int | None = None,
    settings: Settings | dict[str, Any] | None = None,
    lock_timeout: float = 0.0,
    create: bool = True,
) -> Store:
    """Open the store at ``path``, creating it if it does not exist.

    A new store needs ``encoder`` (whose spec is recorded, so it reopens without code) or
    ``dim`` (a store of caller-supplied vectors). Reopening with a different encoder raises
    :class:`~engramdb.errors.ModelMismatch`; a second process gets
    :class:`~engramdb.errors.StoreLocked` naming the holder's pid after ``lock_timeout``
    seconds. Other errors: NotAStore, CorruptStore, FormatTooNew, InvalidInput.

    >>> import engramdb
    >>> from engramdb.encoders import HashingEncoder
    >>> with engramdb.open(tmp / "alice.engram", encoder=HashingEncoder()) as mem:  # doctest: +SKIP
    ...     mem.ingest("I adopted a guinea pig named Oscar.")
    """
    return Store(
        Path(path), encoder, dim=dim, settings=settings, lock_timeout=lock_timeout, create=create
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
        try:
            self._open_locked(encoder, dim, settings)
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
        self, encoder: Encoder | None, dim: int | None, settings: Settings | None
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
        self.catalog = Catalog(path / CATALOG_NAME)
        counters = self.catalog.counters()
        if set(counters) != set(cat.COUNTERS):
            raise CorruptStore(f"{path}: catalog counters are incomplete ({sorted(counters)})")
        self._generation = counters["generation"]
        self._clock = counters["clock"]
        self._next_eid = counters["next_eid"]
        self._next_seq = counters["next_seq"]
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
            self.catalog.query_arrow('SELECT eid, seg, "row", kind, expires_at FROM engrams')
        )
        self._check_pointers()

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
            if self.catalog is not None:
                self.catalog.close()
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
        bar = _progress(n, progress, "ingest")
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
    ) -> list[IngestResult]:
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
        now = self._clock
        s = self.settings
        life = {0: s.working_lifespan, 1: s.short_term_lifespan, 2: s.long_term_lifespan}[
            kind_code
        ]
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
        committed = self.segments.committed
        if plan is not None:
            self.segments.write(plan, stored)  # durable before the commit that points at it
            committed = plan.committed_after(committed)
        counters = {
            "generation": self._generation + 1,
            "next_eid": self._next_eid + len(new_idx),
            "next_seq": self._next_seq + len(ids),
        }
        try:
            with self.catalog.transaction() as con:
                if plan is not None:
                    cat.insert_arrow(con, "engrams", engram_rows)
                cat.insert_arrow(con, "occurrences", occ_rows)
                _update_for_occurrences(
                    con, [eid_of[i] for i in ids], revive,
                    sorted(existing[i] for i in pinned_ids & set(existing)), now, life,
                )
                if plan is not None:
                    cat.set_segment_lengths(con, committed)
                cat.set_counters(con, counters)
        except BaseException:
            self.segments.rollback()
            raise
        # Acknowledged: make it visible.
        self._generation = counters["generation"]
        self._next_eid = counters["next_eid"]
        self._next_seq = counters["next_seq"]
        if plan is not None:
            self.segments.set_committed(committed)
            self.hot.add(new_eids, segs, rows, new_kinds, new_exp)
        if revive:
            self._refresh_hot(revive)
        return [IngestResult(id=i, is_new=i not in existing and new_first.get(i) == k)
                for k, i in enumerate(ids)]

    def _lookup_ids(self, ids: list[str]) -> dict[str, int]:
        """Map the ids that are stored (alive or expired, not forgotten) to their eids."""
        if not ids:
            return {}
        rows = self.catalog.query(
            "SELECT id, eid FROM engrams WHERE id IN (SELECT unnest(?::VARCHAR[]))", [ids]
        )
        return {i: int(e) for i, e in rows}

    def _refresh_hot(self, eids: list[int]) -> None:
        """Reload kind and expiry of some engrams from the catalog into the hot state."""
        rows = self.catalog.query_arrow(
            'SELECT eid, seg, "row", kind, expires_at FROM engrams '
            "WHERE eid IN (SELECT unnest(?::BIGINT[]))",
            [eids],
        )
        fresh = HotState.from_arrow(rows)
        e = rows.column("eid").to_numpy().astype(np.int64)
        self.hot.add(e, fresh.seg[e], fresh.row[e], fresh.kind[e], fresh.expires[e])

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
            with self.catalog.transaction() as con:
                con.execute(
                    "INSERT INTO forgotten SELECT eid, id, ?, 'forgotten', kind, false "
                    "FROM engrams WHERE eid IN (SELECT unnest(?::BIGINT[]))", [now, eids])
                for table, where in (("engrams", "eid"), ("occurrences", "eid")):
                    con.execute(f"DELETE FROM {table} WHERE {where} IN "
                                "(SELECT unnest(?::BIGINT[]))", [eids])
                con.execute("DELETE FROM edges WHERE a IN (SELECT unnest(?::BIGINT[])) "
                            "OR b IN (SELECT unnest(?::BIGINT[]))", [eids, eids])
                cat.set_counters(con, {"generation": self._generation + 1})
            self._generation += 1
            self.hot.remove(np.array(eids, np.int64))
            return len(eids)

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
        self, eids: list[int], occ_sql: str = "", occ_params: Sequence[Any] = ()
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
        now = self._clock
        out = {}
        for eid, ident, blob, kind, refs, created, expires, pinned, recalls, occs in rows:
            out[int(eid)] = Engram(
                id=ident,
                text=decompress_text(blob),
                kind=Kind(KIND_NAMES[int(kind)]),
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
    ) -> list[Recall]:
        """Return the ``top_k`` live engrams most similar to ``query`` (or to ``vector``).

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
        if vector is not None:
            q = check_vectors(vector, self.dim, 1)[0]
        else:
            q = self._encode([normalize_text(query, what="query")])[0]
        now = self._clock
        mask = self.hot.visible(now)
        kind_codes = _kind_codes(kinds)
        if kind_codes is not None:
            mask &= np.isin(self.hot.kind, kind_codes)
        occ_sql, occ_params = _occurrence_filter(where)
        if occ_sql:
            allowed = self.catalog.query_arrow(
                f"SELECT DISTINCT eid FROM occurrences o WHERE {occ_sql}", occ_params
            ).column("eid").to_numpy()
            keep = np.zeros_like(mask)
            allowed = allowed[allowed < len(keep)]
            keep[allowed] = True
            mask &= keep
        eids, scores = self._exact_search(q, top_k, mask)
        if len(eids) == 0:
            return []
        engrams = self._engrams([int(e) for e in eids], occ_sql, occ_params)
        hits = []
        for eid, score in zip(eids, scores):
            eng = engrams.get(int(eid))
            if eng is None:  # forgotten between the search and the fetch
                continue
            hits.append(
                Recall(
                    id=eng.id, text=eng.text, score=float(score), kind=eng.kind,
                    lifespan_left=eng.lifespan_left, via="vector",
                    scores={"vector": float(score)}, occurrences=eng.occurrences,
                )
            )
        return hits

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
        kinds = {Kind(KIND_NAMES[c]).value: int((vis & (self.hot.kind == c)).sum())
                 for c in KIND_NAMES}
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


def _check_id(ident: object) -> None:
    if not isinstance(ident, str) or len(ident) != 64 or not all(
        c in "0123456789abcdef" for c in ident
    ):
        raise InvalidInput(f"not an engram id: {ident!r}",
                           hint="ids are the 64-hex-digit strings ingest() returns")


def _kind_codes(kinds: Iterable[Kind | str] | None) -> list[int] | None:
    if kinds is None:
        return None
    if isinstance(kinds, (str, Kind)):
        kinds = [kinds]
    codes = []
    for k in kinds:
        try:
            name = Kind(k).value
        except ValueError:
            raise InvalidInput(
                f"unknown kind {k!r}; use working, short_term or long_term"
            ) from None
        if name not in KIND_CODES:
            raise InvalidInput("dead engrams are never recalled; list them with inspect")
        codes.append(KIND_CODES[name])
    return codes


def _occurrence_filter(where: dict[str, Any] | None) -> tuple[str, list[Any]]:
    """Translate a ``where`` dict into SQL over occurrences ``o``."""
    if where is None:
        return "", []
    if not isinstance(where, dict):
        raise InvalidInput("where must be a dict such as {'session': 's1', 'role': 'user'}")
    clauses: list[str] = []
    params: list[Any] = []
    for key, value in where.items():
        if key in ("session", "role"):
            values = value if isinstance(value, (list, tuple, set)) else [value]
            if not values or not all(isinstance(v, str) for v in values):
                raise InvalidInput(f"where[{key!r}] must be a str or a list of str")
            clauses.append(f"o.{key} IN (SELECT unnest(?::VARCHAR[]))")
            params.append(list(values))
        elif key in ("since", "until"):
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidInput(f"where[{key!r}] must be a tick (int)")
            clauses.append("o.tick >= ?" if key == "since" else "o.tick <= ?")
            params.append(value)
        elif key == "metadata":
            if not isinstance(value, dict) or not value:
                raise InvalidInput("where['metadata'] must be a non-empty dict")
            for mk, mv in value.items():
                if not isinstance(mk, str):
                    raise InvalidInput("metadata keys must be str")
                encoded = encode_metadata({"v": mv})
                clauses.append("json_extract(o.metadata, ?) = json_extract(?::JSON, '$.v')")
                params.extend(["$." + json.dumps(mk), encoded])
        else:
            raise InvalidInput(
                f"unknown filter {key!r}; use session, role, metadata, since, until"
            )
    return " AND ".join(clauses), params


def _occurrence(o: dict[str, Any]) -> Occurrence:
    meta = o.get("metadata")
    return Occurrence(
        role=o.get("role"), session=o.get("session"), tick=int(o.get("tick") or 0),
        metadata=None if meta is None else json.loads(meta),
    )


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
    bumps = pa.table({"eid": touched, "n": counts.astype(np.int64)})
    with cat.registered(con, "bumps", bumps) as view:
        con.execute(
            f"UPDATE engrams SET refs = refs + b.n, last_tick = ? FROM {view} b "
            "WHERE engrams.eid = b.eid",
            [now],
        )
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


def _progress(total: int, enabled: bool, desc: str) -> Any:
    if not enabled or total <= 0:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="engram")
