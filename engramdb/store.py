"""The front door: :func:`open` and the :class:`Store` a caller holds.

A Store checks its arguments, takes the right lock and hands the work to the engine
(``engramdb/engine``: opening and recovery, the commit primitive, the writes, index upkeep,
gc, verify) or to recall (``engramdb/recall``). docs/architecture.md draws the layers and
states the lock order.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from engramdb.content import (
    check_bool,
    check_finite,
    check_id,
    check_label,
    check_top_k,
    check_vectors,
    content_id,
    encode_metadata,
    id_list,
    normalize_text,
)
from engramdb.encoders import Encoder, from_spec
from engramdb.engine import collect
from engramdb.engine.commit import Committer
from engramdb.engine.derive import DerivedLoader
from engramdb.engine.lifecycle import release_handle, take_lock
from engramdb.engine.lifespan import effective_kind
from engramdb.engine.links import strongest
from engramdb.engine.opening import Opening, create_store, prepare_directory, read_manifest
from engramdb.engine.parts import Parts
from engramdb.engine.restore import Restorer
from engramdb.engine.upkeep import IndexKeeper
from engramdb.engine.verify import verify
from engramdb.engine.writer import JOURNAL_BATCH_MAX, Batch, Writer
from engramdb.errors import (
    CorruptStore,
    InvalidInput,
    ModelMismatch,
    NotAStore,
    NotFound,
)
from engramdb.keyed import KeyedMethods
from engramdb.prompt import format_prompt
from engramdb.recall.filters import kind_codes, occurrence_filter
from engramdb.recall.hybrid import check_min_score
from engramdb.recall.query_text import dense_query, turn_texts
from engramdb.recall.searcher import Searcher
from engramdb.recall.snapshot import Snapshot
from engramdb.settings import Settings
from engramdb.storage.catalog import Catalog
from engramdb.storage.locking import StoreLock
from engramdb.storage.manifest import MANIFEST_NAME
from engramdb.types import (
    KIND_CODES,
    KIND_NAMES,
    Engram,
    IngestResult,
    Kind,
    Recall,
    Turn,
    VerifyReport,
)


def open(  # noqa: A001 - the front door, like sqlite3.connect / shelve.open
    path: str | os.PathLike[str],
    encoder: Encoder | None = None,
    *,
    dim: int | None = None,
    settings: Settings | dict[str, Any] | None = None,
    lock_timeout: float = 0.0,
    create: bool = True,
    index: dict[str, Any] | None = None,
    read_only: bool = False,
) -> Store:
    """Open the store at ``path``, creating it if it does not exist.

    A new store needs ``encoder`` (whose spec is recorded, so it reopens without code) or
    ``dim`` (a store of caller-supplied vectors). Reopening with a different encoder raises
    :class:`~engramdb.errors.ModelMismatch`; a second process gets
    :class:`~engramdb.errors.StoreLocked` naming the holder's pid after ``lock_timeout``
    seconds. ``index`` overrides the vector index configuration (``levels``, ``M``,
    ``ef_search``, ``candidate_multiplier``, ``exact_threshold``...; see
    ``engramdb.derived.index``), which is otherwise chosen from the dimension and size and
    recorded in the manifest. Other errors: NotAStore, CorruptStore, FormatTooNew,
    InvalidInput.

    ``read_only=True`` opens an existing store for reading without writing a byte or taking
    its lock (so it works on a read-only mount and beside other readers): recall, get,
    listing, verify, export and stats work; writes raise ReadOnlyStore, and so does the open
    itself when the store needs recovery or an upgrade first (a writable open does that),
    or StoreLocked while another handle has it open for writing. ``settings`` then apply to
    this handle only.

    >>> import engramdb
    >>> from engramdb.encoders import HashingEncoder
    >>> with engramdb.open(tmp / "alice.engram", encoder=HashingEncoder()) as mem:  # doctest: +SKIP
    ...     mem.ingest("I adopted a guinea pig named Oscar.")
    """
    return Store(
        Path(path), encoder, dim=dim, settings=settings, lock_timeout=lock_timeout,
        create=create, index=index, read_only=read_only,
    )


class _Part:
    """A read-only attribute of the Store that reads one of its parts at call time (the
    engine replaces some in place: gc swaps the catalog, rebuild the indexes)."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, store: Store | None, owner: type | None = None) -> Any:
        if store is None:
            return self
        return getattr(store._parts, self.name)


class Store(KeyedMethods):
    """A persistent memory. Use :func:`engramdb.open` to get one; thread-safe within a process."""

    path = _Part("The store's directory.")
    manifest = _Part("The store's manifest (storage.manifest.Manifest).")
    settings = _Part("The store's settings (engramdb.Settings).")
    dim = _Part("The dimension of the stored vectors.")
    fingerprint = _Part("The fingerprint of the store's encoder.")
    segments = _Part("The vector segment files (storage.segments.SegmentStore).")
    hot = _Part("The in-memory per-engram state (derived.hotstate.HotState).")
    lexical = _Part("The BM25 index (derived.lexical.LexicalIndex).")
    context = _Part("The conversation context (derived.context.TurnContext).")
    index = _Part("The vector index (derived.index.VectorIndex); replaced by rebuilds.")
    indexer = _Part("The background indexer (derived.indexer.BackgroundIndexer).")

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
        read_only: bool = False,
    ) -> None:
        if encoder is not None and not isinstance(encoder, Encoder):
            raise InvalidInput(f"encoder must be an engramdb Encoder, got {type(encoder).__name__}")
        if isinstance(settings, dict):
            settings = Settings.from_dict(settings)
        if lock_timeout is None or isinstance(lock_timeout, bool) or lock_timeout < 0:
            raise InvalidInput(f"lock_timeout must be a number of seconds >= 0, got {lock_timeout}")
        if index is not None and not isinstance(index, dict):
            raise InvalidInput(f"index must be a dict of index settings, got {index!r}")
        read_only = check_bool(read_only, "read_only")
        # absolute, the user's own links resolved once
        path = prepare_directory(path, create and not read_only)
        if read_only and not (path / MANIFEST_NAME).exists():
            raise NotAStore(f"no store at {path}", hint="a read-only open never creates one")
        self._parts = parts = Parts(path)
        parts.read_only = read_only
        self._encoder = encoder
        self._lock = StoreLock(path, shared=read_only)
        take_lock(self._lock, lock_timeout)
        self._prefault_stop = threading.Event()
        self._prefault: threading.Thread | None = None
        opening = Opening(parts)
        created = None
        try:
            if not (path / MANIFEST_NAME).exists():
                created = create_store(path, encoder, dim, settings or Settings())
            opening.run(read_manifest(path, encoder, dim, settings, record=not read_only),
                        index, created)
            self._writer = Writer(parts, opening.committer, self._encode)
            opening.replay(self._writer)
        except BaseException:
            for job in opening.jobs:  # no work of a failed open outlives it
                job.wait()
            if parts.indexer is not None:
                parts.indexer.close()
            for catalog in {id(c): c for c in (parts.catalog, created) if c is not None}.values():
                catalog.close()
            if parts.scratch is not None:
                parts.scratch.remove()
            self._lock.release()
            raise
        self.recovered: list[str] = opening.recovered
        self._committer: Committer = opening.committer
        self._committer.abandon = self._abandon
        self._loader: DerivedLoader = opening.loader
        self._keeper: IndexKeeper = opening.keeper
        self._searcher = Searcher(parts)
        self._collector = collect.Collector(parts, self._committer, self._keeper, self._loader)
        parts.closed = False
        # (A store without a catalog file holds its vectors in memory: nothing to map.)
        if (parts.settings.prefault_vectors and parts.segments.committed
                and parts.catalog is not None):
            self._prefault = threading.Thread(
                target=parts.segments.prefault, args=(self._prefault_stop,), daemon=True,
                name="engramdb-prefault")
            self._prefault.start()
        # Releases a handle dropped without close() once it is collected, or still open at
        # exit (else the interpreter kills the indexer inside hnswlib: SIGABRT). It holds the
        # parts, never the Store (or the Store could never be collected).
        self._finalizer = weakref.finalize(self, release_handle, parts, self._lock,
                                           self._prefault_stop, self._prefault)

    @property
    def catalog(self) -> Catalog:
        """The DuckDB catalog (storage.catalog.Catalog), with every journaled turn folded in;
        replaced by gc. A store without a catalog file gets it here (its first fold)."""
        self._fold()
        return self._parts.catalog

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether this handle is closed (or was opened by the parent of a forked process)."""
        return self._parts.closed or os.getpid() != self._parts.pid

    def close(self) -> None:
        """Release the store (idempotent). Every acknowledged write is already durable."""
        parts = self._parts
        if parts.closed or os.getpid() != parts.pid:
            parts.closed = True  # a forked child must not touch the parent's handles
            return
        with parts.write_lock:
            if parts.closed:
                return
            parts.closed = True
            if parts.read_only:  # nothing to fold, sync or save
                self._release()
                return
            try:
                if parts.catalog is None and not self._committer.fold_due():
                    # A store without a catalog file keeps its turns in the journal (an
                    # open replays them); "fast": the journal becomes durable. The journal
                    # holds their vectors too: those held in memory go.
                    self._committer.sync()
                    if parts.indexer is not None:
                        parts.indexer.close()  # (idempotent: the release closes it too)
                    with parts.gate.moving_vectors():  # recalls in flight read them
                        parts.segments.discard()
                    return
                self._committer.fold()  # the journaled turns go into the catalog
                self._committer.sync()  # "fast": this handle's writes become durable
                self._keeper.save_if_unsaved()
                self._loader.save_lexical()  # the next open reads it instead of the tables
            finally:
                self._release()

    def _release(self) -> None:
        """Stop this handle's threads, close the catalog and release the lock (once)."""
        self._finalizer()

    def _abandon(self) -> None:
        """Close this handle without saving derived state, after an uncertain commit: its
        in-memory state may disagree with the catalog, which the next open settles."""
        self._parts.closed = True
        self._release()

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
        with self._writing(fold=False):  # a store without a catalog stays without one
            self._committer.sync()

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        """Hold the store still for a consistent read of many parts (export, report, the
        CLI): no write, gc or rebuild runs until the block ends. The
        :class:`~engramdb.recall.snapshot.Snapshot` runs read-only SQL on the catalog and
        reads stored vectors; the store's own methods work inside the block too.
        Raises StoreClosed.

        >>> with mem.snapshot() as snap:  # doctest: +SKIP
        ...     snap.query("SELECT count(*) FROM occurrences")
        """
        with self._writing():
            yield Snapshot(self._parts)

    @contextmanager
    def _writing(self, *, fold: bool = True) -> Iterator[None]:
        """The write lock, on an open handle; with ``fold`` the journaled turns are folded
        into the catalog first (all but the turn path read or write the catalog)."""
        self._parts.check_open()
        with self._parts.write_lock:
            self._parts.check_open()
            if fold:
                self._committer.fold()
            yield

    def _fold(self, bulk_rows: int = 0) -> None:
        """Fold the journaled turns into the catalog before a read of it (no-op if none);
        a store without a catalog file gets it (made for ``bulk_rows`` rows to follow:
        ``Committer.fold``)."""
        if self._committer.pending or self._parts.catalog is None:
            with self._writing(fold=False):
                self._committer.fold(bulk_rows=bulk_rows)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._parts.closed else f"{self.count} engrams"
        return f"<engramdb.Store {str(self.path)!r} {state}>"

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
        return self.encoder.encode_stored(texts)

    # -- writes -------------------------------------------------------------------------------

    def ingest(
        self,
        text: str,
        *,
        key: str | None = None,
        role: str | None = None,
        session: str | None = None,
        metadata: dict[str, Any] | None = None,
        vector: Any = None,
        pin: bool = False,
    ) -> IngestResult:
        """Store one text (and its vector); return its content id and whether it was new.

        The same content ingested again returns the same id with ``is_new=False``; its
        reference count grows and the new occurrence (role, session, metadata, tick) is kept.
        ``key`` names this occurrence for ``get(key=)``, ``upsert`` and ``forget(keys=)``;
        a key already stored raises InvalidInput (``upsert`` replaces it).
        Raises InvalidInput / DimensionMismatch for bad input (nothing is written),
        EncoderRequired when there is no encoder and no ``vector``, StorageError on disk failure.

        >>> mem.ingest("I adopted a guinea pig named Oscar.", role="user")  # doctest: +SKIP
        IngestResult(id='3f1c...', is_new=True)
        """
        return self.ingest_many(
            [normalize_text(text)], vectors=None if vector is None else [vector], roles=[role],
            sessions=[session], metadatas=[metadata], pins=[pin],
            keys=None if key is None else [key],
        )[0]

    def ingest_many(
        self,
        texts: Sequence[str],
        *,
        keys: Sequence[str | None] | None = None,
        vectors: Any = None,
        roles: Sequence[str | None] | None = None,
        sessions: Sequence[str | None] | None = None,
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        pins: Sequence[bool] | None = None,
        progress: bool = False,
        kind: Kind = Kind.SHORT_TERM,
    ) -> list[IngestResult]:
        """Store many texts in batches: one segment append + fsync and one commit per batch.

        Every argument is validated before the first batch is written (``keys``: one key or
        None per text, none stored yet and none twice). Batches of ``settings.batch_rows``
        commit one after another; if one fails, the earlier ones stay stored (ingesting
        them again is safe: content ids deduplicate, only the reference counts grow).
        Raises as :meth:`ingest`.

        >>> mem.ingest_many(["hi", "how are you?"], roles=["user", "bot"])  # doctest: +SKIP
        """
        self._parts.check_open()
        prepared = self._prepare(texts, vectors, roles, sessions, metadatas, pins, kind, keys)
        return self._write_batches(prepared, progress, upsert=False)

    def integrate(
        self,
        text: str,
        *,
        top_k: int = 5,
        role: str | None = "user",
        session: str | None = None,
        metadata: dict[str, Any] | None = None,
        where: dict[str, Any] | None = None,
        min_score: float | None = None,
    ) -> Turn:
        """One chatbot turn: recall for ``text``, store it as working memory, strengthen what
        was used, and advance the clock, in one commit.

        The clock moves to the turn's tick first; the memories recalled for the turn earn
        lifespan by rank; the turn is linked to each of them and to the previous turn (fire
        together, wire together). Returns a :class:`~engramdb.types.Turn` whose ``prompt``
        holds the recalled texts and the turn, ready for an LLM. Raises as ``ingest``.
        ``min_score`` keeps only recalled hits whose ``relevance`` reaches it, as in ``recall``.

        >>> turn = mem.integrate("Remind me of my pet's name", top_k=3)  # doctest: +SKIP
        >>> print(turn.prompt)  # doctest: +SKIP
        """
        self._parts.check_open()
        norm = normalize_text(text)
        top_k, min_score = check_top_k(top_k), check_min_score(min_score)
        role = check_label(role, "role")
        session = check_label(session, "session")
        meta = encode_metadata(metadata)
        # The stored vector's text (metadata text added) and the recall's (no speaker's name).
        texts = list(dict.fromkeys(turn_texts(norm, meta, self.settings, self._parts.context)))
        vecs = self._encode(texts)
        q, q_recall = vecs[0], vecs[-1]
        occ_sql, occ_params = occurrence_filter(where)
        turn = self._turn_path(1) and not occ_sql
        with self._writing(fold=not turn):
            now = self.clock + 1
            hot = self._parts.hot
            mask = hot.visible(now)
            if occ_sql:
                mask = mask & self._searcher.occurrence_mask(occ_sql, occ_params, len(mask))
            ident = content_id(self.fingerprint, norm)
            own = self._writer.lookup_ids([ident])
            # A repeated turn must not recall itself: excluded by eid, not by copying the
            # O(N) mask (0.8 ms at 1M engrams).
            recalled = self._searcher.recall(
                q_recall, norm, top_k, mask, occ_sql, occ_params, True, now, filtered=bool(occ_sql),
                exclude=own.get(ident), visible=hot.visible(now), min_score=min_score)
            # The hits' eids, as the recall found them (no second catalog lookup).
            hit_eids = [h._occurrences.eid_of[h.id] for h in recalled]
            batch = Batch([ident], [norm], [role], [session], [meta], [False], q[None, :],
                          KIND_CODES["working"])
            result = self._writer.ingest_batch(batch, now=now, hits=hit_eids, existing=own,
                                               journal=turn)[0]
            self._writer.settle_overflow(turn=turn)
            if turn:
                self._committer.fold_if_due()
        return Turn(id=result.id, is_new=result.is_new, recalled=recalled,
                    prompt=format_prompt(norm, recalled, role), tick=now)

    def _turn_path(self, n: int) -> bool:
        """Whether a write of ``n`` texts goes through the turn journal (docs/format.md)."""
        return n <= JOURNAL_BATCH_MAX and (
            self._committer.counters.next_eid + n <= self.settings.journal_max_engrams)

    def forget(self, ids: str | Iterable[str] | None = None, *,
               keys: str | Iterable[str] | None = None) -> int:
        """Erase engrams now: they vanish from recall at once; ``gc()`` reclaims their bytes.

        Removes the engram rows, occurrences and links in one transaction and records each id
        in the forgetting log. Raises NotFound if any id is unknown (nothing is forgotten then).
        Returns the number of engrams forgotten. With ``keys`` instead, removes the
        occurrences those keys name and returns how many: an engram is erased as above when
        its last occurrence goes (NotFound if any key is not stored).

        >>> mem.forget([result.id])  # doctest: +SKIP
        1
        """
        self._parts.check_open()
        if (ids is None) == (keys is None):
            raise InvalidInput("pass exactly one of ids or keys=")
        if keys is not None:
            return self._forget_keys(keys)
        listed = id_list(ids)
        with self._writing():
            found = self._writer.lookup_ids(sorted(set(listed)))
            missing = sorted(set(listed) - set(found))
            if missing:
                raise NotFound(f"no engram with id {missing[0]}"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
            eids = sorted(found.values())
            self._writer.forget(eids)
            return len(eids)

    def tick(self, n: int = 1) -> int:
        """Advance the clock by ``n`` ticks and return the new tick. Costs O(1): no row is
        touched; engrams whose ``expires_at`` has passed are invisible from now on.

        >>> mem.tick()  # doctest: +SKIP
        1
        """
        self._parts.check_open()
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise InvalidInput(f"n must be an int >= 0, got {n!r}")
        with self._writing():
            return self._writer.tick(n)

    def reinforce(self, ids: str | Iterable[str], amount: float | None = None) -> None:
        """Tell the store these memories were useful: they earn ``amount`` lifespan
        (default ``settings.recall_reward``) and, used together, strengthen their links.

        A negative amount shortens their lives. Raises NotFound for an unknown or dead id.

        >>> mem.reinforce([hit.id for hit in hits[:2]])  # doctest: +SKIP
        """
        self._parts.check_open()
        amount = self.settings.recall_reward if amount is None else check_finite(amount, "amount")
        listed = id_list(ids)
        with self._writing():
            self._writer.reinforce(listed, amount)

    # -- maintenance --------------------------------------------------------------------------

    def gc(self, *, dry_run: bool = False, rewrite: bool = False) -> dict[str, Any]:
        """Remove dead and forgotten engrams physically and reclaim their space.

        Expired engrams are logged (reason "expired") and their rows, occurrences and links
        deleted; segments that are mostly dead, or that hold any forgotten engram's vector,
        are rewritten; when anything was erased the catalog file is rewritten so no deleted
        bytes survive in freed blocks. ``dry_run`` reports what would happen and changes
        nothing. ``rewrite`` rewrites the catalog file even when nothing was erased, with
        today's blocks (16 KiB; 256 KiB for 50,000 live engrams or more, whose checkpoints
        write fewer): how a store made before small blocks migrates (``engramdb gc
        --rewrite``). Returns counts and bytes before/after.

        >>> mem.gc()  # doctest: +SKIP
        {'expired': 12, 'erased': 1, 'segments_compacted': 1, ...}
        """
        if not dry_run:
            self._parts.check_writable("gc")
        with self._writing():
            return self._collector.gc(dry_run, check_bool(rewrite, "rewrite"))

    def rebuild(self, *, progress: bool = False) -> dict[str, Any]:
        """Rebuild every derived structure from the catalog and the segments.

        Refits the rotation and rebuilds every level of the vector index (choosing the
        configuration again for the store's current size unless the user set one), and
        rebuilds the lexical index. Use it after large deletions or to apply a new index
        configuration. Returns what was built.

        >>> mem.rebuild()  # doctest: +SKIP
        {'indexed': 1000, 'levels': [384], 'lexical': 1000}
        """
        self._parts.check_writable("rebuild")
        with self._writing():
            parts = self._parts
            live = parts.hot.live_eids(self.clock)
            cfg = self._keeper.rebuild_config(len(live))
            self._keeper.build(cfg, live, progress)
            with self._committer.commit(bump=False) as c:
                c.con.execute("DELETE FROM lex_postings")
                c.con.execute("DELETE FROM lex_docs")
            parts.lexical = self._loader.load_lexical()
            parts.context = self._loader.load_context(derive=True)
            return {"indexed": len(live), "levels": list(cfg.levels), "lexical": len(parts.lexical)}

    def drain_index(self, *, save: bool = True) -> int:
        """Wait until every acknowledged engram is in the vector index; return how many were
        waited for. ``save`` then persists the index, so a reopen replays nothing.

        Writes return once durable and are indexed on a background thread (searches scan the
        backlog exactly meanwhile); call this after a bulk load before timing searches, or to
        bound the work of the next open. Raises ``StorageError`` if background indexing failed
        (``rebuild()`` recovers).

        >>> mem.ingest_many(texts); mem.drain_index()  # doctest: +SKIP
        """
        self._parts.check_open()
        if save:
            self._parts.check_writable("saving the vector index")
        return self._keeper.drain(save)

    def restorer(self, rows: int = 0) -> Restorer:
        """A :class:`~engramdb.engine.restore.Restorer` that writes rows read from an export
        (given eids, kinds, expiries, occurrences and vectors) into this store through the
        commit primitive every write uses; ``engramdb.transfer.import_store`` drives it.
        ``rows``: the engrams about to be written (a large import's catalog gets large
        blocks, ``storage.catalog.block_size_for``).

        Only a newly created, empty store takes one (else InvalidInput). The restored engrams
        are not in this handle's derived state: after ``finish()`` close the store, open it
        again and call :meth:`rebuild`. Raises StoreClosed.
        """
        self._parts.check_open()
        self._parts.check_writable("restoring")
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
            raise InvalidInput(f"rows must be a count of engrams, got {rows!r}")
        self._fold(rows)  # it writes straight to the catalog: a new store gets it now
        return Restorer(self._parts, self._committer)

    # -- reads --------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Number of live engrams (visible to recall now)."""
        return int(self._parts.hot.visible(self.clock).sum())

    @property
    def clock(self) -> int:
        """The store's logical clock, in ticks."""
        return self._committer.counters.clock

    def __len__(self) -> int:
        return self.count

    def __contains__(self, ident: object) -> bool:
        if not isinstance(ident, str):
            return False
        found = self._writer.lookup_ids([ident])
        return bool(found) and bool(self._parts.hot.visible(self.clock)[found[ident]])

    def get(self, ident: str | None = None, *, key: str | None = None) -> Engram:
        """Return the live engram with this id (or whose occurrence has this ``key``), with
        its text and every occurrence.

        Raises NotFound for an unknown, forgotten or dead id or key; InvalidInput for a non-id.

        >>> mem.get(result.id).text  # doctest: +SKIP
        'I adopted a guinea pig named Oscar.'
        """
        if (ident is None) == (key is None):
            raise InvalidInput("pass exactly one of an id or key=")
        if key is not None:
            return self._get_key(key)
        check_id(ident)
        # No turn may land between the lookup and the read; turns waiting in the journal are
        # read from memory (hydrate.engrams), not folded first.
        with self._writing(fold=False):
            found = self._writer.lookup_ids([ident])
            if not found or not self._parts.hot.visible(self.clock)[found[ident]]:
                raise NotFound(f"no live engram with id {ident}")
            return self._searcher.engrams([found[ident]], now=self.clock)[found[ident]]

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
        min_score: float | None = None,
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

        ``where`` filters on occurrences: ``session``, ``role`` (a value, a list of values,
        or an operator dict), ``metadata`` (a dict of key -> value or operator dict, all of
        which must hold; a dotted key such as ``"user.name"`` reaches nested values when no
        top-level key has that exact name, and a key starting with ``/`` is a JSON pointer),
        ``since``/``until`` (inclusive ticks); the operators are ``$eq $ne $in $nin $gt
        $gte $lt $lte $exists`` (see docs/recall.md, "Filters"). ``kinds`` keeps only engrams
        of those kinds. Filters are applied inside the search: the result is the exact top-k
        among matching engrams. With ``min_score`` (in [0, 1]) the hits whose ``relevance``
        (an absolute score, docs/recall.md) is below it are then dropped.
        Raises InvalidInput, EncoderRequired (text query on a store without a usable
        encoder), DimensionMismatch.

        >>> [r.text for r in mem.recall("what pets do I have?", top_k=3)]  # doctest: +SKIP
        """
        self._parts.check_open()
        top_k, min_score = check_top_k(top_k), check_min_score(min_score)
        if (query is None) == (vector is None):
            raise InvalidInput("pass exactly one of query (text) or vector=")
        text = None
        if vector is not None:
            q = check_vectors(vector, self.dim, 1)[0]
        else:
            text = normalize_text(query, what="query")
            q = self._encode([dense_query(text, self._parts.context)
                              if self.settings.role_free_query else text])[0]
        codes = kind_codes(kinds)
        occ_sql, occ_params = occurrence_filter(where)
        if occ_sql:
            self._fold()  # the filter runs on the catalog's occurrences
        if context is not None:
            context = check_bool(context, "context")
        hot, searcher = self._parts.hot, self._searcher
        with self._parts.gate.reading():
            self._parts.check_open()  # a close may have deleted the vector files meanwhile
            now = self.clock
            mask = hot.visible(now)
            if codes is not None:
                mask = mask & np.isin(effective_kind(hot.kind, hot.created, now), codes)
            if occ_sql:
                mask = mask & searcher.occurrence_mask(occ_sql, occ_params, len(mask))
            return searcher.recall(q, text, top_k, mask, occ_sql, occ_params, associative, now,
                                   filtered=codes is not None or bool(occ_sql), context=context,
                                   visible=hot.visible(now), min_score=min_score)

    def vectors(self, ids: Sequence[str]) -> np.ndarray:
        """Return the stored (unit-length) vectors of live engrams, in the order given."""
        self._parts.check_open()
        for i in ids:
            check_id(i)
        found = self._writer.lookup_ids(sorted(set(ids)))
        vis = self._parts.hot.visible(self.clock)
        missing = [i for i in ids if i not in found or not vis[found[i]]]
        if missing:
            raise NotFound(f"no live engram with id {missing[0]}")
        with self._parts.gate.reading():
            self._parts.check_open()  # a close may have deleted the vector files meanwhile
            return self._parts.fetch_vectors(np.array([found[i] for i in ids], np.int64))

    def links(self, limit: int = 20) -> list[tuple[str, str, float]]:
        """The ``limit`` strongest links now, as ``(id_a, id_b, weight)``."""
        self._parts.check_open()
        self._fold()
        parts, now = self._parts, self.clock
        vis = parts.hot.visible(now)
        top = [(a, b, w) for a, b, w in parts.read_cursor(strongest, None, now, self.settings)
               if a < len(vis) and b < len(vis) and vis[a] and vis[b]][:check_top_k(limit)]
        ids = {e: parts.hot.payload(e)[0] for a, b, _ in top for e in (a, b)}
        return [(ids[a], ids[b], w) for a, b, w in top]

    def forgetting_log(self, limit: int = 50) -> list[dict[str, Any]]:
        """What died or was forgotten, most recent first: id, tick, reason, kind, collected.

        Engrams whose lifespan ran out but which ``gc()`` has not collected yet are listed
        with reason "expired" and ``collected=False``.
        """
        self._parts.check_open()
        self._fold()
        return collect.forgetting_log(self._parts, self.clock, check_top_k(limit))

    def stats(self) -> dict[str, Any]:
        """A dict describing the store: counts per kind, clock, dim, bytes per file, ..."""
        self._parts.check_open()
        now = self.clock
        hot = self._parts.hot
        vis = hot.visible(now)
        eff = effective_kind(hot.kind, hot.created, now)
        kinds = {Kind(KIND_NAMES[c]).value: int((vis & (eff == c)).sum()) for c in KIND_NAMES}
        with self._parts.gate.reading():  # a close may be deleting the vector files
            self._parts.check_open()
            files = {str(p.relative_to(self.path)): p.stat().st_size
                     for p in sorted(self.path.rglob("*")) if p.is_file()}
        return {
            "path": str(self.path), "count": int(vis.sum()), "kinds": kinds,
            "dead_uncollected": int((hot.alive & ~vis).sum()), "clock": now,
            "generation": self._committer.counters.generation, "dim": self.dim,
            "dtype": self.manifest.dtype, "encoder": self.manifest.encoder_spec,
            "fingerprint": self.fingerprint, "format_version": self.manifest.format_version,
            "files": files, "bytes": sum(files.values()),
        }

    def verify(self) -> VerifyReport:
        """Check every invariant of the store and report what is wrong (never raises on damage).

        Checks: manifest fingerprint, segment files against committed lengths, each engram's
        pointer, vector checksum, finiteness, text and content hash, reference counts against
        occurrences, dangling occurrences and links, counters.

        >>> assert mem.verify().ok  # doctest: +SKIP
        """
        with self._writing():
            return verify(self._parts, self._committer.counters.next_eid)

    def check(self) -> None:
        """Raise CorruptStore if :meth:`verify` finds any problem."""
        report = self.verify()
        if not report.ok:
            raise CorruptStore(f"{self.path}: " + "; ".join(report.problems[:5]))
