"""Hydration: a recall's ranked eids become :class:`Recall` hits, and ``get``'s eids engrams.

A hit's text, kind and lifespan come from memory (the hot arrays); its occurrences are
fetched for all of one recall's hits in one catalog query, on first access
(:class:`OccurrenceLoader`).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from engramdb.content import decompress_text
from engramdb.engine import links as lk
from engramdb.engine.lifespan import effective_kind
from engramdb.engine.parts import Parts
from engramdb.recall.fusion import Hit
from engramdb.types import KIND_NAMES, Engram, Kind, Occurrence, Recall

_KINDS = {code: Kind(name) for code, name in KIND_NAMES.items()}


class OccurrenceLoader:
    """Fetches the occurrences of one recall's hits in one query, on first access."""

    def __init__(self, parts: Parts, eid_of: dict[str, int], occ_sql: str,
                 occ_params: list[Any]) -> None:
        self._parts = parts
        self.eid_of = eid_of  # id -> eid of every hit (integrate rewards them by eid)
        self._sql = occ_sql
        self._params = occ_params
        self._loaded: dict[int, list[Occurrence]] | None = None
        self._lock = threading.Lock()

    def _query(self, eids: list[int], mirror: Any) -> dict[int, list[Occurrence]]:
        extra = f" AND {self._sql}" if self._sql else ""
        rows = self._parts.query(
            "SELECT eid, role, session, tick, metadata, key FROM occurrences o "
            f"WHERE eid IN {lk.in_list(eids)}{extra} ORDER BY seq", self._params)
        loaded: dict[int, list[Occurrence]] = {e: [] for e in eids}
        for eid, role, session, tick, meta, key in rows:
            loaded[int(eid)].append(occurrence(
                {"role": role, "session": session, "tick": tick, "metadata": meta, "key": key}))
        if mirror is not None and not self._sql:
            # Turns not folded yet: said after every occurrence the catalog holds.
            for eid, pending in mirror.occurrences(eids).items():
                loaded[eid].extend(occurrence(o) for o in pending)
        return loaded

    def get(self, ident: str) -> list[Occurrence]:
        """The occurrences of the hit ``ident`` (those matching the recall's filter)."""
        with self._lock:
            if self._loaded is None:
                self._parts.check_open()
                eids = sorted(self.eid_of.values())
                mirror = self._parts.mirror  # the turn path's image of the catalog
                while True:  # a fold between the catalog read and the pending rows: again
                    folds = mirror.folds if mirror is not None else 0
                    cached = None if mirror is None or self._sql else mirror.all_occurrences(
                        eids, self._parts.query)
                    if cached is not None:
                        loaded = {e: [occurrence(o) for o in cached[e]] for e in eids}
                    else:
                        loaded = self._query(eids, mirror)
                    if mirror is None or mirror.folds == folds:
                        break
                self._loaded = loaded
        return self._loaded.get(self.eid_of.get(ident, -1), [])


def occurrence(o: dict[str, Any]) -> Occurrence:
    """An :class:`Occurrence` from its catalog columns (metadata as stored JSON)."""
    meta = o.get("metadata")
    return Occurrence(
        role=o.get("role"), session=o.get("session"), tick=int(o.get("tick") or 0),
        metadata=None if meta is None else json.loads(meta), key=o.get("key"),
    )


def _unfolded_engrams(parts: Parts, mirror: Any, eids: list[int], now: int
                      ) -> dict[int, Engram]:
    """:func:`engrams` from the turn path's memory: the engram fields from the mirror (which
    holds every engram's, pending changes included), the text from the hot payloads, the
    occurrences as a recall's hits read them (the catalog's, less those pending turns removed,
    then the pending ones). Runs under the write lock, so no turn lands meanwhile."""
    hot = parts.hot
    payloads = {e: hot.payload(e) for e in eids}
    loader = OccurrenceLoader(parts, {p[0]: e for e, p in payloads.items()}, "", [])
    out = {}
    for e in eids:
        ident, blob = payloads[e]
        expires = float(mirror.expires[e])  # inf: never (NULL in the catalog)
        out[e] = _engram((ident, blob, mirror.kind[e], mirror.refs[e], mirror.created[e],
                          None if math.isinf(expires) else expires, mirror.pinned[e],
                          mirror.recalls[e]), int(hot.created[e]), loader.get(ident), now)
    return out


def _engram(fields: tuple, born: int, occurrences: list[Occurrence], now: int) -> Engram:
    """An :class:`Engram` at tick ``now`` from its stored fields (id, compressed text, kind
    code, refs, created tick, expiry or None, pinned, recalls), its tick of birth in the hot
    state (which its effective kind counts from) and its occurrences."""
    ident, blob, kind, refs, created, expires, pinned, recalls = fields
    effective = effective_kind(np.array([kind]), np.array([born]), now)[0]
    return Engram(
        id=ident,
        text=decompress_text(blob),
        kind=Kind(KIND_NAMES[int(effective)]),
        refs=int(refs),
        created_tick=int(created),
        expires_at=expires,
        lifespan_left=None if expires is None else max(0.0, expires - now),
        pinned=bool(pinned),
        recalls=int(recalls),
        occurrences=occurrences,
    )


def recall_hits(parts: Parts, ranked: list[tuple[int, Hit]], occ_sql: str,
                occ_params: list[Any], now: int) -> list[Recall]:
    """The :class:`Recall` hits of ``ranked`` (``found``'s items, best first) at tick
    ``now``; their occurrences are those matching ``occ_sql``."""
    hot = parts.hot
    at = np.array([e for e, _ in ranked], np.int64)
    payloads = [hot.payload(e) for e in at.tolist()]  # (id, compressed text)
    ids = {e: p[0] for (e, _), p in zip(ranked, payloads)}
    loader = OccurrenceLoader(parts, {ident: e for e, ident in ids.items()}, occ_sql,
                              occ_params)
    kinds = effective_kind(hot.kind[at], hot.created[at], now).tolist()
    hits = []
    for (_, (score, via, path, score_parts, relevance)), (ident, blob), kind, expires in zip(
            ranked, payloads, kinds, hot.expires[at].tolist(), strict=True):
        hits.append(
            Recall(
                id=ident, text=decompress_text(blob), score=score,
                kind=_KINDS[kind],
                lifespan_left=None if math.isinf(expires) else max(0.0, expires - now),
                via=via, scores=score_parts,
                path=[ids.get(p) or hot.payload(p)[0] for p in path],
                relevance=relevance,
                _occurrences=loader,
            )
        )
    return hits


def engrams(parts: Parts, eids: list[int], occ_sql: str, occ_params: Sequence[Any],
            now: int) -> dict[int, Engram]:
    """Full engrams (text, state, occurrences) of some eids at tick ``now``, in one query.

    With ``occ_sql`` only the occurrences matching that filter are attached. While the turn
    path holds unfolded turns they are read from memory instead (:func:`_unfolded_engrams`),
    so a ``get`` after a turn does not pay the fold.
    """
    mirror = parts.mirror
    if not occ_sql and mirror is not None and mirror.pending:
        return _unfolded_engrams(parts, mirror, eids, now)
    join = "o.eid = e.eid" + (f" AND {occ_sql}" if occ_sql else "")
    rows = parts.query(
        "SELECT e.eid, e.id, e.text, e.kind, e.refs, e.created_tick, e.expires_at, "
        "e.pinned, e.recalls, "
        "list(struct_pack(role := o.role, session := o.session, tick := o.tick, "
        "metadata := o.metadata, key := o.key) ORDER BY o.seq) FILTER (WHERE o.eid IS NOT NULL) "
        f"FROM engrams e LEFT JOIN occurrences o ON {join} "
        "WHERE e.eid IN (SELECT unnest(?::BIGINT[])) GROUP BY ALL",
        [*occ_params, eids],
    )
    hot = parts.hot
    out = {}
    for eid, *fields, occs in rows:
        out[int(eid)] = _engram(tuple(fields), int(hot.created[eid]),
                                [occurrence(o) for o in occs or []], now)
    return out
