"""Caller keys: finding the occurrence a key names, and removing keyed occurrences.

A key names one occurrence (one time some content was said), never an engram: the same text
under two keys is one engram with two occurrences. Removing a keyed occurrence lowers its
engram's reference count; the engram itself is erased (logged as forgotten, its bytes
reclaimed by gc) when its last occurrence goes, unless the same commit says it again (an
upsert that keeps the text).

Small keyed writes take the turn journal like any small ingest (the mirror knows every key):
new keys, and replacing or removing a stored key's occurrence (the journal record names the
keys it removes, :mod:`engramdb.engine.turnlog`). Bulk ones, and any when the journal is off,
commit to the catalog (:meth:`Committer.commit`). Either way the key's uniqueness is checked
under the store's write lock, and the result is the same store.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from engramdb.engine.commit import Commit
from engramdb.engine.parts import Parts

__all__ = ["KeyedOccurrence", "lookup_keys", "remove_occurrences"]

_LISTED = "(SELECT unnest(?::VARCHAR[]))"


@dataclass(frozen=True)
class KeyedOccurrence:
    """Where a key points: its engram's eid and the occurrence's sequence number."""

    eid: int
    seq: int


def lookup_keys(parts: Parts, keys: Iterable[str]) -> dict[str, KeyedOccurrence]:
    """The stored keys among ``keys`` (absent keys are left out): from the turn mirror when
    it is loaded (it holds the keys of unfolded turns too), else one catalog query (with no
    mirror, no turn waits to be folded)."""
    listed = sorted(set(keys))
    if not listed:
        return {}
    mirror = parts.mirror
    if mirror is not None:
        held = mirror.keys
        return {k: KeyedOccurrence(*held[k]) for k in listed if k in held}
    rows = parts.query(
        f"SELECT key, eid, seq FROM occurrences WHERE key IN {_LISTED}", [listed])
    return {k: KeyedOccurrence(int(e), int(s)) for k, e, s in rows}


def remove_occurrences(c: Commit, found: Mapping[str, KeyedOccurrence], *,
                       keep: Iterable[int], tick: int) -> list[int]:
    """Delete the occurrences these keys name inside commit ``c`` (a catalog commit or a
    turn); erase the engrams left without any, except those in ``keep`` (said again by the
    same commit). An engram that stays but lost its first occurrence loses its
    conversation-context row (``Commit.drop_context``); an occurrence of it in the same
    commit gives it a new one. Returns the erased eids."""
    if not found:
        return []
    if c.mirror is not None:
        parts = c.committer.parts

        def first_seq(eid: int, removed: frozenset[int]) -> int | None:
            # Only for an engram that keeps occurrences (its text under several keys).
            return parts.query("SELECT min(seq) FROM occurrences WHERE eid = ? AND NOT "
                               "list_contains(?::BIGINT[], seq)", [eid, sorted(removed)])[0][0]

        erased, firsts = c.mirror.remove_occurrences(
            {k: (o.eid, o.seq) for k, o in found.items()}, keep, first_seq)
    else:
        erased, firsts = _remove_rows(c, list(found.values()), set(keep))
    c.delete_engrams(erased, "forgotten", tick=tick)
    c.drop_context(sorted(set(firsts) - set(erased)))
    return erased


def _remove_rows(c: Commit, found: list[KeyedOccurrence], kept: set[int]
                 ) -> tuple[list[int], list[int]]:
    """The catalog's part of :func:`remove_occurrences`: the erased engrams and those that
    lost their first occurrence."""
    con = c.con
    seqs = [o.seq for o in found]
    eids, counts = np.unique(np.asarray([o.eid for o in found], np.int64), return_counts=True)
    # An engram's context row (session, speaker, previous turn) comes from its first
    # occurrence: where that one goes and the engram stays, the row goes with it.
    firsts = con.execute(
        "SELECT eid FROM occurrences WHERE eid IN (SELECT unnest(?::BIGINT[])) GROUP BY eid "
        "HAVING list_contains(?, min(seq))", [eids.tolist(), seqs]).fetchall()
    con.execute("DELETE FROM occurrences WHERE seq IN (SELECT unnest(?::BIGINT[]))", [seqs])
    orphans = con.execute(
        "UPDATE engrams SET refs = refs - b.n FROM (SELECT unnest(?::BIGINT[]) AS eid, "
        "unnest(?::BIGINT[]) AS n) b WHERE engrams.eid = b.eid "
        "RETURNING engrams.eid, engrams.refs", [eids.tolist(), counts.tolist()]).fetchall()
    erased = sorted(int(e) for e, refs in orphans if refs <= 0 and int(e) not in kept)
    return erased, [int(e) for (e,) in firsts]
