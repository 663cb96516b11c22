"""The front door's keyed writes and listing: ``upsert``, ``get_keys``, ``engrams`` and the
batch loop every ingest shares (mixed into :class:`engramdb.store.Store`).

A caller key names one occurrence (docs/api.md, "Keys"): ``ingest(key=)`` stores a new one,
``upsert`` replaces it, ``get(key=)`` / ``get_keys`` read it, ``forget(keys=)`` removes it.
Content addressing is unchanged: the same text under two keys is one engram with two
occurrences, each with its own key, role, session and metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import numpy as np

from engramdb.content import (
    check_bool,
    check_distinct,
    check_key,
    check_label,
    content_id,
    encode_metadata,
    key_list,
    normalize_text,
    per_item,
    unit_rows,
    validate_vectors,
)
from engramdb.engine.keys import lookup_keys, remove_occurrences
from engramdb.engine.lifespan import effective_kind
from engramdb.engine.writer import JOURNAL_BATCH_MAX, Batch
from engramdb.errors import EncoderRequired, InvalidInput, NotFound
from engramdb.progress import progress_bar
from engramdb.recall.filters import kind_codes, occurrence_filter
from engramdb.types import KIND_CODES, Engram, IngestResult, Kind

if TYPE_CHECKING:
    from engramdb.engine.commit import Committer
    from engramdb.engine.parts import Parts
    from engramdb.engine.writer import Writer
    from engramdb.recall.searcher import Searcher
    from engramdb.settings import Settings

__all__ = ["KeyedMethods"]

_ORDERS = ("seq", "-seq")


def _part(prepared: Batch, part: slice) -> Batch:
    """Rows ``part`` of a whole call's checked arguments, as one batch to write (given
    vectors are normalised now, one batch at a time: a bulk load never holds a normalised
    copy of its whole input)."""
    p = prepared
    return Batch(p.ids[part], p.texts[part], p.roles[part], p.sessions[part], p.metas[part],
                 p.pins[part], None if p.vectors is None else unit_rows(p.vectors[part]),
                 p.kind, None if p.keys is None else p.keys[part])


class KeyedMethods:
    """Keyed writes, key lookups and listing; the Store provides the attributes below."""

    _parts: Parts
    _writer: Writer
    _searcher: Searcher
    _committer: Committer
    settings: Settings
    dim: int
    fingerprint: str
    clock: int
    manifest: Any
    _writing: Callable[..., AbstractContextManager[None]]
    _fold: Callable[[], None]
    _turn_path: Callable[[int], bool]

    # -- writes -------------------------------------------------------------------------------

    def upsert(
        self,
        key: str,
        text: str,
        *,
        role: str | None = None,
        session: str | None = None,
        metadata: dict[str, Any] | None = None,
        vector: Any = None,
        pin: bool = False,
    ) -> IngestResult:
        """Store ``text`` under ``key``, replacing what the key held, atomically.

        A new key is a keyed ingest. For a stored key with the same text, only the occurrence
        is replaced (role, session, metadata, tick): the engram keeps its lifespan, recall
        count and links, and is refreshed as content said again. With a new text the old
        occurrence goes (its engram erased if that was its last occurrence, as ``forget``
        does) and the new text is stored under the key, in the same commit.
        Raises as :meth:`ingest`.

        >>> mem.upsert("pref:pet", "My pet is a guinea pig named Oscar.")  # doctest: +SKIP
        """
        return self.upsert_many(
            [key], [normalize_text(text)], vectors=None if vector is None else [vector],
            roles=[role], sessions=[session], metadatas=[metadata], pins=[pin])[0]

    def upsert_many(
        self,
        keys: Sequence[str],
        texts: Sequence[str],
        *,
        vectors: Any = None,
        roles: Sequence[str | None] | None = None,
        sessions: Sequence[str | None] | None = None,
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        pins: Sequence[bool] | None = None,
        progress: bool = False,
    ) -> list[IngestResult]:
        """:meth:`upsert` for many keys: one commit per batch of ``settings.batch_rows``.

        Every argument is checked before anything is written; a key given twice raises
        InvalidInput. If a later batch fails, the earlier ones stay stored (upserting them
        again is safe).
        """
        self._parts.check_open()
        if isinstance(keys, str) or not isinstance(keys, Sequence):
            raise InvalidInput("keys must be a list of str (for one key use upsert())")
        listed = key_list(keys)
        prepared = self._prepare(texts, vectors, roles, sessions, metadatas, pins,
                                 Kind.SHORT_TERM, listed)
        return self._write_batches(prepared, progress, upsert=True)

    def _prepare(self, texts: Sequence[str], vectors: Any, roles: Any, sessions: Any,
                 metadatas: Any, pins: Any, kind: Any, keys: Any) -> Batch:
        """Check every argument of an ingest call (nothing is written if one is bad); the
        result holds the vectors as given (:func:`_part` normalises them)."""
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise InvalidInput("texts must be a list of str (for one text use ingest())")
        n = len(texts)
        norm = [normalize_text(t, what=f"texts[{i}]") for i, t in enumerate(texts)]
        keys_ = None
        if keys is not None:
            keys_ = per_item(keys, n, "keys",
                             lambda v, w: None if v is None else check_key(v, w))
            check_distinct(keys_)
        given = None if vectors is None else validate_vectors(vectors, self.dim, n)
        if given is None and n and self.manifest.encoder_spec.get("kind") in ("vectors",):
            raise EncoderRequired("this store has no encoder: pass vectors=...")
        if not isinstance(kind, str) or kind not in (Kind.WORKING, Kind.SHORT_TERM,
                                                     Kind.LONG_TERM):
            raise InvalidInput(f"kind must be working, short_term or long_term, got {kind!r}")
        return Batch(
            [content_id(self.fingerprint, t) for t in norm], norm,
            per_item(roles, n, "roles", check_label), per_item(sessions, n, "sessions",
                                                               check_label),
            per_item(metadatas, n, "metadatas", lambda v, w: encode_metadata(v)),
            per_item(pins, n, "pins", check_bool), given, KIND_CODES[Kind(kind).value], keys_)

    def _write_batches(self, prepared: Batch, progress: bool, *, upsert: bool
                       ) -> list[IngestResult]:
        """Write a prepared call batch by batch: small batches through the turn journal
        (those that replace a stored key's occurrence too), bulk ones to the catalog. A store
        without a catalog file takes the journal's largest batches while it has none: a
        small bulk load stays in the journal (its first fold comes when it grows). A call
        that would make that first fold due (with the turns already journaled) gets the
        catalog at once instead: its rows would otherwise be written to the journal, then
        again by the fold."""
        self._parts.check_writable()  # before a fold could build a read-only scratch catalog
        keyed = prepared.keys is not None and any(k is not None for k in prepared.keys)
        every_key = [k for k in prepared.keys or () if k is not None]
        n = len(prepared.ids)
        results: list[IngestResult] = []
        bar = progress_bar(n, progress, "upsert" if upsert else "ingest")
        try:
            start = 0
            while start < n:
                rest, step = n - start, self.settings.batch_rows
                if self._parts.catalog is None and not self._outgrows_journal(rest):
                    step = min(step, JOURNAL_BATCH_MAX)
                first, batch = start == 0, _part(prepared, slice(start, min(n, start + step)))
                start += len(batch.ids)
                with self._writing(fold=False):
                    turn = self._turn_path(len(batch.ids))
                    if keyed:
                        # An ingest checks every key of the call under the first batch's
                        # lock (nothing is written if one is stored), then its own keys.
                        done, turn = self._keyed_batch(batch, upsert, turn,
                                                       every_key if first else None, rest)
                    else:
                        if not turn:
                            self._committer.fold(bulk_rows=rest)
                        done = self._writer.ingest_batch(batch, journal=turn)
                    results.extend(done)
                    self._writer.settle_overflow(turn=turn)
                    if turn:
                        self._committer.fold_if_due()
                if bar is not None:
                    bar.update(len(batch.ids))
        finally:
            if bar is not None:
                bar.close()
        return results

    def _outgrows_journal(self, rows: int) -> bool:
        """Whether ``rows`` more texts, in records of the journal's largest batches, would
        make the first fold of a store without a catalog due (their vectors alone counted)."""
        records = -(-rows // JOURNAL_BATCH_MAX)
        return self._committer.fold_due(records, rows * self._parts.segments.row_bytes)

    def _keyed_batch(self, batch: Batch, upsert: bool, turn: bool, check: list[str] | None,
                     rest: int = 0) -> tuple[list[IngestResult], bool]:
        """One keyed batch in one commit (a turn when ``turn``), and whether it took the
        turn journal. An upsert of stored keys removes what they held in the same commit
        (the turn's record names them). An ingest refuses stored keys among ``check``
        (default: the batch's own). ``rest``: the rows of the call from this batch on."""
        keys = [k for k in batch.keys or () if k is not None]
        found = lookup_keys(self._parts, keys if upsert or check is None else check)
        if found and not upsert:
            first = min(found)
            raise InvalidInput(
                f"key {first!r} is already stored"
                + (f" (and {len(found) - 1} more)" if len(found) > 1 else ""),
                hint="upsert() replaces a key's occurrence; forget(keys=...) removes it")
        if turn and not found:
            return self._writer.ingest_batch(batch, journal=True), True
        if not turn:
            self._committer.fold(bulk_rows=rest)
        existing = self._writer.lookup_ids(sorted(set(batch.ids)))
        before = None
        if found:
            tick = self.clock
            keep = set(existing.values())

            def before(c: Any) -> None:
                remove_occurrences(c, found, keep=keep, tick=tick)

        return self._writer.ingest_batch(batch, existing=existing, before=before,
                                         journal=turn, removed=sorted(found) or None), turn

    def _forget_keys(self, keys: str | Iterable[str]) -> int:
        """Remove the occurrences these keys name (Store.forget(keys=...)): one journal
        record for a few keys, one catalog commit for many (or with the journal off)."""
        listed = key_list(keys)
        with self._writing(fold=False):
            found = lookup_keys(self._parts, listed)
            missing = [k for k in listed if k not in found]
            if missing:
                raise NotFound(f"no occurrence with key {missing[0]!r}"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1
                                  else ""))
            if not found:  # forget(keys=[]): nothing to remove, nothing to record
                return 0
            turn = self._turn_path(len(found))
            self._writer.forget_keys(found, journal=turn)
            if turn:
                self._committer.fold_if_due()
            return len(found)

    # -- reads --------------------------------------------------------------------------------

    def get_keys(self, keys: str | Iterable[str]) -> dict[str, Engram]:
        """The live engrams these keys name, as ``{key: engram}`` (a key that is not stored,
        or whose engram has died, is left out). One catalog query for the keys, one for the
        engrams, or none while turns wait in the journal (read from memory, not folded);
        each engram carries every occurrence (``Occurrence.key`` tells them apart).

        >>> mem.get_keys(["pref:pet"])["pref:pet"].text  # doctest: +SKIP
        """
        self._parts.check_open()
        listed = key_list(keys)
        with self._writing(fold=False):  # as get(): no write lands, none is folded
            found = lookup_keys(self._parts, listed)
            now = self.clock
            visible = self._parts.hot.visible(now)
            eids = sorted({o.eid for o in found.values() if visible[o.eid]})
            engrams = self._searcher.engrams(eids, now=now) if eids else {}
        return {k: engrams[found[k].eid] for k in listed
                if k in found and found[k].eid in engrams}

    def _get_key(self, key: str) -> Engram:
        engram = self.get_keys([check_key(key)]).get(key)
        if engram is None:
            raise NotFound(f"no live occurrence with key {key!r}")
        return engram

    def engrams(
        self,
        *,
        where: dict[str, Any] | None = None,
        kinds: Iterable[Kind | str] | None = None,
        limit: int | None = None,
        offset: int = 0,
        order: str = "seq",
    ) -> list[Engram]:
        """List live engrams without a query: oldest first (``order="seq"``, the order their
        content was first stored) or newest first (``"-seq"``), from ``offset``, at most
        ``limit``. ``where`` and ``kinds`` filter as in :meth:`recall`, and with ``where``
        each engram carries only its matching occurrences. Pages cost one catalog query (with
        ``where``, one more, after folding the turns waiting in the journal; without it, none
        while turns wait: they are read from memory).

        >>> [e.text for e in mem.engrams(where={"role": "user"}, limit=10)]  # doctest: +SKIP
        """
        self._parts.check_open()
        if order not in _ORDERS:
            raise InvalidInput(f"order must be one of {', '.join(_ORDERS)}, got {order!r}")
        for name, value, low in (("offset", offset, 0), ("limit", limit, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < low):
                raise InvalidInput(f"{name} must be an int >= {low}, got {value!r}")
        codes = kind_codes(kinds)
        occ_sql, occ_params = occurrence_filter(where)
        # No turn lands meanwhile. A `where` filter reads the catalog, which must then hold
        # every turn (a fold); without one the page is read as get() reads it.
        with self._writing(fold=bool(occ_sql)):
            now, hot = self.clock, self._parts.hot
            mask = hot.visible(now)
            if codes is not None:
                mask = mask & np.isin(effective_kind(hot.kind, hot.created, now), codes)
            if occ_sql:
                mask = mask & self._searcher.occurrence_mask(occ_sql, occ_params, len(mask))
            eids = np.nonzero(mask)[0]
            if order == "-seq":
                eids = eids[::-1]
            stop = None if limit is None else offset + limit
            page = [int(e) for e in eids[offset:stop]]
            found = self._searcher.engrams(page, occ_sql, occ_params, now=now) if page else {}
        return [found[e] for e in page if e in found]

    def iter_engrams(self, *, page: int = 1000, **filters: Any) -> Iterator[Engram]:
        """:meth:`engrams` page by page (``page`` engrams per catalog query), for listings
        too big to hold at once; takes the same filters (not ``limit`` or ``offset``). Pages
        are read one after another: a write between two of them may shift the next page."""
        if isinstance(page, bool) or not isinstance(page, int) or page < 1:
            raise InvalidInput(f"page must be an int >= 1, got {page!r}")
        offset = 0
        while True:
            got = self.engrams(limit=page, offset=offset, **filters)
            yield from got
            if len(got) < page:
                return
            offset += page
